"""What a new user meets in the first hour: --version, quiet libraries, fast answers to option mistakes (before torch
is imported), help that fits a terminal, a word when the machine is busy, --out inside the data refused."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe import __version__
from probe.cli import start_work, app
from probe.utils.runtime import busy_warning

PROBE = Path(sys.executable).with_name("probe")
COMMANDS = [["features"], ["segment"], ["grid"], ["kmeans"], ["predict"], ["efficiency"], ["variants"],
            ["robustness"], ["synthesize"], ["deeplab"], ["download"], ["data", "default"], ["ddpm", "train"],
            ["ddpm", "sample"], ["mae", "train"], ["cache", "info"], ["cache", "clear"], ["layers"], []]


def probe(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROBE), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_version_prints_the_version():
    result = probe("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"probe {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "probe")
def test_every_help_fits_60_lines_at_80_columns_with_one_example_per_line(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines"
    assert max(len(line) for line in lines) <= 80
    assert not any(line.strip() == "|" or " | probe" in line for line in lines)  # examples are not joined by bars
    if command in (["kmeans"], ["predict"]):
        assert "metrics.json" not in result.output  # neither writes one


CHECK_IMPORTS = """
import json, sys
sys.argv = ["probe", *json.loads(sys.argv[1])]
from probe.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


@pytest.fixture()
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


@pytest.mark.parametrize("args, words", [
    (["segment", "--help"], "Few-shot segmentation"),
    (["segment", "--members", "many"], "'many' is not a valid int"),
    (["segment", "--threads", "0"], "--threads 0: give 1 or more"),
    (["segment", "--early-batch-size", "1"], "--early-batch-size 1"),
    (["segment", "--blocks", "5;6"], "--blocks '5;6'"),
    (["segment", "--precision", "half"], "precision 'half': use auto, float32 or bfloat16"),
    (["segment", "--sequential", "--precision", "bfloat16"], "drop --sequential"),
    (["segment", "--seeds", "a,b"], "--seeds 'a,b'"),
    (["segment", "--data", "no/such/folder", "--out", "{tmp}/o"], "--data no/such/folder is not a folder"),
    (["segment", "--dataset", "zebra7", "--out", "{tmp}/o"], "unknown dataset 'zebra7'"),
    (["segment", "--out", "{file}"], "is a file"),
    (["grid", "--threads", "0", "--out", "{tmp}/g"], "--threads 0"),
    (["efficiency", "--train-numbers", "x", "--out", "{tmp}/e"], "--train-numbers 'x'"),
    (["robustness", "--severities", "9", "--out", "{tmp}/r"], "severit"),
    (["variants", "--draws", "0", "--out", "{tmp}/v"], "--draws 0"),
    (["kmeans", "--steps", "a b", "--out", "{tmp}/k"], "--steps 'a b'"),
    (["features", "--images", "no/such", "--out", "{tmp}/f"], "no/such"),
    (["predict", "--ensemble", "{tmp}/e", "--images", "{tmp}/i", "--out", "{tmp}/p"], "manifest.json not found"),
    (["deeplab", "--train-data", "{tmp}", "--threads", "0", "--out", "{tmp}/d"], "--threads 0"),
    (["synthesize", "--gpus-per-cell", "-1"], "--gpus-per-cell -1"),
    (["segment", "--dataset", "horse21", "--backbone", "bogus", "--out", "{tmp}/o"], "--backbone 'bogus': use one of"),
    (["efficiency", "--backbones", "ddpm,bogus", "--out", "{tmp}/e"], "--backbones 'bogus': use one of"),
])
def test_option_mistakes_are_answered_before_torch_is_imported(args, words, tmp_path, a_file):
    args = [arg.format(tmp=tmp_path, file=a_file) for arg in args]
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, json.dumps(args)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, result.stderr
    assert report["code"] in ((0,) if "--help" in args else (2,)), result.stderr
    assert words in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_kmeans_prints_no_faiss_loader_lines_unless_verbose(tmp_path):
    args = ["kmeans", "--backbone", "pixels", "--n-images", "1", "--k", "2", "--threads", "1", "--quiet"]
    quiet = probe(*args, "--out", tmp_path / "k1")
    assert quiet.returncode == 0, quiet.stderr
    assert "faiss" not in quiet.stderr.lower() and "Could not load library" not in quiet.stderr
    verbose = probe("--verbose", *args, "--out", tmp_path / "k2")
    assert verbose.returncode == 0 and "faiss" in verbose.stderr.lower()


def test_a_busy_machine_is_named_with_the_threads_to_use(monkeypatch, caplog):
    assert busy_warning(2, load=1.0, cores=2) == (
        "the machine is busy (load average 1.0 on 2 cores) and this run starts 2 torch threads: they will contend "
        "with the other work (measured: segment training ran 12x slower on 2 busy cores); pass --threads 1, or run "
        "one job at a time")
    assert busy_warning(1, load=1.0, cores=2) is None  # one thread fits beside one busy core
    assert busy_warning(2, load=0.3, cores=2) is None  # an idle machine
    assert "--threads 2" in busy_warning(8, load=6.2, cores=8)

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with caplog.at_level(logging.WARNING, logger="probe"):
        start_work()  # the tests' one torch thread (conftest): 3 busy cores of 2 leave none free
    assert caplog.messages == ["the machine is busy (load average 3.0 on 2 cores): this run's 1 torch thread "
                               "shares the cores with the other work, so the run is slower; run one job at a time "
                               "for full speed"]  # no fewer threads to suggest


def test_out_inside_the_data_folder_is_refused(tiny_domain, tmp_path):
    result = probe("segment", "--data", tiny_domain, "--out", tiny_domain / "results")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"lies inside the input folder {tiny_domain}" in lines[0]
    assert not (tiny_domain / "results").exists()
