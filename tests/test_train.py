"""The DDPM trainer: a run killed after a checkpoint and resumed ends exactly where an uninterrupted run ends."""

import numpy as np
import pytest
import torch
from PIL import Image

from probe.errors import ProbeError
from probe.models import UNet, load_model
from probe.models.flags import ModelFlags, parse_flags
from probe.train import CHECKPOINT, EMA_WEIGHTS, TrainConfig, train_ddpm

TINY = "--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8"


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


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
