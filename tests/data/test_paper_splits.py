"""The paper's splits by default (issue 33): `probe segment` on a paper dataset plans and runs Table 1's train and test
images (the authors' configs), grid keeps 20 + 20, your own data keeps up to 20, and a split shorter than asked
names the option. The datasets are faked in the authors' layout under --data-root (tiny images, random labels)."""

import logging
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURES, read_metrics
from probe.cli import app
from probe.data.registry import DATASETS, lookup

ADM = ["--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags", FIXTURES / "adm_tiny32.json"]
# Table 1 of the paper: (train, test) images per dataset
TABLE_1 = {"bedroom_28": (40, 20), "ffhq_34": (20, 20), "cat_15": (30, 20), "horse_21": (30, 20),
           "celeba_19": (20, 500), "ade_bedroom_30": (50, 650)}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def fake_split(folder, count: int, classes: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        np.save(folder / f"{i:05d}.npy", rng.integers(0, classes, (8, 8)).astype(np.uint8))


def fake_dataset(root, name: str, train: int, test: int) -> None:
    info = lookup(name)
    rng = np.random.default_rng(len(name))
    fake_split(root / name / "real" / "train", train, info.num_classes, rng)
    fake_split(root / name / "real" / "test", test, info.num_classes, rng)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The six datasets with two images more than the paper's split in each (Horse-21's test split as the authors'
    archive has it, exactly its 20)."""
    root = tmp_path_factory.mktemp("datasets")
    for name, (train, test) in TABLE_1.items():
        fake_dataset(root, name, train + 2, test + (0 if name == "horse_21" else 2))
    return root


def plan_line(caplog) -> str:
    """The plan's first line: cells, images, passes, and the images each cell trains and tests on."""
    lines = [r.getMessage() for r in caplog.records if re.match(r"plan: \w+, \d+ cells?, ", r.getMessage())]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_registry_holds_table_1_and_the_configs_numbers():
    assert {name: (info.train, info.test) for name, info in DATASETS.items()} == TABLE_1
    assert {name: (info.split_number("train"), info.split_number("test")) for name, info in DATASETS.items()} == {
        **TABLE_1, "horse_21": (30, 30)}  # horse_21/ddpm.json: testing_number 30, of a split that holds 20


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_segment_plans_the_papers_split_of_each_dataset(name, data_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    out = tmp_path / "out"
    result = run("segment", "--dataset", name, "--data-root", data_root, *ADM, "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    train, test = TABLE_1[name]
    line = plan_line(caplog)
    assert line.startswith(f"plan: segment, 1 cell, {train + test} images, "), line
    assert line.endswith(f"; {train} train + {test} test images"), line
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_a_dry_run_before_the_downloads_names_the_papers_split(name, tmp_path, caplog):
    """From an empty cache: the plan stops at the downloads it needs, naming the images the run will take."""
    caplog.set_level(logging.INFO, logger="probe")
    result = run("segment", "--dataset", name, "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    train, test = TABLE_1[name]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert "needs these downloads first: datasets.tar.gz, models/ddpm_checkpoints/" in lines[0], lines
    assert f"plan: {train} train + {test} test images" in lines, lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "downloads").exists()


def test_a_dry_run_before_the_checkpoint_download_counts_the_copys_images(data_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    for command, numbers, expected in (("segment", [], "30 train + 20 test"), ("grid", [], "20 train + 20 test"),
                                       ("segment", ["--test-number", 5], "30 train + 5 test")):
        caplog.clear()
        result = run(command, "--dataset", "horse21", "--data-root", data_root, *numbers, "--dry-run",
                     "--out", tmp_path / command)
        assert result.exit_code == 0, result.output
        messages = [r.getMessage() for r in caplog.records]
        assert "plan: probe {} needs these downloads first: models/ddpm_checkpoints/lsun_horse.pt".format(command) in \
            messages and f"plan: {expected} images" in messages, messages


def test_horse21_takes_every_test_image_up_to_its_configs_30(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    fake_dataset(tmp_path / "data", "horse_21", 30, 33)
    result = run("segment", "--dataset", "horse21", "--data-root", tmp_path / "data", *ADM, "--dry-run",
                 "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert plan_line(caplog).endswith("; 30 train + 30 test images")


def test_grid_keeps_20_and_20_on_a_paper_dataset(data_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    result = run("grid", "--dataset", "horse21", "--data-root", data_root, *ADM, "--dry-run", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    line = plan_line(caplog)
    assert re.match(r"plan: grid, \d+ cells, 40 images, ", line) and line.endswith("; 20 train + 20 test images per cell")


def test_efficiency_goes_up_to_the_papers_training_split(data_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    result = run("efficiency", "--dataset", "horse21", "--data-root", data_root, "--backbones", "pixels",
                 "--seeds", "0", "--dry-run", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert plan_line(caplog).endswith("; 1, 2, 5, 10, 20 or 30 train + 20 test images per cell")


def test_segment_runs_the_papers_split_and_metrics_name_the_counts(data_root, tmp_path):
    out = tmp_path / "out"
    result = run("segment", "--dataset", "horse21", "--data-root", data_root, "--backbone", "pixels",
                 "--image-size", 8, "--members", 1, "--threads", 1, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out)
    assert (metrics["train_number"], metrics["test_number"]) == (30, 20)
    assert metrics["train_images"] == [f"{i:05d}" for i in range(30)] and len(metrics["test_images"]) == 20


def test_your_own_data_keeps_up_to_20(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    fake_dataset(tmp_path, "cat_15", 25, 22)  # the same files as a folder of your own: not the paper's dataset
    result = run("segment", "--data", tmp_path / "cat_15" / "real", "--backbone", "pixels", "--dry-run",
                 "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert plan_line(caplog).endswith("; 20 train + 20 test images")


def test_a_split_shorter_than_asked_names_the_option(tiny_domain, tmp_path):
    for option, number in (("--train-number", 9), ("--test-number", 8)):
        result = run("segment", "--data", tiny_domain, "--backbone", "pixels", option, number, "--quiet",
                     "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        holds = 4 if option == "--train-number" else 3
        assert f"{option} {number}: " in result.output and f"holds {holds} images; give {option} 1..{holds}" in \
            result.output, result.output
        assert not (tmp_path / "out").exists()
    result = run("deeplab", "--train-data", tiny_domain, "--data", tiny_domain, "--arch", "resnet50",
                 "--batch-size", 2, "--test-number", 8, "--out", tmp_path / "deeplab")
    assert result.exit_code == 2, result.output
    assert "--test-number 8: " in result.output and "holds 3 images; give --test-number 1..3" in result.output
