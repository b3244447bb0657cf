"""The paper's sweeps on the runner: tables, figures, resumption, and the same numbers as `probe segment`."""

import json
import logging
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, read_metrics
from probe.backbones import BackboneSpec
from probe.cli import app
from probe.sweeps.data import SweepData
from probe.experiments.cells import segment_config
from probe.ensemble import BATCH_SIZE, EARLY_BATCH_SIZE

runner = CliRunner()
FIXTURE_DDPM = f"ddpm={FIXTURES / 'adm_tiny32.pt'}"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def efficiency(tiny_domain, out, *extra):
    return run("efficiency", "--data", tiny_domain, "--backbones", f"pixels,{FIXTURE_DDPM}", "--model-flags",
               FIXTURES / "adm_tiny32.json", "--train-numbers", "1,4", "--seeds", "0,1", "--members", 1,
               "--threads", 1, "--out", out, "--quiet", *extra)


@pytest.mark.slow
def test_efficiency_table_figure_and_resume(tmp_path, tiny_domain, caplog):
    out = tmp_path / "eff"
    result = efficiency(tiny_domain, out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "efficiency.csv")
    assert len(table) == 2 * 2 * 2 and set(table.backbone) == {"pixels", "ddpm"} and (table.threads == 1).all()
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 8
    records = [json.loads(c.read_text()) for c in cells]
    drawn = {(r["config"]["backbone"]["kind"], r["config"]["seed"]): r["result"]["train_images"]
             for r in records if r["config"]["train_number"] == 1}
    assert drawn[("pixels", 0)] != drawn[("pixels", 1)] or drawn[("ddpm", 0)] != drawn[("ddpm", 1)]  # per seed
    assert all(len(r["result"]["train_images"]) == r["config"]["train_number"] for r in records)
    markdown = (out / "table.md").read_text().splitlines()
    assert markdown[0] == "| backbone | train_number 1 | train_number 4 |" and markdown[2].startswith("| pixels | ")
    mean = table[(table.backbone == "ddpm") & (table.train_number == 4)].miou.mean()
    std = table[(table.backbone == "ddpm") & (table.train_number == 4)].miou.std(ddof=0)
    assert f"{mean:.1f} ± {std:.1f}" in markdown[3]
    assert (out / "efficiency.png").stat().st_size > 10_000

    # four training images of four: the whole split, so the cell is `probe segment --train-number 4`
    segment = tmp_path / "segment"
    result = run("segment", "--data", tiny_domain, "--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags",
                 FIXTURES / "adm_tiny32.json", "--train-number", 4, "--members", 1, "--seed", 1, "--out", segment,
                 "--quiet")
    assert result.exit_code == 0, result.output
    cell = table[(table.backbone == "ddpm") & (table.train_number == 4) & (table.seed == 1)].miou.item()
    assert cell == pytest.approx(read_metrics(segment)["miou"], abs=1e-9)

    before = table.miou.tolist()
    cells[0].unlink()
    cells[5].write_text("{ half a file")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="probe")
    result = efficiency(tiny_domain, out)  # a rerun resumes: no --overwrite needed
    assert result.exit_code == 0, result.output
    assert "efficiency: 6 cells reused, 2 computed" in caplog.text and "computing that cell again" in caplog.text
    assert pd.read_csv(out / "efficiency.csv").miou.tolist() == before


def test_efficiency_bad_input(tmp_path, tiny_domain, monkeypatch):
    out = tmp_path / "eff"
    for extra, words in ((["--train-numbers", "1,10"], "--train-numbers 10: the train split holds 4 images"),
                         (["--backbones", "pixels,vit"], "--backbones 'vit'"),
                         (["--threads", "0"], "--threads 0")):
        result = run("efficiency", "--data", tiny_domain, "--backbones", "pixels", "--out", out, "--quiet", *extra)
        assert result.exit_code == 2 and words in result.output, result.output
        assert not out.exists()
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run("efficiency", "--data", tiny_domain, "--backbones", "pixels", "--train-numbers", "1", "--ray", "local",
                 "--out", out)
    assert result.exit_code == 2 and '--ray needs ray, which is not installed: pip install -e ".[ray]"' in result.output and not out.exists()


@pytest.mark.slow
def test_efficiency_on_ray_equals_in_process(tmp_path, tiny_domain):
    here, there = tmp_path / "here", tmp_path / "there"
    assert efficiency(tiny_domain, here).exit_code == 0
    result = efficiency(tiny_domain, there, "--ray", "local")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(here / "efficiency.csv").equals(pd.read_csv(there / "efficiency.csv"))
    assert (here / "table.md").read_text() == (there / "table.md").read_text()


@pytest.mark.slow
def test_variants_table_and_the_shared_variant_is_probe_segment(tmp_path, tiny_domain):
    model = ["--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags", FIXTURES / "adm_tiny32.json",
             "--blocks", "2,5", "--steps", "50", "--members", 1]
    out = tmp_path / "variants"
    result = run("variants", "--data", tiny_domain, *model, "--seeds", "0,1", "--draws", 2, "--inversion-steps", 2,
                 "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "variants.csv")
    assert list(dict.fromkeys(table.variant)) == ["shared", "per-image", "mean-of-2", "ddim-inversion-2"]
    assert len(table) == 8 and (table.threads == 1).all()
    assert table[table.variant == "ddim-inversion-2"].miou.tolist() != table[table.variant == "shared"].miou.tolist()
    lines = (out / "table.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| shared", "| per-image", "| mean-of-2", "| ddim-inversion-2"]
    assert (out / "variants.png").stat().st_size > 10_000
    segment = tmp_path / "segment"
    result = run("segment", "--data", tiny_domain, *model, "--seed", 1, "--out", segment, "--quiet")
    assert result.exit_code == 0, result.output
    shared = table[(table.variant == "shared") & (table.seed == 1)].miou.item()
    assert shared == pytest.approx(read_metrics(segment)["miou"], abs=1e-9)
    bad = run("variants", "--data", tiny_domain, "--backbone", "pixels", "--out", tmp_path / "bad", "--quiet")
    assert bad.exit_code == 2 and "--noise" in bad.output and not (tmp_path / "bad").exists()


GRID_MODEL = ["--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags", FIXTURES / "adm_tiny32.json",
              "--blocks", "2,5", "--steps", "50,900", "--train-number", 4, "--test-number", 3]


def test_grid_is_a_resumable_sweep_whose_cells_are_probe_segment_fits(tmp_path, tiny_domain, caplog):
    out = tmp_path / "grid"
    result = run("grid", "--data", tiny_domain, *GRID_MODEL, "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 4 and json.loads((out / "grid.json").read_text())["threads"] == [1]
    per_class = pd.read_csv(out / "grid_per_class.csv")
    table = pd.read_csv(out / "grid.csv")
    # one grid cell is the few-shot segmenter on that one feature map, with one member, float32 products and the
    # authors' training rule
    segment = tmp_path / "segment"
    result = run("segment", "--data", tiny_domain, *GRID_MODEL[:4], "--blocks", "5", "--steps", "900",
                 "--train-number", 4, "--test-number", 3, "--members", 1, "--precision", "float32",
                 "--early-batch-size", 64, "--out", segment, "--quiet")
    assert result.exit_code == 0, result.output
    cell = table[(table.layer == "block5") & (table.step == 900) & (table.group == "all")].miou.item()
    assert cell == pytest.approx(read_metrics(segment)["miou"], abs=1e-9)

    cells[1].unlink()  # a sweep killed before its second cell finished
    caplog.set_level(logging.INFO, logger="probe")
    result = run("grid", "--data", tiny_domain, *GRID_MODEL, "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "3 cells reused, 1 computed" in caplog.text
    assert pd.read_csv(out / "grid_per_class.csv").equals(per_class)
    assert pd.read_csv(out / "grid.csv").equals(table)


@pytest.mark.slow
def test_grid_and_segment_seeds_on_ray_equal_in_process(tmp_path, tiny_domain):
    common = ["--data", tiny_domain, "--threads", 1, "--quiet"]
    grid = [*GRID_MODEL[:4], "--blocks", "5", "--steps", "50,900", "--members", 1]
    for there in ([], ["--ray", "local"]):
        result = run("grid", *grid, *common, "--out", tmp_path / f"grid{len(there)}", *there)
        assert result.exit_code == 0, result.output
        result = run("segment", "--backbone", "pixels", "--members", 1, "--seeds", "0,1", *common,
                     "--out", tmp_path / f"seeds{len(there)}", *there)
        assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "grid0" / "grid_per_class.csv").equals(
        pd.read_csv(tmp_path / "grid2" / "grid_per_class.csv"))
    assert read_metrics(tmp_path / "seeds0")["miou_per_seed"] == read_metrics(tmp_path / "seeds2")["miou_per_seed"]


def test_segment_seeds_is_a_resumable_sweep_of_whole_segment_runs(tmp_path, tiny_domain, caplog):
    out = tmp_path / "seeds"
    args = ["segment", "--data", tiny_domain, "--backbone", "pixels", "--members", 2, "--seeds", "0,1,2",
            "--threads", 1, "--out", out, "--quiet"]
    assert run(*args).exit_code == 0
    summary = read_metrics(out)
    single = tmp_path / "single"
    assert run("segment", "--data", tiny_domain, "--backbone", "pixels", "--members", 2, "--seed", 2, "--threads", 1,
               "--out", single, "--quiet").exit_code == 0
    assert summary["miou_per_seed"][2] == read_metrics(single)["miou"] == read_metrics(out / "seed_2")["miou"]
    assert (out / "seed_2" / "ensemble" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "seed_1" / "predictions").iterdir()) == ["000.npy", "001.npy", "002.npy"]

    moved = tmp_path / "moved"
    out.rename(moved)  # a sweep folder moved elsewhere resumes there: no cell's identity holds its folder
    seed_1 = next(p for p in (moved / "cells").iterdir() if json.loads(p.read_text())["config"]["seed"] == 1)
    seed_1.unlink()  # killed while seed 1 ran: its folder may be half-made
    (moved / "seed_1" / "metrics.json").unlink()
    caplog.set_level(logging.INFO, logger="probe")
    result = run(*[moved if a == out else a for a in args])
    assert result.exit_code == 0, result.output
    assert "2 cells reused, 1 computed" in caplog.text and read_metrics(moved) == summary
    assert read_metrics(moved / "seed_1")["miou"] == summary["miou_per_seed"][1] and not out.exists()
    moved.rename(out)
    refused = run(*args, "--overwrite")
    assert refused.exit_code == 2 and "a sweep folder that a rerun resumes" in refused.output
    refused = run("segment", "--data", tiny_domain, "--ray", "local", "--out", tmp_path / "one", "--quiet")
    assert refused.exit_code == 2 and "give several seeds" in refused.output and not (tmp_path / "one").exists()


def test_segment_trains_on_another_folder_and_tests_on_the_data(tmp_path, tiny_domain):
    import shutil

    other = tmp_path / "synthetic"
    shutil.copytree(tiny_domain / "real" / "train", other / "train")
    shutil.copy(tiny_domain / "classes.txt", other / "classes.txt")
    args = ["--data", tiny_domain, "--backbone", "pixels", "--members", 2, "--quiet"]
    assert run("segment", *args, "--out", tmp_path / "real").exit_code == 0
    result = run("segment", *args, "--train-data", other, "--out", tmp_path / "copy")
    assert result.exit_code == 0, result.output
    metrics = read_metrics(tmp_path / "copy")
    assert metrics["miou"] == read_metrics(tmp_path / "real")["miou"]  # the same images train: the same fit
    assert metrics["trained_on"] == str(other) and metrics["test_images"] == ["000", "001", "002"]

    (other / "classes.txt").write_text("\n".join(["sky", "grass"] + [f"c{i}" for i in range(8)]) + "\n")
    result = run("segment", *args, "--train-data", other, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and f"--train-data {other}: its classes.txt lists 10 classes (sky, grass" in result.output
    assert "train on data labelled with the test data's classes" in result.output and not (tmp_path / "bad").exists()
    result = run("segment", *args, "--train-data", tmp_path / "missing", "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "is not a folder" in result.output and not (tmp_path / "bad").exists()


def test_early_batch_size_reaches_the_ensemble_of_one_run_and_of_every_seed(tmp_path, tiny_domain):
    args = ["segment", "--data", tiny_domain, "--backbone", "pixels", "--members", 2, "--threads", 1, "--quiet"]
    assert run(*args, "--early-batch-size", 64, "--out", tmp_path / "authors").exit_code == 0
    result = run(*args, "--early-batch-size", 256, "--out", tmp_path / "early")
    assert result.exit_code == 0, result.output
    authors, early = read_metrics(tmp_path / "authors"), read_metrics(tmp_path / "early")
    assert early["options"]["early_batch_size"] == 256 and authors["options"]["early_batch_size"] == 64
    assert sum(early["ensemble_iterations"]) < sum(authors["ensemble_iterations"])  # fewer, fatter early steps
    assert run(*args, "--out", tmp_path / "default").exit_code == 0
    default = read_metrics(tmp_path / "default")
    assert default["options"]["early_batch_size"] == 64  # the authors' rule is the default: the same fit
    assert default["training_rule"] == authors["training_rule"] == "authors (batches of 64)"
    assert early["training_rule"].startswith("early batches of 256 in epochs 0-3") and "not the authors'" in \
        early["training_rule"]
    assert default["ensemble_iterations"] == authors["ensemble_iterations"] and default["miou"] == authors["miou"]
    assert run(*args, "--early-batch-size", 128, "--out", tmp_path / "opt_in").exit_code == 0
    opt_in = read_metrics(tmp_path / "opt_in")
    assert opt_in["training_rule"].startswith("early batches of 128")
    assert sum(early["ensemble_iterations"]) < sum(opt_in["ensemble_iterations"]) < sum(default["ensemble_iterations"])
    result = run(*args, "--early-batch-size", 256, "--seeds", "0,1", "--out", tmp_path / "seeds")
    assert result.exit_code == 0, result.output
    assert read_metrics(tmp_path / "seeds" / "seed_0")["ensemble_iterations"] == early["ensemble_iterations"]


def test_only_early_batches_other_than_the_authors_enter_cell_keys(tmp_path, tiny_domain):
    data = SweepData(data=str(tiny_domain))
    authors = segment_config(data, BackboneSpec(kind="pixels"), train_number=2, early_batch_size=64)
    default = segment_config(data, BackboneSpec(kind="pixels"), train_number=2)
    early = segment_config(data, BackboneSpec(kind="pixels"), train_number=2, early_batch_size=512)
    opt_in = segment_config(data, BackboneSpec(kind="pixels"), train_number=2, early_batch_size=128)
    assert "early_batch_size" not in authors and BATCH_SIZE == EARLY_BATCH_SIZE == 64
    assert default == authors  # the default is the authors' rule: the keys of their sweeps stay
    assert (opt_in["early_batch_size"], early["early_batch_size"]) == (128, 512)
    for command in ("segment", "efficiency"):
        result = run(command, "--data", tiny_domain, "--backbone" if command == "segment" else "--backbones", "pixels",
                     "--early-batch-size", 1, "--out", tmp_path / command, "--quiet")
        assert result.exit_code == 2 and "--early-batch-size 1: batch normalisation needs at least 2" in result.output
        assert not (tmp_path / command).exists()


def test_a_sweep_resumed_with_other_result_determining_options_is_refused(tmp_path, tiny_domain, monkeypatch):
    out = tmp_path / "eff"
    args = ["efficiency", "--data", tiny_domain, "--backbones", "pixels", "--train-numbers", 1, "--members", 1,
            "--threads", 1, "--out", out]
    first = [*args, "--seeds", "0", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["probe", *map(str, first)])
    assert run(*first).exit_code == 0
    cells = sorted(p.name for p in (out / "cells").iterdir())
    for changed, words in ((["--members", 2], "--members 1 in the sweep, 2 in this run"),
                           (["--threads", 2], "--threads 1 in the sweep, 2 in this run"),
                           (["--early-batch-size", 128], "--early-batch-size 64 in the sweep, 128 in this run"),
                           (["--checkpoint", FIXTURES / "adm_tiny32.pt"],
                            f"--checkpoint unset in the sweep, {FIXTURES / 'adm_tiny32.pt'} in this run")):
        result = run(*args, "--seeds", "0,1", *changed)  # the later value of a repeated option wins
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "another --out" in result.output
        assert sorted(p.name for p in (out / "cells").iterdir()) == cells  # no cell computed
    refused = run("grid", "--data", tiny_domain, "--backbone", "pixels", "--out", out, "--quiet")
    assert refused.exit_code == 2 and "probe efficiency" in refused.output

    # a seed more, with progress bars (--quiet dropped) and the default's value given: allowed, only the new cell
    second = [*args, "--seeds", "0,1", "--early-batch-size", 64]
    monkeypatch.setattr(sys, "argv", ["probe", *map(str, second)])
    result = run(*second)
    assert result.exit_code == 0, result.output
    assert len(list((out / "cells").iterdir())) == 2 and len(pd.read_csv(out / "efficiency.csv")) == 2
    marker = json.loads((out / "probe-run.json").read_text())
    assert [r["argv"] for r in marker["runs"]] == [list(map(str, first)), list(map(str, second))]
    assert [(len(r["computed"]), r["reused"], r["status"]) for r in marker["runs"]] == [(1, 0, "finished"),
                                                                                        (1, 1, "finished")]
    assert marker["files"] == ["cells", "efficiency.csv", "efficiency.png", "table.md"]
    assert marker["options"]["--members"] == 1 and marker["options"]["--threads"] == 1
    assert marker["options"]["--early-batch-size"] == 64  # unset is recorded as the rule it meant
    assert "--seeds" not in marker["options"] and "--quiet" not in marker["options"]
    assert "efficiency: pixels n=1 seed 1" in result.output  # the progress bar names the cell as a person would


def test_a_grid_resumed_with_other_threads_is_refused_and_says_which(tmp_path, tiny_domain):
    out = tmp_path / "grid"
    args = ["grid", "--data", tiny_domain, *GRID_MODEL[:4], "--blocks", "5", "--steps", "50", "--train-number", 2,
            "--test-number", 2, "--out", out, "--quiet"]
    assert run(*args, "--threads", 1).exit_code == 0
    for changed, words in ((["--threads", 2], "--threads 1 in the sweep, 2 in this run"),
                           (["--threads", 1, "--members", 2], "--members 1 in the sweep, 2 in this run"),
                           (["--threads", 1, "--train-number", 3], "--train-number 2 in the sweep, 3 in this run"),
                           (["--threads", 1, "--device", "meta"], "--device cpu in the sweep, meta in this run")):
        result = run(*args, *changed)
        assert result.exit_code == 2 and words in result.output, result.output
    # what only changes the tables drawn from the cells may change
    areas = sorted(pd.read_csv(out / "class_groups.csv").mean_area)
    cut = (areas[1] + areas[2]) / 2  # two small classes, the others large
    result = run(*args, "--threads", 1, "--size-threshold", cut)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "grid.json").read_text())["size_threshold"] == cut
    assert (pd.read_csv(out / "class_groups.csv").group == "small").sum() == 2
    assert len(list((out / "cells").iterdir())) == 1
