"""The DDPM trainer: a run killed after a checkpoint and resumed ends exactly where an uninterrupted run ends."""

import pytest
import torch

from probe.errors import ProbeError
from probe.models import UNet, load_model
from probe.models.flags import ModelFlags, parse_flags
from probe.training.ddpm import CHECKPOINT, EMA_WEIGHTS, TrainConfig, train_ddpm

TINY = "--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8"


def test_resumed_run_equals_uninterrupted_run(tmp_path, images):
    flags = ModelFlags(**parse_flags(TINY))
    config = dict(batch_size=4, save_every=2, seed=3)
    whole = train_ddpm(images, flags, tmp_path / "whole", TrainConfig(steps=4, **config), progress=False)
    # "Killed" after the checkpoint at step 2: the first run stops there, the second resumes to step 4.
    train_ddpm(images, flags, tmp_path / "split", TrainConfig(steps=2, **config), progress=False)
    assert torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)["step"] == 2
    resumed = train_ddpm(images, flags, tmp_path / "split", TrainConfig(steps=4, **config), resume=True,
                         progress=False)
    expected, got = (torch.load(path, weights_only=True) for path in (whole, resumed))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    torch.manual_seed(3)  # the trainer initialises from the global generator seeded with the config's seed
    start = UNet(flags).state_dict()
    assert any(not torch.equal(start[k], got[k]) for k in got)  # training moved the weights
    assert (tmp_path / "split" / "samples_000004.png").is_file()
    assert [line.split(",")[0] for line in (tmp_path / "split" / "loss.csv").read_text().split()] == ["step", "2", "4"]
    with pytest.raises(ProbeError, match="--resume"):
        train_ddpm(images, flags, tmp_path / "split", TrainConfig(steps=6, **config), progress=False)
    assert load_model(tmp_path / "split" / EMA_WEIGHTS, TINY).flags.image_size == 16  # loads like any checkpoint


def test_mae_train_command_writes_weights_the_mae_backbone_loads(tmp_path, images):
    from typer.testing import CliRunner

    from probe.backbones import BackboneSpec, build_backbone
    from probe.cli import app

    out = tmp_path / "mae"
    model = ["--image-size", "16", "--embed-dim", "64", "--depth", "2", "--decoder-embed-dim", "32", "--decoder-depth",
             "1", "--batch-size", "4", "--save-every", "2", "--quiet"]
    args = ["mae", "train", "--images", str(images), "--out", str(out), *model, "--steps", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in (out / "loss.csv").read_text().split()] == ["step", "2", "3"]
    backbone = build_backbone(BackboneSpec("mae", out / "mae.pt"), "segment", 16)
    assert backbone.names == ["block0", "block1"] and backbone.identity["architecture"]["num_heads"] == 1
    maps = backbone(torch.zeros(1, 3, 16, 16), ["x"], None)
    assert maps["block1"].shape == (1, 64, 4, 4)
    again = CliRunner().invoke(app, args)  # an existing run needs --resume
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(app, [*args[:-1], "5", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    refused = CliRunner().invoke(app, ["mae", "train", "--images", str(images), "--out", str(foreign), *model])
    assert refused.exit_code == 2 and "holds files probe did not write" in refused.output
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
