"""`probe correspond`'s command line: bad data or option values are one line and exit 2 before torch loads, with
nothing written to --out; without data it matches the embedded default's faces; its help fits one screen."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from probe.cli import app
from spair_layout import write_spair_folder

CHECK = """
import json, sys
sys.argv = ["probe", "correspond", *json.loads(sys.argv[1])]
from probe.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def command(tmp_path, *args):
    """The command in a fresh process: (exit code, whether torch was imported, stderr)."""
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps([*map(str, args), "--out", str(tmp_path / "o")])],
                            capture_output=True, text=True, timeout=120)
    outcome = json.loads(result.stdout.splitlines()[-1])
    return outcome["code"], outcome["torch"], result.stderr


def test_a_missing_image_is_one_line_and_exit_2(tmp_path):
    folder = write_spair_folder(tmp_path / "spair", categories=("cat",), pairs_per_category=2)
    missing = folder / "JPEGImages" / "cat" / "cat_1_b.png"
    missing.unlink()
    code, torch_loaded, stderr = command(tmp_path, "--data", folder)
    assert (code, torch_loaded) == (2, False)
    assert stderr.strip().splitlines() == [f"error: image {missing} (named by {folder}/PairAnnotation/test/"
                                           f"000001-cat_1_a-cat_1_b:cat.json) does not exist; put it there or remove "
                                           "the pair"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["--alpha", "0.1,2"], "--alpha 0.1,2.0: give fractions in (0, 1]"),
    (["--alpha", "tenth"], "--alpha 'tenth': give comma-separated fractions"),
    (["--threshold", "box"], "--threshold 'box': use bbox"),
    (["--soft-argmax", "4"], "--soft-argmax 4: give an odd window side in pixels"),
    (["--pairs", "0"], "--pairs 0: give 1 or more pairs per category"),
    (["--blocks", "5;6"], "is not a number, a range or a layer name"),
])
def test_a_bad_option_is_one_line_before_torch_loads(tmp_path, args, words):
    folder = write_spair_folder(tmp_path / "spair", categories=("cat",), pairs_per_category=1)
    code, torch_loaded, stderr = command(tmp_path, "--data", folder, *args)
    assert (code, torch_loaded) == (2, False)
    assert len(stderr.strip().splitlines()) == 1 and words in stderr
    assert not (tmp_path / "o").exists()


def test_help_fits_one_screen():
    result = CliRunner().invoke(app, ["correspond", "--help"], terminal_width=80)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) <= 60 and max(map(len, lines)) <= 80
    assert "probe correspond --data SPair-71k --blocks 6,8,12 --steps 50,150" in result.output


def test_without_data_it_matches_the_embedded_default_faces(tmp_path, monkeypatch):
    """The shipped DDPM on the embedded default's 20 pairs of faces: block 11 finds the parts (about 84 % at
    alpha 0.1), block 0 (a 1 x 1 map: every pixel alike) none; the sweep goes to runs/correspond."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["correspond", "--blocks", "0,11", "--steps", "0", "--threads", "1", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "correspond" / "metrics.json").read_text())
    assert metrics["pairs"] == 20 and metrics["categories"] == ["face"] and metrics["best"]["block"] == "block11"
    scores = {cell["block"]: cell["pck_image"]["0.1"] for cell in metrics["cells"]}
    assert scores["block11"] > 70 and scores["block0"] < 5
