"""The public Python API (probe.api): the same numbers as the commands on the same inputs, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import probe
from probe.backbones import BackboneSpec
from probe.tasks.kmeans import run_kmeans
from probe.errors import ProbeError
from probe.tasks.segment import SegmentOptions, run_segment
from probe.data.sources import open_source

PROBE = Path(sys.executable).with_name("probe")


def run_probe(*args: str) -> subprocess.CompletedProcess:
    """The installed command, one torch thread as the tests' own process (conftest), in the test's cache."""
    return subprocess.run([str(PROBE), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_import_stays_light_and_help_lists_the_api():
    light = subprocess.run([sys.executable, "-c", "import sys, probe; print(sorted({'torch', 'probe.api'} & "
                            "set(sys.modules)))"], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "[]"
    shown = subprocess.run([sys.executable, "-c", "import probe; help(probe)"], capture_output=True, text=True,
                           check=True, env={**os.environ, "PAGER": "cat"}).stdout
    for name in probe.__all__:
        assert name in shown
    assert "A backbone from the registry, resolved as" in shown  # load_backbone's docstring
    assert "The few-shot segmenter of ``probe segment``" in shown
    assert set(probe.__all__) <= set(dir(probe))


def test_features_equal_the_arrays_of_probe_features(tmp_path):
    test = probe.load_dataset(split="test", number=3)
    folder = tmp_path / "images"
    folder.mkdir()
    for stem, image in zip(test.stems, test.images):
        Image.fromarray(image).save(folder / f"{stem}.png")
    run_probe("features", "--images", str(folder), "--blocks", "5,12", "--steps", "50,250", "--out",
              str(tmp_path / "feats"), "--quiet")
    backbone = probe.load_backbone(blocks="5,12", steps=[50, 250], purpose="features")
    assert backbone.cells == ["t50_block5", "t50_block12", "t250_block5", "t250_block12"]
    features = backbone.features(test.images)
    for i, stem in enumerate(test.stems):
        exported = np.load(tmp_path / "feats" / f"{stem}.npz")
        assert sorted(exported.files) == sorted(backbone.cells)
        for cell in backbone.cells:
            np.testing.assert_array_equal(features[cell][i].numpy(), exported[cell])
    pil = backbone.features([Image.fromarray(image) for image in test.images])
    assert all(np.array_equal(pil[cell].numpy(), features[cell].numpy()) for cell in backbone.cells)


def test_grid_table_holds_the_numbers_probe_grid_writes(tmp_path):
    train, test = probe.load_dataset(number=4), probe.load_dataset(split="test", number=3)
    run_probe("grid", "--blocks", "5,8", "--steps", "50", "--train-number", "4", "--test-number", "3",
              "--threads", "1", "--out", str(tmp_path / "grid"), "--quiet")
    written = pd.read_csv(tmp_path / "grid" / "grid.csv")
    backbone = probe.load_backbone(blocks="5,8", steps="50", purpose="grid")
    table = probe.grid(backbone, train, test, cache=tmp_path / "api_store")
    assert list(table.columns) == ["layer", "layer_index", "step", "group", "class", "miou"]
    means = table[table["class"].isna()].merge(written, on=["layer", "layer_index", "step", "group"])
    assert len(means) == len(written) == 6  # 2 cells x all/small/large
    np.testing.assert_allclose(means["miou_x"], means["miou_y"], rtol=0, atol=1e-9)
    per_class = pd.read_csv(tmp_path / "grid" / "grid_per_class.csv")
    both = table.dropna(subset=["class"]).merge(per_class, on=["layer", "step", "class", "group"])
    assert len(both) == len(per_class) and np.allclose(both["miou"], both["iou"], rtol=0, atol=1e-9)
    figure = probe.plots.grid_heatmap(table)
    shown = sorted(float(text.get_text()) for text in figure.axes[0].texts)
    assert shown == sorted(round(v, 1) for v in written[written.group == "all"]["miou"])


def test_segmenter_gives_the_mIoU_of_probe_segment_for_the_same_seed(tmp_path):
    """Done-when of issue 25: the Segmenter's defaults are probe segment's (training rule, batch, precision, cells)."""
    metrics = run_segment(open_source(progress=False), SegmentOptions(train_number=5, test_number=4, members=3), 1,
                          tmp_path / "cli", progress=False)
    train, test = probe.load_dataset(number=5), probe.load_dataset(split="test", number=4)
    segmenter = probe.Segmenter(members=3, seed=1, cache=tmp_path / "api_store").fit(train)
    scored = segmenter.score(test)
    assert scored["miou"] == metrics["miou"]
    assert scored["per_class"] == metrics["per_class"]
    assert segmenter.training_pixels_ == metrics["training_pixels"]
    labels, uncertainty = segmenter.predict(test.images)
    for i, stem in enumerate(test.stems):
        np.testing.assert_array_equal(labels[i], np.load(tmp_path / "cli" / "predictions" / f"{stem}.npy"))
    # arrays with their classes train the same ensemble as the Dataset
    from_arrays = probe.Segmenter(members=3, seed=1, classes=train.classes).fit(train.images, train.labels)
    assert from_arrays.score(test.images, test.labels)["miou"] == metrics["miou"]
    # probe segment's saved ensemble loads as a Segmenter and predicts its predictions
    loaded = probe.Segmenter.load(tmp_path / "cli" / "ensemble")
    np.testing.assert_array_equal(loaded.predict(test)[0], labels)
    assert loaded.classes_ == train.classes


def test_a_saved_segmenter_predicts_the_same_labels(tmp_path):
    train, test = probe.load_dataset(number=3), probe.load_dataset(split="test", number=2)
    segmenter = probe.Segmenter(probe.load_backbone(blocks="6,8", steps="50"), members=2, seed=3).fit(train)
    assert segmenter.get_params()["members"] == 2 and segmenter.members == 2 and segmenter.classes is None
    labels, uncertainty = segmenter.predict(test.images)
    assert labels.shape == (2, 32, 32) and labels.dtype == np.int64 and uncertainty.shape == (2,)
    segmenter.save(tmp_path / "saved")
    loaded = probe.Segmenter.load(tmp_path / "saved")
    assert (loaded.members, loaded.seed, loaded.backbone_.cells) == (2, 3, ["t50_block6", "t50_block8"])
    again, again_uncertainty = loaded.predict(test.images)
    np.testing.assert_array_equal(again, labels)
    np.testing.assert_array_equal(again_uncertainty, uncertainty)
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert manifest["class_names"] == train.classes and manifest["segmenter"]["seed"] == 3


def test_kmeans_maps_equal_those_probe_kmeans_writes(tmp_path):
    spec = BackboneSpec(layers="6,8", steps="50,150")
    run_kmeans(open_source(progress=False), spec, 4, 0, "image", tmp_path / "km", n_images=2, progress=False)
    written = np.load(tmp_path / "km" / "clusters.npz")
    test = probe.load_dataset(split="test", number=2)
    result = probe.kmeans(probe.load_backbone(blocks="6,8", steps="50,150", purpose="kmeans"), test, k=4,
                          cache=tmp_path / "api_store")
    assert sorted(result.maps) == ["t150_block6", "t150_block8", "t50_block6", "t50_block8"]
    for cell, maps in result.maps.items():
        for i, stem in enumerate(test.stems):
            np.testing.assert_array_equal(maps[i], written[f"{stem}/{cell}"])
    figure = result.figure()
    assert len(figure.axes) == 2 * (1 + 4)  # per image: the picture and 2 layers x 2 steps


def test_pixels_backbone_and_dataset_from_a_folder(tiny_domain):
    train = probe.load_dataset(tiny_domain)
    assert (train.name, len(train), train.images.shape, train.labels.shape) == ("faces", 4, (4, 32, 32, 3), (4, 32, 32))
    backbone = probe.load_backbone("pixels", dataset=train)
    assert backbone.cells == ["rgb3x3"]
    features = backbone.features(train.images[0])
    assert features["rgb3x3"].shape == (1, 27, 32, 32)


@pytest.mark.parametrize("call, words", [
    (lambda: probe.load_backbone("nope"), "load_backbone: kind 'nope': use one of ddpm"),
    (lambda: probe.load_backbone("google/ddpm-ema-bedroom-256"), "name the family too"),
    (lambda: probe.load_backbone(colour=1), "unknown option 'colour'"),
    (lambda: probe.load_dataset(split="val"), "split 'val': use 'train' or 'test'"),
    (lambda: probe.load_dataset("no_such_thing"), "'no_such_thing' is neither a folder nor a dataset name"),
    (lambda: probe.Segmenter().predict(np.zeros((1, 32, 32, 3), np.uint8)), "not fitted yet"),
    (lambda: probe.load_backbone("pixels").features(np.zeros((2, 32, 32, 3), np.float32)),
     "image 0 is float32 (32, 32, 3): pass (H, W, 3) uint8"),
    (lambda: probe.load_backbone("pixels").features(np.zeros((32, 24, 3), np.uint8)), "image 0 is 24x32"),
    (lambda: probe.Segmenter("pixels").fit(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 16, 16), int)),
     "label map 0 is int64 (16, 16) but its image is (32, 32)"),
    (lambda: probe.Segmenter("pixels", classes=3).fit(np.zeros((1, 32, 32, 3), np.uint8),
                                                      np.full((1, 32, 32), 7)), "holds ids [7] outside 0..2"),
    (lambda: probe.grid(probe.load_backbone("pixels"), np.zeros((1, 32, 32, 3), np.uint8), None),
     "train: pass a Dataset (probe.load_dataset), not ndarray"),
])
def test_bad_input_is_one_clear_error(call, words):
    with pytest.raises(ProbeError) as error:
        call()
    assert words in str(error.value)


def test_threads_hold_for_the_call_and_a_busy_machine_warns_with_the_argument(tiny_domain, monkeypatch):
    import torch

    import probe.api as api

    seen = {}
    for name in ("fit_and_predict", "fit_ensemble", "cluster_maps"):
        def recording(*args, _name=name, _call=getattr(api, name), **kwargs):
            seen[_name] = torch.get_num_threads()
            return _call(*args, **kwargs)
        monkeypatch.setattr(api, name, recording)
    train, test = probe.load_dataset(tiny_domain), probe.load_dataset(tiny_domain, split="test")
    backbone = probe.load_backbone("pixels", dataset=train)
    before = torch.get_num_threads()  # the tests' one thread (conftest)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))  # idle: no warning
    probe.grid(backbone, train, test, threads=2)
    probe.kmeans(backbone, test, k=2, threads=2)
    segmenter = probe.Segmenter(backbone, members=2, threads=2).fit(train)
    assert seen == {"fit_and_predict": 2, "fit_ensemble": 2, "cluster_maps": 2}
    assert torch.get_num_threads() == before  # restored after each call

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.warns(RuntimeWarning) as warned:
        segmenter.score(test)
    assert str(warned[0].message) == (
        "the machine is busy (load average 3.0 on 2 cores) and this run starts 2 torch threads: they will contend "
        "with the other work (measured: segment training ran 12x slower on 2 busy cores); pass threads=1, or run "
        "one job at a time")
    assert warned[0].filename == __file__  # it points at the caller's line
    with pytest.raises(ProbeError, match=r"threads=0: give a whole number of 1 or more"):
        probe.grid(backbone, train, test, threads=0)
    assert segmenter.get_params()["threads"] == 2


@pytest.mark.parametrize("progress, notebook, shown", [(None, True, True), (None, False, False), (False, True, False),
                                                        (True, False, True)])
def test_progress_shows_by_default_in_a_notebook_only(progress, notebook, shown, tiny_domain, monkeypatch, capsys):
    import probe.utils.progress

    monkeypatch.setattr(probe.utils.progress, "in_notebook", lambda: notebook)
    train, test = probe.load_dataset(tiny_domain), probe.load_dataset(tiny_domain, split="test")
    capsys.readouterr()
    probe.grid(probe.load_backbone("pixels", dataset=train), train, test, progress=progress)
    err = capsys.readouterr().err
    assert ("grid: a probe per cell" in err and "1/1" in err) == shown, err
