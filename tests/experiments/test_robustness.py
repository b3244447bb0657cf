"""`probe robustness` (Fig. 6): one clean fit per (backbone, seed) scored clean and on corrupted test images."""

import logging

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, read_metrics
from probe.cli import app
from probe.data.corruptions import corrupt, corruption_seed
from probe.experiments.robustness import corrupted_images, score_images
from probe.backbones import BackboneSpec
from probe.tasks.segment import SegmentOptions, evaluate
from probe.data.sources import open_source, to_uint8_image
from probe.features.store import ActivationStore

runner = CliRunner()
FIXTURE_DDPM = f"ddpm={FIXTURES / 'adm_tiny32.pt'}"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def robustness(data, out, *extra):
    return run("robustness", "--data", data, "--backbones", f"pixels,{FIXTURE_DDPM}", "--model-flags",
               FIXTURES / "adm_tiny32.json", "--corruptions", "gaussian_noise,brightness", "--severities", "1,5",
               "--seeds", 0, "--members", 1, "--threads", 1, "--out", out, "--quiet", *extra)


@pytest.mark.slow
def test_robustness_table_equals_segment_resumes_and_repeats(tmp_path, tiny_domain, caplog):
    out = tmp_path / "rob"
    result = robustness(tiny_domain, out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns[:7]) == ["backbone", "seed", "corruption", "severity", "miou", "clean_miou", "drop"]
    assert len(table) == 2 * 2 * 2 and (table.threads == 1).all()
    assert set(zip(table.backbone, table.corruption, table.severity)) == {
        (b, c, s) for b in ("pixels", "ddpm") for c in ("gaussian_noise", "brightness") for s in (1, 5)}
    assert np.allclose(table["drop"], table.clean_miou - table.miou, atol=1e-12)
    assert len(list((out / "cells").glob("*.json"))) == 2  # one fit per (backbone, seed), not per corruption
    # the corrupted images change the predictions: strong noise moves every backbone's mIoU off its clean score
    noisy = table[(table.corruption == "gaussian_noise") & (table.severity == 5)]
    assert (noisy.miou != noisy.clean_miou).all()  # (by how much is chance: the pixels' score is near chance)

    # the clean score is `probe segment` with the same backbone, seed and members
    for backbone, options in (("ddpm", ["--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags",
                                        FIXTURES / "adm_tiny32.json"]), ("pixels", [])):
        segment = tmp_path / f"segment_{backbone}"
        result = run("segment", "--data", tiny_domain, "--backbone", backbone, *options, "--members", 1,
                     "--seed", 0, "--out", segment, "--quiet")
        assert result.exit_code == 0, result.output
        clean = table[table.backbone == backbone].clean_miou.unique()
        assert len(clean) == 1 and clean[0] == pytest.approx(read_metrics(segment)["miou"], abs=1e-9)

    # each row is its corruption's score: the pixels cell recomputed through the API (same fit, 1 thread)
    source = open_source(data=tiny_domain)
    evaluation = evaluate(source, SegmentOptions(backbone=BackboneSpec(kind="pixels"), members=1), 0, progress=False)
    store = ActivationStore(evaluation.backbone)
    for row in table[table.backbone == "pixels"].itertuples():
        images = corrupted_images(evaluation.test, row.corruption, row.severity, seed=0)
        store.fill(images, progress=False)
        score = score_images(evaluation.fitted.ensemble, store, evaluation.backbone.names, images, source.num_classes,
                             source.ignore_label)
        assert row.miou == pytest.approx(100 * score.miou, abs=1e-9)

    markdown = (out / "table.md").read_text().splitlines()
    assert "| backbone | severity 1 | severity 5 |" in markdown
    row = next(line for line in markdown if line.startswith("| ddpm | ") and "±" in line)
    drop5 = table[(table.backbone == "ddpm") & (table.severity == 5)]["drop"].mean()
    assert f"{drop5:.1f} ± 0.0 |" in row
    assert (out / "robustness.png").stat().st_size > 10_000

    caplog.clear()
    caplog.set_level(logging.INFO, logger="probe")
    result = robustness(tiny_domain, out)  # a rerun resumes: nothing is computed again
    assert result.exit_code == 0, result.output
    assert "robustness: 2 cells reused, 0 computed" in caplog.text
    assert pd.read_csv(out / "robustness.csv").equals(table)

    again = tmp_path / "again"  # the same seed from scratch, with its own activation cache: the same table
    result = robustness(tiny_domain, again, "--cache", tmp_path / "cache2")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(again / "robustness.csv").equals(table)


def test_corrupted_images_are_seeded_model_inputs_and_scored_as_segment(tiny_domain):
    source = open_source(data=tiny_domain)
    evaluation = evaluate(source, SegmentOptions(backbone=BackboneSpec(kind="pixels"), members=1), 0, progress=False)
    test = evaluation.test
    store = ActivationStore(evaluation.backbone)
    clean = score_images(evaluation.fitted.ensemble, store, evaluation.backbone.names, test, source.num_classes,
                         source.ignore_label)
    assert 100 * clean.miou == pytest.approx(evaluation.metrics["miou"], abs=1e-12)  # the same scoring as segment

    distance = {}
    for severity in (1, 5):
        images = corrupted_images(test, "gaussian_noise", severity, seed=0)
        assert [im.stem for im in images] == [im.stem for im in test]
        for image, original in zip(images, test):
            assert image.image.dtype == np.float32 and image.image.shape == original.image.shape
            assert image.image.min() >= -1 and image.image.max() <= 1 and image.labels is original.labels
            expected = corrupt(to_uint8_image(original), "gaussian_noise", severity,
                               corruption_seed(0, original.stem, "gaussian_noise", severity))
            assert np.array_equal(to_uint8_image(image), expected)  # the toolkit's scaling, exactly invertible
        distance[severity] = np.mean([np.abs(a.image - b.image).mean() for a, b in zip(images, test)])
        again = corrupted_images(test, "gaussian_noise", severity, seed=0)
        assert all(np.array_equal(a.image, b.image) for a, b in zip(images, again))
    assert 0 < distance[1] < distance[5]
    other_seed = corrupted_images(test, "gaussian_noise", 5, seed=1)
    assert not np.array_equal(other_seed[0].image, corrupted_images(test, "gaussian_noise", 5, seed=0)[0].image)


def test_robustness_lines_draws_the_mean_drop_over_corruptions(tmp_path):
    from probe.plots import robustness_lines

    table = pd.DataFrame([{"backbone": b, "seed": s, "corruption": c, "severity": v,
                           "drop": {"ddpm": 1.0, "pixels": 4.0}[b] * v + s + (c == "fog")}
                          for b in ("ddpm", "pixels") for s in (0, 2) for c in ("fog", "snow") for v in (1, 3, 5)])
    fig = robustness_lines(table, tmp_path / "r.png")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"ddpm", "pixels"}
    assert list(lines["pixels"].get_xdata()) == [1, 3, 5]
    assert np.allclose(lines["pixels"].get_ydata(), [4 * v + 1 + 0.5 for v in (1, 3, 5)])  # seeds 0, 2; fog +1
    assert (tmp_path / "r.png").stat().st_size > 5_000


def test_robustness_bad_input(tmp_path, tiny_domain):
    from probe.data.default_domain import write_default_domain

    out = tmp_path / "rob"
    small = write_default_domain(tmp_path / "small", size=16, pool=0, train=2, test=1, seed=0, progress=False)
    for data, extra, words in ((tiny_domain, ["--severities", "6"], "bad severity 6"),
                               (tiny_domain, ["--corruptions", "fog,nope"], "unknown corruption 'nope'"),
                               (tiny_domain, ["--train-number", "9"], "--train-number 9: the train split holds 4"),
                               (small, [], "at least 32x32")):
        result = run("robustness", "--data", data, "--backbones", "pixels", "--seeds", 0, "--out", out, "--quiet",
                     *extra)
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def image_folders(cache) -> list[str]:
    """The cache's activation folders per image (<identity>/<image key>), and any hidden folder left there."""
    root = cache / "activations"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.is_dir()) + sorted(
        p.name for p in root.glob(".*"))


def test_robustness_keeps_only_the_clean_activations_and_scores_as_through_the_cache(tmp_path, caplog):
    # the default domain, 1 corruption at 1 severity, pixels, 1 member: the corrupted copies' activations are
    # extracted into a temporary store deleted once scored; the cache keeps the 20 + 20 clean images' only
    out = tmp_path / "rob"
    result = run("robustness", "--backbones", "pixels", "--corruptions", "gaussian_noise", "--severities", 3,
                 "--seeds", 0, "--members", 1, "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    folders = image_folders(tmp_path / "cache")
    assert len(folders) == 40 and not any(name.startswith(".") for name in folders), folders
    row = pd.read_csv(out / "robustness.csv").iloc[0]

    # the same numbers as scoring through the normal store (what robustness did before issue 26), in its own cache
    source = open_source()
    evaluation = evaluate(source, SegmentOptions(backbone=BackboneSpec(kind="pixels"), members=1), 0,
                          cache=tmp_path / "normal", progress=False)
    assert row.clean_miou == pytest.approx(evaluation.metrics["miou"], abs=1e-12)
    images = corrupted_images(evaluation.test, "gaussian_noise", 3, seed=0)
    store = ActivationStore(evaluation.backbone, tmp_path / "normal")
    store.fill(images, progress=False)
    score = score_images(evaluation.fitted.ensemble, store, evaluation.backbone.names, images, source.num_classes,
                         source.ignore_label)
    assert row.miou == pytest.approx(100 * score.miou, abs=1e-12)
    assert len([p for p in (tmp_path / "normal").glob("*/*") if p.is_dir()]) == 60  # there: 40 + 20 copies


def test_a_killed_robustness_sweep_leaves_no_corrupted_activations(tmp_path, tiny_domain, monkeypatch):
    import socket
    import subprocess
    import sys

    import probe.experiments.robustness as robustness_module
    from probe.utils.cache import clear_cache

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the first corrupted copy is scored
    args = ["robustness", "--data", tiny_domain, "--backbones", "pixels", "--corruptions", "fog", "--severities", 1,
            "--seeds", 0, "--members", 1, "--threads", 1, "--quiet"]
    with monkeypatch.context() as patched:
        patched.setattr(robustness_module, "score_images", killed)
        result = run(*args, "--out", tmp_path / "rob")
    assert result.exit_code == 130, result.output
    assert len(image_folders(tmp_path / "cache")) == 7  # the clean images' (4 train, 3 test) only

    # a run killed outright (SIGKILL) leaves its temporary store: the next run removes it, as does probe cache clear
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / "activations" / f".corrupted.partial-{socket.gethostname()}-{dead.stdout.strip()}-x"
    (stale / "some-identity" / "000-abc").mkdir(parents=True)
    assert run(*args, "--out", tmp_path / "rob2").exit_code == 0
    assert not stale.exists() and len(image_folders(tmp_path / "cache")) == 7
    (stale / "some-identity").mkdir(parents=True)
    clear_cache(older_than_days=1000)  # the entries stay; the dead run's store goes
    assert not stale.exists() and len(image_folders(tmp_path / "cache")) == 7
