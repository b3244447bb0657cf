"""Datasets and checkpoints by name: downloaded from a mirror of the authors' storage on first use, resumed, verified,
unpacked safely, and used by the commands. The mirror is a loopback server (tests/http_mirror.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.data import fetch
from probe.data.registry import lookup
from probe.errors import ProbeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROBE = Path(sys.executable).with_name("probe")
HORSE = lookup("horse21")
FLAGS = FIXTURES / "adm_tiny32.json"  # the tiny ADM the mirror serves as lsun_horse.pt
CHECKPOINT = "models/ddpm_checkpoints/lsun_horse.pt"


def split(folder: Path, count: int, classes: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        labels = rng.integers(0, classes, (32, 32)).astype(np.uint8)
        labels[:2] = 255
        np.save(folder / f"{i:05d}.npy", labels)


def archive(target: Path, tree: Path, prefix: str = "") -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=prefix + child.name)


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """The authors' storage layout: datasets.tar.gz with horse_21 and ffhq_34 at the paper's split sizes (32x32
    images), the tiny ADM as lsun_horse.pt, the tiny MAE as the ffhq MAE, a synthetic horse_21 archive."""
    root = tmp_path_factory.mktemp("storage")
    tree = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for info in (HORSE, lookup("ffhq34")):
        split(tree / info.name / "real" / "train", info.train, info.num_classes, rng)
        split(tree / info.name / "real" / "test", info.test, info.num_classes, rng)
    archive(root / "datasets.tar.gz", tree)
    (root / CHECKPOINT).parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "adm_tiny32.pt", root / CHECKPOINT)
    (root / "models/mae_checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "mae_tiny32.pt", root / "models/mae_checkpoints/ffhq.pth")
    synthetic = tmp_path_factory.mktemp("synthetic")
    (synthetic / "horse_21").mkdir()
    np.savez(synthetic / "horse_21" / "samples_256x256x3.npz", images=np.zeros((2, 8, 8, 3), np.uint8),
             labels=np.zeros((2, 8, 8), np.uint8), uncertainty=np.zeros(2))
    archive(root / "synthetic-datasets/ddpm/horse_21.tar.gz", synthetic)
    return root


def probe(*args, cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROBE), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_grid_by_name_downloads_verifies_runs_and_then_downloads_nothing(mirror, storage, tmp_path):
    """The issue's check: from an empty cache, `probe grid --dataset horse21` fetches the data and the checkpoint
    from the mirror, verifies them and runs; a second run downloads nothing."""
    args = ["grid", "--dataset", "horse21", "--model-flags", FLAGS, "--train-number", "2", "--test-number", "2",
            "--blocks", "6", "--steps", "50", "--threads", "1"]
    first = probe(*args, "--out", tmp_path / "g", "--quiet")
    assert first.returncode == 0, first.stderr
    assert "best cell: block6 at t=50" in first.stdout
    assert mirror.gets("datasets.tar.gz") == [None] and mirror.gets(CHECKPOINT) == [None]
    cache = Path(os.environ["PROBE_CACHE"])
    assert sorted(p.name for p in (cache / "datasets").iterdir() if not p.name.startswith(".")) == ["ffhq_34", "horse_21"]
    assert len(list((cache / "datasets/horse_21/real/train").glob("*.npy"))) == 30
    assert not (cache / "downloads/datasets.tar.gz").exists()  # unpacked, then deleted; its hash stays recorded
    assert json.loads((cache / "downloads/datasets.tar.gz.json").read_text())["sha256"] == digest(storage / "datasets.tar.gz")
    checkpoint = cache / "downloads" / CHECKPOINT
    assert checkpoint.read_bytes() == (storage / CHECKPOINT).read_bytes()
    assert json.loads((cache / "downloads" / (CHECKPOINT + ".json")).read_text())["sha256"] == digest(checkpoint)
    grid = (tmp_path / "g" / "grid.csv").read_text()
    assert "block6" in grid

    second = probe(*args, "--out", tmp_path / "g2", "--quiet")
    assert second.returncode == 0, second.stderr
    assert len(mirror.requests) == 2  # nothing more was asked of the server
    assert (tmp_path / "g2" / "grid.csv").read_text() == grid

    # the same grid from a notebook (docs/notebooks.md): the API resolves the name to the same cached files
    import pandas as pd
    import torch

    import probe as api

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as --threads 1
    try:
        train = api.load_dataset("horse21", number=2, resolution=32)  # the command's: the tiny model's input size
        test = api.load_dataset("horse21", split="test", number=2, resolution=32)
        ddpm = api.load_backbone("ddpm", purpose="grid", dataset=train, blocks=6, steps=50, model_flags=str(FLAGS))
        table = api.grid(ddpm, train, test)
    finally:
        torch.set_num_threads(threads)
    assert len(mirror.requests) == 2
    assert Path(ddpm.spec.checkpoint) == checkpoint
    means = table[table["class"].isna()].set_index("group")["miou"]
    written = pd.read_csv(tmp_path / "g" / "grid.csv").set_index("group")["miou"]
    assert means["all"] == pytest.approx(written["all"], abs=1e-9)


def test_a_dropped_connection_resumes_with_a_range_request(mirror, storage):
    mirror.cut[CHECKPOINT] = 131_072
    path = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert mirror.gets(CHECKPOINT) == [None, "bytes=131072-"]
    assert path.read_bytes() == (storage / CHECKPOINT).read_bytes()
    assert not fetch.partial_path(path).exists()


def test_a_killed_download_resumes_on_the_next_run(mirror, storage):
    """A process killed mid-download leaves its partial bytes; the next run asks only for the rest."""
    target = fetch.download_path(HORSE.checkpoint_item("ddpm"))
    target.parent.mkdir(parents=True)
    fetch.partial_path(target).write_bytes((storage / CHECKPOINT).read_bytes()[:54_321])
    path = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert mirror.gets(CHECKPOINT) == ["bytes=54321-"]
    assert path.read_bytes() == (storage / CHECKPOINT).read_bytes()


def test_a_partial_file_as_long_as_the_file_is_fetched_afresh(mirror, storage):
    """Killed between the last byte and the rename: the server answers the Range request with 416, and the file is
    downloaded again at once, whole."""
    target = fetch.download_path(HORSE.checkpoint_item("ddpm"))
    target.parent.mkdir(parents=True)
    whole = (storage / CHECKPOINT).read_bytes()
    fetch.partial_path(target).write_bytes(whole)
    path = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert mirror.gets(CHECKPOINT) == [f"bytes={len(whole)}-", None]
    assert path.read_bytes() == whole


def test_a_connection_that_keeps_dropping_is_one_error_that_keeps_the_bytes(mirror, monkeypatch):
    monkeypatch.setattr(fetch, "ATTEMPTS", 2)
    monkeypatch.setattr(mirror, "cut", type("AlwaysCut", (dict,), {"pop": lambda self, *_: 131_072,
                                                                   "__contains__": lambda self, _: True})())
    with pytest.raises(ProbeError, match=r"cannot download the paper's ddpm checkpoint lsun_horse\.pt from "
                                         r"http://127\.0\.0\.1:\d+/models/ddpm_checkpoints/lsun_horse\.pt \(the connection "
                                         r"ended early\); the 0\.3 MB received are kept and the next try resumes: pass --checkpoint"):
        fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    target = fetch.download_path(HORSE.checkpoint_item("ddpm"))
    assert not target.exists() and fetch.partial_path(target).stat().st_size == 262_144
    assert mirror.gets(CHECKPOINT) == [None, "bytes=131072-"]


def test_a_changed_file_is_detected_named_and_fetched_again(mirror, storage, caplog):
    path = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, a new modification time
    with caplog.at_level(logging.WARNING, logger="probe"):
        again = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert f"{path} is not the file first downloaded" in caplog.text and "downloading it again" in caplog.text
    assert again == path and path.read_bytes() == (storage / CHECKPOINT).read_bytes()
    assert mirror.gets(CHECKPOINT) == [None, None]


def test_an_unchanged_file_is_not_hashed_again(mirror, monkeypatch):
    fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    monkeypatch.setattr(fetch, "sha256", lambda path: pytest.fail(f"{path} hashed again"))
    fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert len(mirror.gets(CHECKPOINT)) == 1


def test_a_server_that_now_serves_other_bytes_is_refused(mirror, storage, tmp_path, monkeypatch):
    path = fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    path.unlink()
    other = tmp_path / "other"
    shutil.copytree(storage, other)
    changed = bytearray((storage / CHECKPOINT).read_bytes())
    changed[1000] ^= 0xFF
    (other / CHECKPOINT).write_bytes(bytes(changed))
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"downloaded again from .* differs from its first download \(SHA-256 "
                                         r"[0-9a-f]{12}\.\.\. in .*lsun_horse\.pt\.json\)"):
        fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert not path.exists()


def test_a_checkpoint_that_does_not_load_is_deleted_and_named(mirror, storage, tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / CHECKPOINT).parent.mkdir(parents=True)
    (other / CHECKPOINT).write_bytes(b"<html>not found</html>")
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"lsun_horse\.pt from http://127.0.0.1:\d+/models/ddpm_checkpoints/"
                                         r"lsun_horse\.pt failed its check \(checkpoint .* cannot be read.*the copy "
                                         "was deleted"):
        fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    target = fetch.download_path(HORSE.checkpoint_item("ddpm"))
    assert not target.exists() and "sha256" not in fetch.read_record(target)


def test_a_missing_file_names_the_url_and_the_status(mirror):
    with pytest.raises(ProbeError, match=r"cannot download the paper's swav checkpoint lsun_horse\.pth: "
                                         r"http://127.0.0.1:\d+/models/swav_checkpoints/lsun_horse\.pth answered "
                                         "HTTP 404"):
        fetch.paper_checkpoint("swav", HORSE, progress=False)


def evil_archive(folder: Path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    """A datasets.tar.gz whose one member is `member`, after a harmless one."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "datasets.tar.gz", "w:gz") as tar:
        fine = tarfile.TarInfo("horse_21/readme.txt")
        fine.size = 2
        tar.addfile(fine, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


def link(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


@pytest.mark.parametrize("member, why", [
    (tarfile.TarInfo("../escaped.txt"), "climbs out of the folder with '..'"),
    (tarfile.TarInfo("horse_21/../../escaped.txt"), "climbs out of the folder with '..'"),
    (tarfile.TarInfo("/tmp/probe-escaped.txt"), "has an absolute path"),
    (link("horse_21/passwd", "/etc/passwd"), "links outside the folder"),
])
def test_archive_members_outside_the_folder_are_refused(mirror, tmp_path, monkeypatch, member, why):
    evil = tmp_path / "evil"
    evil_archive(evil, member)
    monkeypatch.setattr(mirror, "folder", evil)
    with pytest.raises(ProbeError, match=rf"datasets\.tar\.gz: member {member.name!r} {why}.*refusing to unpack"):
        fetch.dataset_root(HORSE, progress=False)
    cache = Path(os.environ["PROBE_CACHE"])
    assert not (cache / "escaped.txt").exists() and not (cache / "downloads" / "escaped.txt").exists()
    assert not Path("/tmp/probe-escaped.txt").exists()
    assert [p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")] == []  # no staging left


def test_an_archive_without_the_paper_split_is_named_and_deleted(mirror, tmp_path, monkeypatch):
    tree, other = tmp_path / "tree", tmp_path / "other"
    split(tree / "horse_21" / "real" / "train", 3, 21, np.random.default_rng(1))
    split(tree / "horse_21" / "real" / "test", 20, 21, np.random.default_rng(2))
    archive(other / "datasets.tar.gz", tree)
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"does not hold horse_21 as the paper has it \(.*horse_21/real/train holds "
                                         r"3 images, the paper's split 30\); the archive was deleted"):
        fetch.dataset_root(HORSE, progress=False)
    assert not fetch.download_path(fetch.DATASETS_ITEM).exists()


def test_two_first_uses_at_once_download_once(mirror, tmp_path):
    mirror.delay = 0.3  # long enough for the second process to arrive while the first downloads
    runs = [subprocess.Popen([str(PROBE), "download", "horse21", "--what", "data", "--quiet"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert mirror.gets("datasets.tar.gz") == [None]
    folder = Path(os.environ["PROBE_CACHE"]) / "datasets" / "horse_21"
    assert all(out.strip() == f"horse_21: {folder}" for out, _ in outputs)
    assert any("waiting for another probe process" in err for _, err in outputs)


def test_offline_is_one_line_naming_the_item_the_url_and_the_ways_out(tmp_path):
    result = probe("segment", "--dataset", "horse21", "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert ("cannot download the paper's six labelled datasets (datasets.tar.gz) from "
            "http://127.0.0.1:9/datasets.tar.gz") in lines[0]
    assert "pass --data-root DIR" in lines[0] and "probe download horse_21 --what data" in lines[0]
    assert not (tmp_path / "out").exists()


def test_segment_with_a_paper_mae_by_name(mirror, tmp_path):
    result = probe("segment", "--dataset", "ffhq34", "--backbone", "mae", "--model-flags", "--num_heads 4",
                   "--train-number", "2", "--test-number", "2", "--members", "1", "--threads", "1", "--quiet",
                   "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    cached = Path(os.environ["PROBE_CACHE"]) / "downloads" / "models/mae_checkpoints/ffhq.pth"
    assert metrics["options"]["backbone"]["checkpoint"] == str(cached)
    assert cached.read_bytes() == (FIXTURES / "mae_tiny32.pt").read_bytes()
    assert mirror.gets("models/mae_checkpoints/ffhq.pth") == [None]


def test_download_list_verify_and_cache_info(mirror, storage):
    before = probe("download", "--list")
    assert before.returncode == 0, before.stderr
    assert "datasets" in before.stdout and "not downloaded" in before.stdout and mirror.url in before.stdout
    fetched = probe("download", "horse21", "--what", "data,synthetic", "--quiet")
    assert fetched.returncode == 0, fetched.stderr
    cache = Path(os.environ["PROBE_CACHE"])
    assert fetched.stdout.splitlines() == [f"horse_21: {cache / 'datasets/horse_21'}",
                                           f"horse_21 synthetic: {cache / 'synthetic/horse_21'}"]
    fetch.paper_checkpoint("ddpm", HORSE, model_flags=str(FLAGS), progress=False)
    assert (cache / "synthetic/horse_21/horse_21/samples_256x256x3.npz").is_file()
    listed = probe("download", "--list", COLUMNS="250").stdout
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in listed.splitlines() if line.startswith("│")}
    assert rows["datasets"][0] == "unpacked: ffhq_34, horse_21"
    assert rows["ddpm/lsun_horse.pt"] == ["downloaded", f"{(storage / CHECKPOINT).stat().st_size / 1e6:.1f} MB",
                                          str(cache / "downloads" / CHECKPOINT)]
    assert rows["synthetic/horse_21"][0] == "unpacked" and rows["ddpm/lsun_cat.pt"][:2] == ["not downloaded", ""]
    assert "?" not in listed and listed.count("a size shows once the item is downloaded: the authors publish no "
                                              "file sizes") == 1  # said once, under the table

    info = probe("cache", "info", COLUMNS="250").stdout
    assert "horse_21" in info and "lsun_horse.pt" in info and "synthetic" in info

    ok = probe("download", "--verify")
    assert ok.returncode == 0 and "models/ddpm_checkpoints/lsun_horse.pt: ok" in ok.stdout
    checkpoint = cache / "downloads" / CHECKPOINT
    checkpoint.write_bytes(b"\0" + checkpoint.read_bytes()[1:])
    bad = probe("download", "--verify")
    assert bad.returncode == 1 and "lsun_horse.pt: SHA-256" in bad.stdout and "deleted" in bad.stdout
    assert not checkpoint.exists()
