"""End-to-end: the `probe` commands on the fixture model and a tiny generated domain."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURES, PARITY, label_maps, parity_error, read_metrics
import probe
from probe.cli import app
from probe.metrics import SegmentationScore

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def model_args(fixture_model):
    checkpoint, flags = fixture_model
    return ["--checkpoint", checkpoint, "--model-flags", flags]


def test_features_command_reproduces_fixture(tmp_path, fixture_model):
    meta = json.loads((FIXTURES / "adm_tiny32.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIXTURES / meta["image"], images)
    out = tmp_path / "feats"
    result = run("features", "--images", images, *model_args(fixture_model), "--steps", "0,50,150,250,500,999",
                 "--blocks", "all", "--seed", "0", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    exported = np.load(out / "adm_tiny32.npz")
    reference = np.load(FIXTURES / meta["activations"])
    names = [n for n in reference.files if n != "noise"]
    assert sorted(exported.files) == sorted(names)
    for name in names:
        assert exported[name].shape == reference[name].shape[1:]
        error = parity_error(exported[name], reference[name][0])  # max |diff| / mean |ref|
        assert error <= PARITY, (name, error)


def segment(tmp_path, tiny_domain, fixture_model, out_name, *extra):
    out = tmp_path / out_name
    result = run("segment", "--data", tiny_domain, *model_args(fixture_model), "--train-number", 4,
                 "--test-number", 3, "--members", 2, "--blocks", "2,3,6", "--steps", "50,250", "--out", out, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return out


def test_segment_outputs_are_consistent_and_reproducible(tmp_path, tiny_domain, fixture_model):
    out = segment(tmp_path, tiny_domain, fixture_model, "seg")
    metrics = read_metrics(out)
    predictions = label_maps(out / "predictions")
    truths = label_maps(tiny_domain / "real" / "test")
    assert sorted(predictions) == ["000", "001", "002"]
    score = SegmentationScore(10, 255)
    for stem, pred in predictions.items():
        assert pred.shape == (32, 32) and pred.max() < 10
        score.update(pred, truths[stem])
    assert metrics["miou"] == pytest.approx(100 * score.miou)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["iou"].mean() == pytest.approx(metrics["miou"])
    assert list(per_class["class"]) == (tiny_domain / "classes.txt").read_text().split()
    assert metrics["features"]["dim"] == 2 * (64 + 64 + 32)  # blocks 2, 3, 6 of the fixture at two steps
    assert sorted(p.name for p in (out / "visualizations").iterdir()) == ["000.png", "001.png", "002.png"]
    again = segment(tmp_path, tiny_domain, fixture_model, "seg_again")
    assert read_metrics(again)["miou"] == metrics["miou"]
    for stem, pred in label_maps(again / "predictions").items():
        assert np.array_equal(pred, predictions[stem])

    predicted = tmp_path / "predicted"
    result = run("predict", "--ensemble", out / "ensemble", "--images", tiny_domain / "real" / "test",
                 "--out", predicted, "--quiet")
    assert result.exit_code == 0, result.output
    for stem, pred in label_maps(predicted / "predictions").items():
        assert np.array_equal(pred, predictions[stem])
    assert len(pd.read_csv(predicted / "uncertainty.csv")) == 3


def test_segment_default_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "default"
    result = run("segment", "--train-number", 2, "--test-number", 2, "--members", 2, "--seeds", "0,1",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "seed_0" / "ensemble" / "manifest.json").read_text())
    shipped = json.loads((Path(probe.__file__).parent / "weights" / "default_ddpm.json").read_text())["flags"]
    assert {k: manifest["identity"]["flags"][k] for k in shipped} == shipped
    assert manifest["backbone"]["layers"] == "block5,block6,block7,block8,block12"
    assert manifest["backbone"]["steps"] == "50,150,250" and manifest["backbone"]["checkpoint"] is None
    assert read_metrics(out)["miou_per_seed"] == [read_metrics(out / f"seed_{s}")["miou"] for s in (0, 1)]


def test_segment_seeds_report_mean_and_std(tmp_path, tiny_domain, fixture_model):
    out = tmp_path / "seeds"
    result = run("segment", "--data", tiny_domain, "--backbone", "pixels", "--train-number", 4, "--test-number", 3,
                 "--members", 2, "--seeds", "0,1", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    summary = read_metrics(out)
    per_seed = [read_metrics(out / f"seed_{s}")["miou"] for s in (0, 1)]
    assert summary["miou_per_seed"] == per_seed
    assert summary["miou"] == pytest.approx(np.mean(per_seed))
    assert summary["miou_std"] == pytest.approx(np.std(per_seed))
    assert read_metrics(out / "seed_0")["features"]["dim"] == 27


def test_grid_tables_and_figures(tmp_path, tiny_domain, fixture_model):
    out = tmp_path / "grid"
    result = run("grid", "--data", tiny_domain, *model_args(fixture_model), "--blocks", "0,4,8", "--steps", "50,900",
                 "--train-number", 4, "--test-number", 3, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "grid.csv")
    per_class = pd.read_csv(out / "grid_per_class.csv")
    groups = pd.read_csv(out / "class_groups.csv")
    assert set(table.group) == {"all", "small", "large"} and len(table) == 3 * 2 * 3
    assert sorted(groups["group"].value_counts().tolist()) == [5, 5]  # split at the median of 10 areas
    small = set(groups[groups.group == "small"]["class"])
    assert small >= {"eyes", "nose", "eyebrows"}
    cell = per_class[(per_class.layer == "block4") & (per_class.step == 50)]
    row = table[(table.layer == "block4") & (table.step == 50)].set_index("group")["miou"]
    assert sorted(set(zip(table.layer, table.layer_index))) == [("block0", 0), ("block4", 4), ("block8", 8)]
    assert row["all"] == pytest.approx(cell["iou"].mean())
    assert row["small"] == pytest.approx(cell[cell["class"].isin(small)]["iou"].mean())
    for name in ("grid_all.png", "grid_small.png", "grid_large.png", "grid_lines.png"):
        assert Image.open(out / name).size[0] > 300

    fresh_noise = tmp_path / "grid_per_image"
    result = run("grid", "--data", tiny_domain, *model_args(fixture_model), "--blocks", "8", "--steps", "900",
                 "--noise", "per-image", "--train-number", 4, "--test-number", 3, "--out", fresh_noise, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((fresh_noise / "grid.json").read_text())["features"]["noise"] == "per-image"
    shared = per_class[(per_class.layer == "block8") & (per_class.step == 900)]["iou"].to_numpy()
    assert not np.allclose(pd.read_csv(fresh_noise / "grid_per_class.csv")["iou"].to_numpy(), shared)


def test_kmeans_maps(tmp_path, tiny_domain, fixture_model):
    out = tmp_path / "km"
    result = run("kmeans", "--data", tiny_domain, *model_args(fixture_model), "--blocks", "3,6", "--steps", "50,800",
                 "--n-images", 2, "--k", 5, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    clusters = np.load(out / "clusters.npz")
    assert sorted(clusters.files) == sorted(f"{s}/t{t}_block{b}" for s in ("000", "001") for b in (3, 6) for t in (50, 800))
    for name in clusters.files:
        labels = clusters[name]
        assert labels.shape == (32, 32) and set(np.unique(labels)) <= set(range(5)) and len(np.unique(labels)) >= 2
    assert Image.open(out / "kmeans.png").size[0] > 300


def test_default_blocks_keep_relative_depth():
    from probe.backbones.noise import scaled_blocks, scaled_steps
    from probe.backbones.spec import PAPER_BLOCKS, PAPER_STEPS

    assert scaled_blocks(PAPER_BLOCKS, 18) == [5, 6, 7, 8, 12]
    assert scaled_blocks(PAPER_BLOCKS, 9) == [2, 3, 4, 6]
    assert scaled_steps(PAPER_STEPS, 1000) == [50, 150, 250] and scaled_steps(PAPER_STEPS, 4000) == [200, 600, 1000]


def test_small_annotations_dropped():
    from probe.tasks.segment import drop_small_annotations, min_annotation_pixels

    labels = np.zeros((256, 256), dtype=np.int64)
    labels[:4, :4] = 3  # 16 pixels of class 3: below the authors' 20 at 256x256
    labels[10:15, 10:15] = 2  # 25 pixels: kept
    kept = drop_small_annotations(labels, 255, min_annotation_pixels(256))
    assert (kept[:4, :4] == 255).all() and (kept[10:15, 10:15] == 2).all() and min_annotation_pixels(32) == 1


def test_help_shows_switches_without_a_value_placeholder():
    for command in (["segment"], ["grid"], ["features"], ["cache", "clear"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "<bool>" not in result.output
    assert "--overwrite" in run("segment", "--help").output and "--input-activations" in run("segment", "--help").output


def test_default_split_sizes_adapt_to_a_small_dataset(tmp_path, tiny_domain, fixture_model):
    out = tmp_path / "small"
    result = run("segment", "--data", tiny_domain, *model_args(fixture_model), "--members", 1, "--blocks", "6",
                 "--steps", "50", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert read_metrics(out)["train_images"] == ["000", "001", "002", "003"]
    assert read_metrics(out)["test_images"] == ["000", "001", "002"]
    result = runner.invoke(app, ["segment", "--data", str(tiny_domain), *map(str, model_args(fixture_model)),
                                 "--train-number", "10", "--out", str(tmp_path / "explicit"), "--quiet"])
    assert result.exit_code == 2 and "--train-number 10: " in result.output
    assert "holds 4 images; give --train-number 1..4" in result.output
    assert not (tmp_path / "explicit").exists()


def test_grid_and_kmeans_on_a_backbone_without_steps(tmp_path, tiny_domain):
    mae = ["--backbone", "mae", "--checkpoint", FIXTURES / "mae_tiny32.pt", "--model-flags", "--num_heads 4"]
    out = tmp_path / "grid"
    result = run("grid", "--data", tiny_domain, *mae, "--train-number", 4, "--test-number", 3, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "grid.csv")
    assert list(table[table.group == "all"].layer) == [f"block{b}" for b in range(6)]  # every block, depth order
    assert table.step.isna().all() and "best cell: block" in result.output and " at t=" not in result.output
    assert json.loads((out / "grid.json").read_text())["features"]["backbone"] == "mae"
    out = tmp_path / "km"
    result = run("kmeans", "--data", tiny_domain, *mae, "--n-images", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(np.load(out / "clusters.npz").files) == ["000/block1", "000/block2", "000/block4", "000/block5"]
    out = tmp_path / "seg"
    result = run("segment", "--data", tiny_domain, *mae, "--members", 2, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out)
    assert metrics["features"]["names"] == [f"block{b}" for b in range(6)] and metrics["features"]["dim"] == 6 * 64
    predicted = tmp_path / "predicted"
    result = run("predict", "--ensemble", out / "ensemble", "--images", tiny_domain / "real" / "test",
                 "--out", predicted, "--quiet")
    assert result.exit_code == 0, result.output
    for stem, pred in label_maps(predicted / "predictions").items():
        assert np.array_equal(pred, np.load(out / "predictions" / f"{stem}.npy"))


def test_the_shipped_mae_runs_without_a_checkpoint(tmp_path):
    out = tmp_path / "seg"
    result = run("segment", "--backbone", "mae", "--train-number", 4, "--test-number", 4, "--members", 2,
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out)
    assert metrics["features"]["backbone"] == "mae" and metrics["features"]["names"] == [f"block{b}" for b in range(12)]
    assert metrics["features"]["dim"] == 12 * 128 and metrics["features"]["architecture"]["patch_size"] == 4
    result = run("grid", "--backbone", "mae", "--blocks", "5,11", "--train-number", 4, "--test-number", 4,
                 "--out", tmp_path / "grid", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(tmp_path / "grid" / "grid.csv").layer.unique()) == ["block11", "block5"]
    result = run("kmeans", "--backbone", "mae", "--n-images", 1, "--out", tmp_path / "km", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(np.load(tmp_path / "km" / "clusters.npz").files) == [f"000/block{b}" for b in (11, 3, 6, 8)]


# own data at its own size: the model sees its input size, predictions come back at the image's


@pytest.fixture(scope="module")
def faces64(tmp_path_factory) -> Path:
    """The face-parts domain drawn at 64x64: 3 train and 2 test images (the shipped model is 32x32)."""
    from probe.data.default_domain import write_default_domain

    return write_default_domain(tmp_path_factory.mktemp("data64") / "faces64", size=64, pool=0, train=3, test=2,
                                seed=0, progress=False)


@pytest.fixture()
def panels(monkeypatch) -> dict:
    """The (image, ground truth, prediction) shapes of every segmentation panel drawn, by file stem."""
    from probe import plots

    drawn, draw = {}, plots.segmentation_panel

    def recording(image, gt, pred, class_names, palette, path, *args, **kwargs):
        drawn[Path(path).stem] = (image.shape[:2], None if gt is None else gt.shape, pred.shape)
        return draw(image, gt, pred, class_names, palette, path, *args, **kwargs)

    monkeypatch.setattr(plots, "segmentation_panel", recording)
    return drawn


@pytest.fixture()
def probe_lines():
    """The messages the probe logger writes during the test."""
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler, logger = Lines(), logging.getLogger("probe")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_own_data_comes_back_at_its_own_size(tmp_path, faces64, panels, probe_lines):
    out = tmp_path / "seg64"
    result = run("segment", "--data", faces64, "--members", 2, "--steps", 50, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out)
    assert metrics["model_input_size"] == [32, 32] and metrics["label_size"] == [64, 64] and metrics["fit"] is None
    assert "the model saw 32x32, predictions at 64x64 (width x height)" in probe_lines
    truths = label_maps(faces64 / "real" / "test")
    predictions = label_maps(out / "predictions")
    score = SegmentationScore(10, 255)
    for stem, pred in predictions.items():
        assert pred.shape == (64, 64)
        score.update(pred, truths[stem])
    assert metrics["miou"] == pytest.approx(100 * score.miou)  # scored at 64x64 against the label maps as saved
    assert metrics["training_pixels"] > 3 * 32 * 32  # every labelled pixel of the 64x64 maps trains
    assert panels == {stem: ((64, 64), (64, 64), (64, 64)) for stem in ("000", "001")}

    panels.clear()
    predicted = tmp_path / "predicted64"
    result = run("predict", "--ensemble", out / "ensemble", "--images", faces64 / "real" / "test", "--out", predicted,
                 "--quiet")
    assert result.exit_code == 0, result.output
    for stem, pred in label_maps(predicted / "predictions").items():
        assert pred.shape == (64, 64) and np.array_equal(pred, predictions[stem])
    assert panels == {stem: ((64, 64), None, (64, 64)) for stem in ("000", "001")}


def test_non_square_images_with_fit(tmp_path, faces64, panels):
    """Images 64 wide and 48 high (one of each split left square): refused without --fit in one line; with
    --fit resize or pad the predictions come back at each image's own size."""
    data = tmp_path / "wide"
    for split, kept in (("train", "002"), ("test", "001")):
        folder = data / "real" / split
        folder.mkdir(parents=True)
        for image in sorted((faces64 / "real" / split).glob("*.png")):
            pixels, labels = np.asarray(Image.open(image)), np.load(image.with_suffix(".npy"))
            rows = slice(None) if image.stem == kept else slice(8, 56)
            Image.fromarray(pixels[rows]).save(folder / image.name)
            np.save(folder / f"{image.stem}.npy", labels[rows])
    shutil.copy(faces64 / "classes.txt", data)
    sizes = {"000": (48, 64), "001": (64, 64)}

    refused = runner.invoke(app, ["segment", "--data", str(data), "--out", str(tmp_path / "refused"), "--quiet"])
    assert refused.exit_code == 2 and not (tmp_path / "refused").exists()
    (error,) = [line for line in refused.output.splitlines() if line.startswith("error:")]  # one line
    assert "000.png is 64x48; only square images are supported" in error and "--fit pad" in error

    for fit in ("resize", "pad"):
        out = tmp_path / fit
        result = run("segment", "--data", data, "--fit", fit, "--members", 2, "--steps", 50, "--out", out, "--quiet")
        assert result.exit_code == 0, result.output
        metrics = read_metrics(out)
        assert metrics["fit"] == fit and metrics["model_input_size"] == [32, 32]
        assert metrics["label_size"] == [[48, 64], [64, 64]]
        predictions = label_maps(out / "predictions")
        assert {stem: pred.shape for stem, pred in predictions.items()} == sizes
        assert {stem: shapes[2] for stem, shapes in panels.items()} == sizes
        panels.clear()
    predicted = tmp_path / "predicted_pad"
    result = run("predict", "--ensemble", tmp_path / "pad" / "ensemble", "--images", data / "real" / "test",
                 "--fit", "pad", "--out", predicted, "--quiet")
    assert result.exit_code == 0, result.output
    for stem, pred in label_maps(predicted / "predictions").items():
        assert np.array_equal(pred, np.load(tmp_path / "pad" / "predictions" / f"{stem}.npy"))


def test_the_default_at_the_models_size_is_scored_from_the_predictions_it_writes(tmp_path):
    """The embedded default (32x32 images, the 32x32 model): predictions at the model's size, and metrics.json's mIoU
    is the authors' mIoU of the written predictions against the test label maps. (A pinned mIoU
    held only on the CPU it was measured on: another CPU's kernels round differently.)"""
    out = tmp_path / "default"
    result = run("segment", "--train-number", 4, "--test-number", 4, "--members", 2, "--precision", "float32",
                 "--early-batch-size", 128, "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out)
    assert metrics["label_size"] == metrics["model_input_size"] == [32, 32] and metrics["training_pixels"] == 4096
    test = probe.load_dataset(split="test", number=4)
    score = SegmentationScore(len(test.classes), test.ignore_label)
    assert metrics["test_images"] == test.stems
    for stem, labels in zip(test.stems, test.labels):
        prediction = np.load(out / "predictions" / f"{stem}.npy")
        assert prediction.shape == labels.shape == (32, 32)
        score.update(prediction, labels)
    assert metrics["miou"] == pytest.approx(100 * score.miou, abs=1e-9)


def test_cache_info_fits_a_narrow_terminal_without_cutting_anything(tmp_path, monkeypatch):
    """At 80 columns the table would cut its cells (`activatio…`): every entry is shown whole instead."""
    import os

    from probe.utils.cache import cache_entries

    cache = Path(os.environ["PROBE_CACHE"])
    identities = [{"backbone": "ddpm", "checkpoint": "f" * 64, "noise": "mean-of-4", "seed": 3},
                  {"backbone": "diffusers", "checkpoint": "0123456789abcdef" * 4, "noise": "shared", "seed": 0},
                  {"backbone": "pixels", "version": 1}]
    for i, identity in enumerate(identities):
        folder = cache / "activations" / f"{i:016x}"
        (folder / "000").mkdir(parents=True)
        (folder / "identity.json").write_text(json.dumps(identity))
        (folder / "000" / "t50_block6.npy").write_bytes(b"\0" * 1000)
    (cache / "default-domain-v1-s32-seed0").mkdir(parents=True)
    (cache / "synthetic" / "horse_21").mkdir(parents=True)
    (cache / "downloads" / "models" / "ddpm_checkpoints").mkdir(parents=True)
    (cache / "downloads" / "models" / "ddpm_checkpoints" / "lsun_horse.pt").write_bytes(b"\0" * 10)
    (cache / "downloads" / "models" / "ddpm_checkpoints" / "lsun_cat.pt.part").write_bytes(b"\0" * 10)
    entries = cache_entries()
    assert len(entries) == 7 and len(entries.backbone.iloc[0]) > 80
    for columns in (80, 60):
        result = runner.invoke(app, ["cache", "info"], env={"COLUMNS": str(columns)}, catch_exceptions=False)
        assert result.exit_code == 0 and "…" not in result.output, result.output
        for row in entries.itertuples():
            assert f"{row.kind}: {row.name}" in result.output  # kinds and names whole
            assert not row.backbone or f"backbone {row.backbone}," in result.output  # the whole label on its line
        assert "7 entries" in result.output
    wide = runner.invoke(app, ["cache", "info"], env={"COLUMNS": "250"}, catch_exceptions=False).output
    assert "┃ kind" in wide and "…" not in wide and all(row.backbone in wide for row in entries.itertuples())


def test_default_out_folders_are_per_command_and_dataset_with_one_mode(tmp_path, tiny_domain, monkeypatch):
    """runs/COMMAND on the embedded default, runs/COMMAND-NAME for --dataset NAME or a --data folder NAME (so
    `probe grid --dataset horse21` after `probe grid` is not refused), and segment, kmeans and grid folders get the
    permissions of a plain mkdir (segment and kmeans, swapped in from mkdtemp's staging folder, had 0700)."""
    import os
    import stat

    import click

    from probe.cli.options import default_out

    resolve = default_out("grid")
    for params, folder in (({"dataset": None, "data": None}, "runs/grid"), ({"dataset": "horse21"}, "runs/grid-horse21"),
                           ({"data": Path("/some/where/my_data/")}, "runs/grid-my_data"), ({}, "runs/grid")):
        context = click.Context(click.Command("grid"))
        context.params = params
        assert resolve(context, None) == Path(folder)
        assert resolve(context, Path("mine")) == Path("mine")

    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o027)  # not the usual 022, so a default mode cannot pass by chance
    try:
        small = ["--data", tiny_domain, "--backbone", "pixels", "--quiet"]
        for command in (["segment", "--members", 1], ["kmeans", "--n-images", 1, "--k", 2],
                        ["grid", "--members", 1, "--threads", 1]):
            result = run(*command, *small)
            assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)
    folders = sorted((tmp_path / "runs").iterdir())
    assert [folder.name for folder in folders] == ["grid-faces", "kmeans-faces", "segment-faces"]
    assert {oct(stat.S_IMODE(folder.stat().st_mode)) for folder in folders} == {oct(0o750)}


def test_kmeans_names_n_images_when_the_split_is_short(tmp_path, tiny_domain):
    result = runner.invoke(app, ["kmeans", "--data", str(tiny_domain), "--backbone", "pixels", "--n-images", "5",
                                 "--out", str(tmp_path / "k"), "--quiet"])
    assert result.exit_code == 2 and not (tmp_path / "k").exists()
    assert f"--n-images 5: {tiny_domain / 'real' / 'test'} holds 3 images; give --n-images 1..3" in result.output
