"""The plan every sweep and `probe segment` prints before any work (issue 26): cells, images, passes, the activation
cache it will write, --dry-run, and the refusal of a sweep that would not fit on the cache's disk."""

import logging
import os
import re
import shutil
from collections import namedtuple

import pytest
import torch
from typer.testing import CliRunner

from conftest import FIXTURES
from probe.backbones import BackboneSpec, build_backbone
from probe.cli import app
from probe.sweeps.plan import npy_bytes

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def plan_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: "))


def gb(text: str, pattern: str) -> float:
    """The amount after `pattern` in the plan's text, in GB."""
    number, unit = re.search(pattern + r"\s*([0-9.]+) (GB|MB)", text).groups()
    return float(number) / (1 if unit == "GB" else 1000)


def cache_gb(text: str) -> float:
    return gb(text, "activation cache")


def written_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names
               if name.endswith(".npy"))


def test_grid_dry_run_on_the_default_prints_cells_passes_and_the_cache_and_creates_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    out = tmp_path / "grid"
    result = run("grid", "--dry-run", "--out", out, "--threads", 1)
    assert result.exit_code == 0, result.output
    text = plan_text(caplog)
    assert "plan: grid, 162 cells, 40 images, 360 UNet passes to compute (40 images x 9 steps)" in text, text
    assert "downloads: none needed" in text and "time: estimated once the first cell has run" in text
    assert not out.exists() and not (tmp_path / "cache" / "activations").exists()
    # the size is the 18 blocks' maps of 40 images at 9 steps, as a real forward of the default DDPM gives them
    backbone = build_backbone(BackboneSpec(kind="ddpm"), "grid", 32)
    maps = backbone(torch.zeros(1, 3, 32, 32), ["x"], 0)
    expected = 40 * 9 * sum(npy_bytes(tuple(a.shape[1:])) for a in maps.values())
    assert cache_gb(text) == pytest.approx(expected / 1e9, rel=0.005)
    assert len(text.splitlines()) == 3


def test_the_planned_cache_is_what_the_grid_writes_and_a_rerun_plans_it_as_cached(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    out = tmp_path / "grid"
    args = ["grid", "--blocks", "0,12,17", "--steps", "0,50", "--train-number", 2, "--test-number", 2, "--threads", 1,
            "--out", out, "--quiet"]
    assert run(*args, "--dry-run").exit_code == 0 and not out.exists()
    planned = plan_text(caplog)
    assert "plan: grid, 6 cells, 4 images, 8 UNet passes to compute (4 images x 2 steps)" in planned, planned
    caplog.clear()
    result = run(*args[:-1])  # without --quiet, which drops the plan with the progress bars
    assert result.exit_code == 0, result.output
    assert plan_text(caplog) == planned  # the run printed the same plan first
    written = written_bytes(tmp_path / "cache" / "activations")
    assert written > 0 and cache_gb(planned) == pytest.approx(written / 1e9, rel=0.01)
    assert re.search(r"grid: the first cell took [0-9.]+ s; about [0-9]+ (s|min) left for the other 5 cells",
                     caplog.text), caplog.text
    caplog.clear()
    assert run(*args, "--blocks", "0,12,17,5", "--dry-run").exit_code == 0  # more cells: the cached maps count
    text = plan_text(caplog)
    # other --blocks: new cell keys (the cells' backbone lists its blocks), the same store (the identity does not)
    assert "plan: grid, 8 cells, 4 images, 8 UNet passes" in text, text
    assert gb(text, "to write,") == pytest.approx(written / 1e9, rel=0.01)  # blocks 0, 12, 17 are cached
    assert gb(text, r"\(") == pytest.approx(cache_gb(text) - written / 1e9, rel=0.01)  # block 5 to write


def test_a_sweep_that_would_not_fit_on_the_cache_disk_is_refused_in_one_line(tmp_path, tiny_domain, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 20_000, 20_000))
    for command, extra in (("efficiency", ["--backbones", "pixels", "--train-numbers", 2, "--seeds", 0]),
                           ("segment", ["--backbone", "pixels"]), ("grid", ["--backbone", "pixels"])):
        out = tmp_path / command
        result = run(command, "--data", tiny_domain, *extra, "--members", 1, "--threads", 1, "--out", out, "--quiet")
        assert result.exit_code == 2, result.output
        error = result.output.strip()
        assert len(error.splitlines()) == 1 and f"probe {command} would write " in error, error
        assert "but that disk has 0.02 MB free: pass --cache DIR on a disk with room, or compute fewer cells" in error
        assert not out.exists() and not list((tmp_path / "cache").glob("activations/*/*"))
    # another --cache on a disk with room: the way out the message names
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12 if "roomy" in str(path) else 0))
    (tmp_path / "roomy").mkdir()
    result = run("segment", "--data", tiny_domain, "--backbone", "pixels", "--members", 1, "--threads", 1,
                 "--cache", tmp_path / "roomy", "--out", tmp_path / "segment", "--quiet")
    assert result.exit_code == 0, result.output


def test_every_sweep_and_segment_print_a_plan_and_dry_run_creates_nothing(tmp_path, tiny_domain, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    ddpm = ["--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags", FIXTURES / "adm_tiny32.json"]
    commands = {
        "segment": ["--backbone", "pixels"],
        "segment --seeds": ["--backbone", "pixels", "--seeds", "0,1"],
        "efficiency": ["--backbones", "pixels", "--train-numbers", "1,2", "--seeds", "0,1"],
        "variants": [*ddpm, "--seeds", 0, "--blocks", 5, "--steps", 50],
        "robustness": ["--backbones", "pixels", "--corruptions", "fog", "--severities", "1,3", "--seeds", 0],
        "layers": ["--backbones", "pixels", "--steps", 50],
    }
    expected = {"segment": "segment, 1 cell, 7 images, 7 backbone passes",
                "segment --seeds": "segment, 2 cells, 7 images, 7 backbone passes",  # pixels: one identity
                "efficiency": "efficiency, 4 cells, ",  # the training images drawn per seed
                "variants": "variants, 4 cells, 7 images, ",
                "robustness": "robustness, 1 cell, 7 images + 6 corrupted copies, 13 backbone passes",
                "layers": "layers, 1 cell, 7 images, 7 backbone passes"}
    for name, extra in commands.items():
        caplog.clear()
        out = tmp_path / name.replace(" ", "_")
        result = run(name.split()[0], "--data", tiny_domain, *extra, "--out", out, "--dry-run", "--quiet")
        assert result.exit_code == 0, (name, result.output)
        text = plan_text(caplog)
        assert expected[name] in text, (name, text)
        assert not out.exists() and not (tmp_path / "cache" / "activations").exists(), name
        if name == "robustness":  # 3 test images' 27 x 32 x 32 float16 maps (and headers), one corruption at a time
            assert "corrupted copies 0.166 MB at most at once, deleted as scored" in text, text
        if name == "variants":  # shared, per-image: 7 each; mean-of-4: 28; DDIM inversion to t=50 in 25 steps: 7 x 26
            assert "224 UNet passes" in text, text


def test_a_dry_run_that_needs_downloads_names_them_and_downloads_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    result = run("grid", "--dataset", "horse21", "--dry-run", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    text = plan_text(caplog)
    assert "needs these downloads first: datasets.tar.gz, models/ddpm_checkpoints/lsun_horse.pt" in text, text
    assert "probe download horse21" in text
    assert not (tmp_path / "g").exists() and not (tmp_path / "cache" / "downloads").exists()


def test_synthesize_plans_its_passes_and_its_chunks_temporary_store(tmp_path, tiny_domain, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    segment = tmp_path / "segment"
    result = run("segment", "--data", tiny_domain, "--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags",
                 FIXTURES / "adm_tiny32.json", "--train-number", 2, "--test-number", 1, "--members", 1,
                 "--threads", 1, "--out", segment, "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "synth"
    result = run("synthesize", "--ensemble", segment / "ensemble", "--n", 5, "--chunk-size", 2, "--sampler", "ddim:4",
                 "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    text = plan_text(caplog)
    # 5 images x (4 DDIM steps + the ensemble's 3 steps to label them), in 3 chunks; nothing cached
    assert "plan: synthesize, 3 cells, 5 images, 35 UNet passes to compute" in text, text
    assert "activation cache 0 MB" in text and "a chunk's activations " in text and "deleted with it" in text
    assert not out.exists()
