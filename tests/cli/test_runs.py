"""`probe runs`: one row per run folder, read from what the commands wrote."""

import json

import pandas as pd
from typer.testing import CliRunner

from conftest import read_metrics
from spair_layout import write_spair_folder
from probe.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_runs_lists_each_run_with_its_headline(tmp_path, tiny_domain, fixture_model):
    checkpoint, flags = fixture_model
    runs = tmp_path / "runs"
    segment = run("segment", "--data", tiny_domain, "--backbone", "pixels", "--train-number", 4, "--test-number", 3,
                  "--members", 2, "--quiet", "--out", runs / "segment")
    grid = run("grid", "--data", tiny_domain, "--checkpoint", checkpoint, "--model-flags", flags, "--blocks", "0,4",
               "--steps", "50", "--train-number", 4, "--test-number", 3, "--quiet", "--out", runs / "nested" / "grid")
    pairs = write_spair_folder(tmp_path / "spair", categories=("cat",), pairs_per_category=2, keypoints=4)
    correspond = run("correspond", "--data", pairs, "--blocks", "8", "--steps", "50", "--threads", 1, "--quiet",
                     "--out", runs / "correspond")
    assert segment.exit_code == 0 and grid.exit_code == 0, segment.output + grid.output
    assert correspond.exit_code == 0, correspond.output
    (runs / "not-a-run").mkdir()

    listed = run("runs", runs, "--csv", tmp_path / "runs.csv")
    assert listed.exit_code == 0, listed.output
    table = pd.read_csv(tmp_path / "runs.csv").set_index("command")
    assert list(table.index) == ["correspond", "grid", "segment"]  # folder order; the folder without a run record is left out
    miou = read_metrics(runs / "segment")["miou"]
    best = json.loads((runs / "nested" / "grid" / "grid.json").read_text())["best"]
    assert table.loc["segment", "result"] == f"mIoU {miou:.2f}" and table.loc["segment", "backbone"] == "pixels"
    assert table.loc["grid", "result"] == f"best {best['layer']} t={best['step']}: mIoU {best['miou']:.2f}"
    assert table.loc["grid", "data"] == tiny_domain.name and table.loc["grid", "backbone"] == "ddpm"
    header, *rows = listed.output.splitlines()
    assert header.split() == ["folder", "command", "written", "data", "backbone", "result", "seconds"]
    assert len(rows) == 3 and f"mIoU {miou:.2f}" in rows[2]
    found = json.loads((runs / "correspond" / "metrics.json").read_text())
    assert table.loc["correspond", "result"] == f"best block8 t=50: PCK@0.1 per image {found['pck_image']['0.1']:.2f}"


def test_runs_without_runs_is_one_line(tmp_path):
    missing = run("runs", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "nowhere is not a folder" in missing.output
    empty = run("runs", tmp_path)
    assert empty.exit_code == 2 and "no run folders" in empty.output
