"""DeepLabV3 (torchvision's structure, hand-written) and `probe deeplab`: training, the kept epoch, resumption,
refusals, and `probe predict` with the saved model."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import label_maps
from probe.cli import app
from probe.data.layout import load_images
from probe.tasks.deeplab import DeepLabOptions, load_deeplab, predict, run_deeplab
from probe.errors import ProbeError
from probe.metrics import SegmentationScore
from probe.models.deeplabv3 import DeepLabConfig, DeepLabV3
from probe.models.resnet import ResNet, ResNetConfig
from probe.data.sources import open_source

runner = CliRunner()
TINY = DeepLabOptions(arch="resnet50", width=4, epochs=2, batch_size=2, test_number=3)


@pytest.mark.parametrize("arch, parameters", [("resnet50", 39_638_869), ("resnet101", 58_630_997)])
def test_parameter_counts_are_torchvisions(arch, parameters):
    """torchvision documents deeplabv3_resnet50 / _resnet101 (21 classes) with 42,004,074 / 60,996,202 parameters,
    of which its auxiliary FCN head (not used by the authors, nor here) holds 2,365,205."""
    model = DeepLabV3(DeepLabConfig(21, arch), torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in model.parameters()) == parameters
    keys = set(model.state_dict())
    assert {"backbone.layer4.2.conv3.weight", "classifier.0.convs.4.1.weight", "classifier.0.project.0.weight",
            "classifier.1.weight", "classifier.2.running_var", "classifier.4.bias"} <= keys
    assert not any(k.startswith(("aux_classifier", "backbone.fc")) for k in keys)


def test_dilation_replaces_stride_as_torchvision():
    config = ResNetConfig((3, 4, 6, 3), 4, (4, 8, 16, 32), (16, 32, 64, 128))
    plain = ResNet(config)
    dilated = ResNet(config, replace_stride_with_dilation=(False, True, True))
    assert plain.state_dict().keys() == dilated.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dilated.state_dict().values()))
    # layer3: first block at dilation 1, the rest 2; layer4: first 2, the rest 4; no stride left in them
    assert [b.conv2.dilation[0] for b in dilated.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in dilated.layer4] == [2, 4, 4]
    assert dilated.layer3[0].downsample[0].stride == (1, 1) and plain.layer3[0].downsample[0].stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert plain(x).shape[-1] == 2 and dilated(x).shape[-1] == 8  # output stride 32 and 8
    model = DeepLabV3(DeepLabConfig(5, "resnet50", 4), torch.Generator().manual_seed(0)).eval()
    assert model(x).shape == (1, 5, 64, 64)


def test_deeplab_trains_keeps_the_best_epoch_and_predicts(tmp_path, tiny_domain):
    source = open_source(data=tiny_domain)
    out = tmp_path / "dl"
    metrics = run_deeplab(tiny_domain, source, TINY, out, progress=False)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and (history["loss"] > 0).all()
    best = int(history.loc[history["val_miou"].idxmax(), "epoch"])
    assert metrics["best_epoch"] == best and metrics["val_miou"] == pytest.approx(history["val_miou"].max())
    assert (out / "history.png").stat().st_size > 0
    # the saved model is the best epoch's: it gives the validation mIoU of that epoch and the reported test mIoU
    model, manifest = load_deeplab(out / "model")
    assert manifest["model"] == "deeplabv3" and manifest["best_epoch"] == best
    for split, number, expected in (("train", None, metrics["val_miou"]), ("test", 3, metrics["miou"])):
        images = source.split(split, 32, number)
        scorer = SegmentationScore(source.num_classes, source.ignore_label)
        for image, pred in zip(images, predict(model, images, torch.device("cpu"))):
            scorer.update(pred, image.labels)
        assert 100 * scorer.miou == pytest.approx(expected)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["iou"].mean() == pytest.approx(metrics["miou"])
    # probe predict dispatches on the manifest and segments with the DeepLabV3
    result = runner.invoke(app, ["predict", "--ensemble", str(out / "model"), "--images",
                                 str(tiny_domain / "real" / "test"), "--out", str(tmp_path / "pred"), "--quiet"])
    assert result.exit_code == 0 and "with DeepLabV3" in result.output, result.output
    written = label_maps(tmp_path / "pred" / "predictions")
    expected = predict(model, load_images(tiny_domain / "real" / "test", 32), torch.device("cpu"))
    assert len(written) == 3 and all(np.array_equal(w, e) for w, e in zip(written.values(), expected))


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path, tiny_domain):
    source = open_source(data=tiny_domain)
    run_deeplab(tiny_domain, source, TINY, tmp_path / "whole", progress=False)
    first = run_deeplab(tiny_domain, source, dataclasses.replace(TINY, epochs=1), tmp_path / "parts", progress=False)
    assert first["epochs"] == 1
    with pytest.raises(ProbeError, match="pass --resume"):
        run_deeplab(tiny_domain, source, TINY, tmp_path / "parts", progress=False)
    with pytest.raises(ProbeError, match="--lr differs"):
        run_deeplab(tiny_domain, source, dataclasses.replace(TINY, lr=0.1), tmp_path / "parts", resume=True,
                    progress=False)
    resumed = run_deeplab(tiny_domain, source, TINY, tmp_path / "parts", resume=True, progress=False)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    columns = ["epoch", "loss", "val_miou"]
    assert pd.read_csv(tmp_path / "parts" / "history.csv")[columns].equals(
        pd.read_csv(tmp_path / "whole" / "history.csv")[columns])
    assert resumed["miou"] == whole["miou"] and resumed["best_epoch"] == whole["best_epoch"]


def test_training_data_with_other_classes_is_refused(tmp_path, tiny_domain):
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    for path in (tiny_domain / "real" / "train").iterdir():
        (other / "train" / path.name).write_bytes(path.read_bytes())
    (other / "classes.txt").write_text("\n".join(f"part{i}" for i in range(10)) + "\n")
    out = tmp_path / "dl"
    result = runner.invoke(app, ["deeplab", "--train-data", str(other), "--data", str(tiny_domain), "--out", str(out)])
    assert result.exit_code == 2 and "classes" in result.output and "part0" in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3  # one line, wrapped at most by the console width
    assert not out.exists()
    bad = runner.invoke(app, ["deeplab", "--train-data", str(tiny_domain), "--data", str(tiny_domain), "--arch",
                              "resnet18", "--out", str(out)])
    assert bad.exit_code == 2 and "--arch 'resnet18'" in bad.output and not out.exists()
