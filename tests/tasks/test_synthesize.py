"""`probe synthesize`: the samplers, the labelled dataset it writes, its resumption and its refusals."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import label_maps
from probe import plots
from probe.tasks import synthesize
from probe.cli import app
from probe.models.diffusion import Diffusion
from probe.errors import ProbeError
from probe.models import load_model
from probe.tasks.synthesize import SynthesizeOptions, run_synthesize

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ensembles(tmp_path_factory, fixture_model):
    """Ensembles (2 members) trained by probe segment on the tiny domain: the fixture DDPM's and a pixels one."""
    from probe.data.default_domain import write_default_domain

    root = tmp_path_factory.mktemp("ensembles")
    data = write_default_domain(root / "faces", size=32, pool=0, train=4, test=3, seed=0, progress=False)
    checkpoint, flags = fixture_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROBE_CACHE", str(root / "cache"))
        for name, args in (("ddpm", ["--checkpoint", checkpoint, "--model-flags", flags]),
                           ("pixels", ["--backbone", "pixels"])):
            result = run("segment", "--data", data, *args, "--members", "2", "--out", root / name, "--quiet")
            assert result.exit_code == 0, result.output
    return {"ddpm": root / "ddpm" / "ensemble", "pixels": root / "pixels" / "ensemble", "data": data}


class Constant(torch.nn.Module):
    """A stand-in UNet: eps = `eps` everywhere and the variance channels = `v`."""

    def __init__(self, eps: float, v: float):
        super().__init__()
        self.eps, self.v = eps, v

    def forward(self, x, t):
        return torch.cat([torch.full_like(x, self.eps), torch.full_like(x, self.v)], 1)


@pytest.mark.parametrize("learn_sigma, v, variance", [
    (True, 1.0, "beta"), (True, -1.0, "posterior"), (False, 0.0, "beta")])
def test_ancestral_step_mean_and_variance(fixture_model, learn_sigma, v, variance):
    flags = dataclasses.replace(load_model(*fixture_model).flags, learn_sigma=learn_sigma, diffusion_steps=50)
    diffusion = Diffusion(flags)
    x = torch.full((1, 3, 2, 2), 0.3)
    noise = torch.ones_like(x)
    step = 20
    moved = diffusion.p_sample_step(Constant(0.0, v), x, step, noise)
    still = diffusion.p_sample_step(Constant(0.0, v), x, step, torch.zeros_like(x))
    abar, beta = diffusion.alphas_cumprod, diffusion.betas
    x0 = min(0.3 / np.sqrt(abar[step]), 1.0)  # eps = 0: x0 = x / sqrt(abar), clipped to [-1, 1]
    mean = (beta[step] * np.sqrt(abar[step - 1]) * x0 + (1 - abar[step - 1]) * np.sqrt(1 - beta[step]) * 0.3) / (1 - abar[step])
    expected = beta[step] if variance == "beta" else beta[step] * (1 - abar[step - 1]) / (1 - abar[step])
    assert still.flatten()[0].item() == pytest.approx(mean, rel=1e-5)
    assert (moved - still).flatten()[0].item() == pytest.approx(np.sqrt(expected), rel=1e-4)
    last = diffusion.p_sample_step(Constant(0.0, v), x, 0, noise)  # step 0 adds no noise: x0 itself
    assert torch.allclose(last, torch.full_like(x, min(0.3 / np.sqrt(abar[0]), 1.0)))


def test_ddpm_sample_image_does_not_depend_on_its_batch(fixture_model):
    model = load_model(*fixture_model)
    diffusion = Diffusion(dataclasses.replace(model.flags, diffusion_steps=8, noise_schedule="cosine"))
    steps = []
    batch = diffusion.ddpm_sample(model.unet, [torch.Generator().manual_seed(s) for s in (3, 4)], (3, 32, 32),
                                  on_step=lambda: steps.append(1))
    alone = diffusion.ddpm_sample(model.unet, [torch.Generator().manual_seed(4)], (3, 32, 32))
    assert len(steps) == 8 and batch.abs().max() <= 1
    # its own generator's image: another batch size only rounds differently (1e-5 a pass, 1e-4 after the 8 steps on
    # an Intel CPU with AMX); another image's noise would differ by about 1
    assert torch.allclose(batch[1:], alone, atol=1e-3)
    assert not torch.allclose(batch[0], batch[1], atol=0.1)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parent.name in ("train", "dropped")}


@pytest.mark.slow
def test_synthesize_writes_a_dataset_that_predict_reproduces(tmp_path, ensembles):
    out = tmp_path / "synth"
    options = SynthesizeOptions(n=6, sampler="ddim:2", chunk_size=4, drop_uncertain=0.34)
    table = run_synthesize(ensembles["ddpm"], options, out, progress=False, threads=1)
    assert table["image"].tolist() == ["00000", "00001", "00002", "00003", "00004", "00005"]
    # the two most uncertain images (floor(0.34 * 6) = 2) are moved to dropped/, the rest stay in train/
    most = set(table.sort_values("uncertainty", ascending=False)["image"][:2])
    assert set(table.loc[~table["kept"], "image"]) == most
    assert {p.stem for p in (out / "dropped").glob("*.png")} == most
    assert {p.stem for p in (out / "train").glob("*.npy")} == set(table["image"]) - most
    assert pd.read_csv(out / "uncertainty.csv", dtype={"image": str}).equals(table)
    assert (out / "classes.txt").read_text().split("\n")[:2] == ["background", "skin"]
    assert (out / "preview.png").stat().st_size > 0
    record = json.loads((out / "synthesize.json").read_text())
    assert (record["kept"], record["dropped"], record["settings"]["sampler"]) == (4, 2, "ddim:2")
    # probe predict on the written images gives the written labels and uncertainties
    result = run("predict", "--ensemble", ensembles["ddpm"], "--images", out / "train", "--out", tmp_path / "pred",
                 "--quiet")
    assert result.exit_code == 0, result.output
    predicted, written = label_maps(tmp_path / "pred" / "predictions"), label_maps(out / "train")
    assert predicted.keys() == written.keys() and all(np.array_equal(predicted[k], written[k]) for k in written)
    uncertainty = pd.read_csv(tmp_path / "pred" / "uncertainty.csv", dtype={"image": str}).set_index("image")
    kept = table[table["kept"]].set_index("image")["uncertainty"]
    # equal up to float rounding: predict extracts the images in other batches than the chunks did
    assert np.allclose(uncertainty.loc[kept.index, "uncertainty"], kept, rtol=0, atol=1e-4)
    labels = np.load(out / "train" / f"{kept.index[0]}.npy")
    assert labels.dtype == np.uint8 and labels.shape == (32, 32) and labels.max() < 10
    # the same seed gives the same files; another seed other images
    same = run_synthesize(ensembles["ddpm"], options, tmp_path / "same", progress=False, threads=1)  # chunks 4 and 2
    assert same.equals(table) and _files(tmp_path / "same") == _files(out)
    other = run_synthesize(ensembles["ddpm"], dataclasses.replace(options, seed=1), tmp_path / "other", progress=False,
                           threads=1)
    assert not np.allclose(other["uncertainty"], table["uncertainty"])
    # a rerun with another --drop-uncertain only moves files
    again = run_synthesize(ensembles["ddpm"], dataclasses.replace(options, drop_uncertain=0.0), out, progress=False,
                           threads=1)
    assert again["kept"].all() and len(list((out / "train").glob("*.png"))) == 6
    assert not list((out / "dropped").iterdir())


def test_a_killed_run_computes_only_the_missing_chunks(tmp_path, ensembles, monkeypatch):
    options = SynthesizeOptions(n=5, sampler="ddim:2", chunk_size=2, drop_uncertain=0.0)
    whole = run_synthesize(ensembles["ddpm"], options, tmp_path / "whole", progress=False, threads=1)
    calls, dying = [], [True]
    original = synthesize.synthesize_chunk

    def dies_on_second(spec, threads):
        calls.append(spec["start"])
        if dying[0] and len(calls) == 2:
            raise KeyboardInterrupt
        return original(spec, threads)

    out = tmp_path / "killed"
    monkeypatch.setattr(synthesize, "synthesize_chunk", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_synthesize(ensembles["ddpm"], options, out, progress=False, threads=1)
    assert sorted(p.stem for p in (out / "train").glob("*.png")) == ["00000", "00001"]
    assert not (out / "uncertainty.csv").exists()
    first = (out / "train" / "00000.npy").stat().st_mtime_ns
    calls.clear()
    dying[0] = False
    resumed = run_synthesize(ensembles["ddpm"], options, out, progress=False, threads=1)
    assert calls == [2, 4]  # chunk 0 was reused
    assert (out / "train" / "00000.npy").stat().st_mtime_ns == first
    assert resumed.equals(whole) and _files(out) == _files(tmp_path / "whole")
    with pytest.raises(ProbeError, match="seed 0"):
        run_synthesize(ensembles["ddpm"], dataclasses.replace(options, seed=3), out, progress=False, threads=1)


@pytest.mark.parametrize("args, words", [
    (["--n", "0"], "--n 0: draw at least 1 image"),
    (["--drop-uncertain", "1.5"], "--drop-uncertain 1.5"),
    (["--sampler", "ddim:0"], "--sampler 'ddim:0'"),
    (["--sampler", "ancestral"], "use ddpm"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, ensembles, args, words):
    out = tmp_path / "synth"
    result = runner.invoke(app, ["synthesize", "--ensemble", str(ensembles["ddpm"]), *args, "--out", str(out)])
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3  # one line, wrapped at most by the console width
    assert not out.exists()


def test_an_ensemble_without_a_diffusion_model_is_refused(tmp_path, ensembles):
    out = tmp_path / "synth"
    result = run("synthesize", "--ensemble", ensembles["pixels"], "--n", "4", "--out", out)
    assert result.exit_code == 2 and "pixels features" in result.output and "--backbone ddpm" in result.output
    assert not out.exists()
    missing = run("synthesize", "--ensemble", tmp_path / "nowhere", "--n", "4", "--out", out)
    assert missing.exit_code == 2 and "run probe segment first" in missing.output
    assert not out.exists()


def test_synthesis_preview_draws_each_group_over_its_labels(tmp_path):
    rng = np.random.default_rng(0)
    item = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.integers(0, 3, (8, 8)), "00001  0.120")
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    figure = plots.synthesis_preview({"most certain": [item] * 3, "least certain": [item] * 2}, ["a", "b", "c"],
                                     palette, tmp_path / "preview.png")
    titles = [f.get_suptitle() for f in figure.subfigs[0].subfigs]
    assert titles == ["most certain: samples above, labels below", "least certain: samples above, labels below"]
    shown = [ax for f in figure.subfigs[0].subfigs for ax in f.axes if ax.images]
    assert len(shown) == 2 * 3 + 2 * 2  # images and label maps
    assert np.array_equal(shown[3].images[0].get_array(), plots.colorize(item[1], palette))
    assert Image.open(tmp_path / "preview.png").size[0] > 0
