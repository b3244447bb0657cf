"""Bad input through the CLI: one line naming the file or value, exit code 2, no traceback, nothing in --out."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES


def probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True, timeout=300)


def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(FIXTURES / "adm_tiny32.png", folder / "a.png")
    return folder


def truncated_checkpoint(tmp_path):
    path = tmp_path / "truncated.pt"
    data = (FIXTURES / "adm_tiny32.pt").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def corrupt_image(tmp_path):
    folder = image_folder(tmp_path)
    (folder / "b.png").write_bytes(b"not a png at all")
    return folder


def non_square_image(tmp_path):
    folder = image_folder(tmp_path)
    Image.new("RGB", (40, 32)).save(folder / "wide.png")
    return folder


def empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


FEATURES_CASES = {
    # name: (builder of (images, checkpoint, flags, extra args), text the message must contain)
    "empty folder": (lambda p: (empty_folder(p), FIXTURES / "adm_tiny32.pt", None, []), "empty"),
    "corrupt image": (lambda p: (corrupt_image(p), FIXTURES / "adm_tiny32.pt", None, []), "b.png"),
    "non-square image": (lambda p: (non_square_image(p), FIXTURES / "adm_tiny32.pt", None, []), "wide.png"),
    "missing checkpoint": (lambda p: (image_folder(p), p / "nope.pt", None, []), "nope.pt"),
    "truncated checkpoint": (lambda p: (image_folder(p), truncated_checkpoint(p), None, []), "truncated.pt"),
    "contradicting flag": (lambda p: (image_folder(p), FIXTURES / "adm_tiny32.pt", "--image_size 32 --num_channels 64", []),
                           "--num_channels 64 contradicts"),
    "block out of range": (lambda p: (image_folder(p), FIXTURES / "adm_tiny32.pt", None, ["--blocks", "9"]), "--blocks 9"),
    "step out of range": (lambda p: (image_folder(p), FIXTURES / "adm_tiny32.pt", None, ["--steps", "1000"]), "--steps 1000"),
}


@pytest.mark.parametrize("case", sorted(FEATURES_CASES))
def test_features_bad_input(tmp_path, case):
    build, expected = FEATURES_CASES[case]
    images, checkpoint, flags, extra = build(tmp_path)
    flags = flags or str(FIXTURES / "adm_tiny32.json")
    out = tmp_path / "out"
    result = probe("features", "--images", images, "--checkpoint", checkpoint, "--model-flags", flags,
                   "--out", out, "--quiet", *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def broken_label_map(dataset, how):
    labels = dataset / "real" / "train" / "001.npy"
    if how == "missing":
        labels.unlink()
    elif how == "wrong size":
        np.save(labels, np.zeros((16, 16), dtype=np.uint8))
    else:
        np.save(labels, np.full((32, 32), 12, dtype=np.uint8))


@pytest.mark.parametrize("how,expected", [("missing", "001.npy"), ("wrong size", "001.npy"), ("out of range", "001.npy")])
def test_segment_bad_label_maps(tmp_path, tiny_domain, how, expected):
    dataset = tmp_path / "faces"
    shutil.copytree(tiny_domain, dataset)
    broken_label_map(dataset, how)
    out = tmp_path / "out"
    result = probe("segment", "--data", dataset, "--checkpoint", FIXTURES / "adm_tiny32.pt", "--model-flags",
                   FIXTURES / "adm_tiny32.json", "--train-number", 4, "--test-number", 2, "--out", out, "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_unknown_dataset_and_missing_root(tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    result = probe("segment", "--dataset", "zebra7", "--data-root", root, "--checkpoint", "x.pt", "--out", tmp_path / "o")
    assert result.returncode == 2 and "zebra7" in result.stderr and "horse_21" in result.stderr
    result = probe("grid", "--dataset", "horse21", "--data-root", root, "--checkpoint", "x.pt", "--out", tmp_path / "o")
    assert result.returncode == 2 and str(root / "horse_21") in result.stderr.replace("\n", "")


def test_segment_bad_precision(tmp_path):
    result = probe("segment", "--precision", "half", "--out", tmp_path / "o")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "precision 'half'" in result.stderr and "float32" in result.stderr
    assert not (tmp_path / "o").exists()
    result = probe("segment", "--sequential", "--precision", "bfloat16", "--out", tmp_path / "o")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--sequential" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_data_without_checkpoint_uses_the_embedded_default_model(tmp_path, tiny_domain):
    out = tmp_path / "out"
    result = probe("segment", "--data", tiny_domain, "--members", 1, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and "using the embedded default DDPM" in notes[0] and "32x32" in notes[0], result.stderr
    manifest = json.loads((out / "ensemble" / "manifest.json").read_text())
    assert manifest["backbone"]["checkpoint"] is None and manifest["identity"]["flags"]["image_size"] == 32
    assert manifest["backbone"]["layers"] == "block5,block6,block7,block8,block12"


def test_a_typo_in_blocks_is_reported_before_the_model_is_read(tmp_path, tiny_domain):
    for option, value in (("--blocks", "5,6,x"), ("--steps", "50,1o0")):
        result = probe("segment", "--data", tiny_domain, "--checkpoint", FIXTURES / "adm_tiny32.pt", option, value,
                       "--out", tmp_path / "o")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{option} '{value}'" in result.stderr and "is not a number" in result.stderr, result.stderr
        assert not (tmp_path / "o").exists()
