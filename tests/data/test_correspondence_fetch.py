"""The correspondence benchmarks by name (spair71k, pfpascal): fetched from a loopback mirror holding archives built
here in the published archives' own layouts, resumed after a dropped connection, verified, unpacked safely, and (for
PF-PASCAL) rewritten in SPair-71k's layout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from probe.data import fetch
from probe.data.pairs import read_pairs
from probe.data.registry import PAIR_DATASETS, lookup, lookup_pairs
from probe.errors import ProbeError

PROBE = Path(sys.executable).with_name("probe")
SPAIR_PATH, PF_PATH, PF_PAIRS_PATH = (item.path for info in PAIR_DATASETS.values() for item in info.items)
NAN = float("nan")


def jpeg(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def spair_tree(root: Path) -> Path:
    """SPair-71k.tar.gz's content: SPair-71k/ with JPEGImages/<category>/, PairAnnotation/{trn,val,test}/ (SPair's
    pair names and fields), ImageAnnotation/ and Layout/."""
    top = root / "SPair-71k"
    for seed, (category, image, size) in enumerate([("cat", "2008_000001.jpg", (320, 240)),
                                                      ("cat", "2008_000002.jpg", (40, 56)),
                                                      ("bus", "2009_000003.jpg", (72, 40)),
                                                      ("bus", "2009_000004.jpg", (48, 48))]):
        jpeg(top / "JPEGImages" / category / image, *size, seed)
        (top / "ImageAnnotation" / category).mkdir(parents=True, exist_ok=True)
        (top / "ImageAnnotation" / category / image.replace(".jpg", ".json")).write_text("{}")
    for split, name, src, trg, category, variation in [
        ("test", "000001-2008_000001-2008_000002:cat", "2008_000001.jpg", "2008_000002.jpg", "cat", 1),
        ("test", "000002-2009_000003-2009_000004:bus", "2009_000003.jpg", "2009_000004.jpg", "bus", 2),
        ("trn", "000003-2008_000002-2008_000001:cat", "2008_000002.jpg", "2008_000001.jpg", "cat", 0),
    ]:
        pair = {"pair_id": int(name[:6]), "src_imname": src, "trg_imname": trg, "src_imsize": [320, 240, 3],
                "trg_imsize": [40, 56, 3], "src_bndbox": [3, 4, 50, 40], "trg_bndbox": [1, 2, 30, 50],
                "category": category, "viewpoint_variation": variation, "scale_variation": 0,
                "src_kps": [[10, 12], [30, 20]], "trg_kps": [[5, 6], [20, 30]], "kps_ids": [0, 3]}
        (top / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
        (top / "PairAnnotation" / split / f"{name}.json").write_text(json.dumps(pair))
    (top / "Layout/large").mkdir(parents=True)
    (top / "Layout/large/test.txt").write_text("000001-2008_000001-2008_000002:cat\n")
    return top


def tar_gz(target: Path, tree: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)


PF_IMAGES = {"2007_000001.jpg": (400, 300), "2007_000002.jpg": (50, 70), "2008_000003.jpg": (44, 44)}
# Annotations/<class>/<stem>.mat: kps with a row per keypoint of the class, NaN where not visible; bbox x1 y1 x2 y2.
PF_ANNOTATIONS = {
    ("aeroplane", "2007_000001"): ([[10, 11], [NAN, NAN], [30, 31], [40.5, 20.25]], [2, 3, 55, 38]),
    ("aeroplane", "2007_000002"): ([[12, 13], [22, 23], [NAN, NAN], [41, 60]], [1, 1, 49, 69]),
    ("tvmonitor", "2008_000003"): ([[5, 6], [7, 8]], [4, 4, 40, 40]),
    ("tvmonitor", "2007_000001"): ([[9, 9], [NAN, NAN]], [0, 0, 59, 39]),
}
PF_PAIRS = ("source_image,target_image,class,XA,YA,XB,YB\n"
            "PF-dataset-PASCAL/JPEGImages/2007_000001.jpg,PF-dataset-PASCAL/JPEGImages/2007_000002.jpg,1,"
            "10;40.5,11;20.25,12;41,13;60\n"
            "PF-dataset-PASCAL/JPEGImages/2008_000003.jpg,PF-dataset-PASCAL/JPEGImages/2007_000001.jpg,20,5,6,9,9\n")


def pf_zip(target: Path, annotations: dict = PF_ANNOTATIONS) -> None:
    """PF-dataset-PASCAL.zip's layout: PF-dataset-PASCAL/{JPEGImages,Annotations/<class>}/, parsePascalVOC.mat, and
    the __MACOSX/ folder the published zip carries."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zipped:
        for seed, (name, size) in enumerate(PF_IMAGES.items()):
            data = io.BytesIO()
            Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(
                data, format="JPEG")
            zipped.writestr(f"PF-dataset-PASCAL/JPEGImages/{name}", data.getvalue())
        for (category, stem), (kps, bbox) in annotations.items():
            data = io.BytesIO()
            savemat(data, {"kps": np.array(kps, dtype=np.float64), "bbox": np.array([bbox], dtype=np.int32)})
            zipped.writestr(f"PF-dataset-PASCAL/Annotations/{category}/{stem}.mat", data.getvalue())
        zipped.writestr("PF-dataset-PASCAL/parsePascalVOC.mat", b"")
        zipped.writestr("__MACOSX/PF-dataset-PASCAL/._JPEGImages", b"\0")


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """A mirror's folder: the benchmarks' files at their registry paths."""
    root = tmp_path_factory.mktemp("storage")
    tar_gz(root / SPAIR_PATH, spair_tree(tmp_path_factory.mktemp("spair")))
    pf_zip(root / PF_PATH)
    (root / PF_PAIRS_PATH).write_text(PF_PAIRS)
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROBE), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})


def test_the_registry_names_the_published_files(monkeypatch):
    spair, pascal = lookup_pairs("SPair-71k"), lookup_pairs("PF_PASCAL")
    assert (spair.name, spair.layout, pascal.name, pascal.layout) == ("spair71k", "spair", "pfpascal", "proposal_flow")
    monkeypatch.delenv("PROBE_MIRROR")
    assert [fetch.item_url(item) for item in (*spair.items, *pascal.items)] == [
        "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
        "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip",
        "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf_pascal.csv"]
    monkeypatch.setenv("PROBE_MIRROR", "http://127.0.0.1:9/copy")
    assert fetch.item_url(spair.items[0]) == "http://127.0.0.1:9/copy/correspondence/SPair-71k.tar.gz"
    with pytest.raises(ProbeError, match=r"unknown correspondence dataset 'willow'; known: spair71k, pfpascal"):
        lookup_pairs("willow")
    with pytest.raises(ProbeError, match=r"'spair71k' is a correspondence benchmark, for probe correspond; here use "
                                         r"one of bedroom_28"):
        lookup("spair71k")


def test_spair71k_resumes_a_dropped_download_and_is_the_archives_spair_root(mirror, storage, tmp_path):
    mirror.cut[SPAIR_PATH] = 65_536  # a whole read of the downloader's: what a dropped connection keeps
    folder = fetch.pairs_dataset(lookup_pairs("spair71k"), progress=False)
    cache = Path(os.environ["PROBE_CACHE"])
    assert folder == cache / "datasets" / "spair71k"
    assert mirror.gets(SPAIR_PATH) == [None, "bytes=65536-"]
    source = spair_tree(tmp_path / "expected")
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
        str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert sorted(p.name for p in (folder / "PairAnnotation/test").iterdir()) == [
        "000001-2008_000001-2008_000002:cat.json", "000002-2009_000003-2009_000004:bus.json"]
    archive = cache / "downloads" / SPAIR_PATH
    assert not archive.exists() and not fetch.partial_path(archive).exists()  # unpacked, then deleted
    assert fetch.read_record(archive)["sha256"] == digest(storage / SPAIR_PATH)
    assert [p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")] == ["spair71k"]
    assert fetch.pairs_dataset(lookup_pairs("spair71k"), progress=False) == folder
    assert len(mirror.requests) == 2  # the second use asked nothing


def test_pfpascal_is_rewritten_in_spairs_layout(mirror, storage):
    mirror.cut[PF_PATH] = 65_536
    folder = fetch.pairs_dataset(lookup_pairs("pfpascal"), progress=False)
    assert mirror.gets(PF_PATH) == [None, "bytes=65536-"] and mirror.gets(PF_PAIRS_PATH) == [None]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "JPEGImages/aeroplane/2007_000001.jpg", "JPEGImages/aeroplane/2007_000002.jpg",
        "JPEGImages/tvmonitor/2007_000001.jpg", "JPEGImages/tvmonitor/2008_000003.jpg",
        "PairAnnotation/test/0000-2007_000001-2007_000002-aeroplane.json",
        "PairAnnotation/test/0001-2008_000003-2007_000001-tvmonitor.json"]
    first = json.loads((folder / "PairAnnotation/test/0000-2007_000001-2007_000002-aeroplane.json").read_text())
    assert first == {"src_imname": "2007_000001.jpg", "trg_imname": "2007_000002.jpg", "src_imsize": [400, 300, 3],
                     "trg_imsize": [50, 70, 3], "src_kps": [[10.0, 11.0], [40.5, 20.25]],
                     "trg_kps": [[12.0, 13.0], [41.0, 60.0]], "kps_ids": [0, 3], "src_bndbox": [2.0, 3.0, 55.0, 38.0],
                     "trg_bndbox": [1.0, 1.0, 49.0, 69.0], "category": "aeroplane"}  # no viewpoint_variation
    second = json.loads((folder / "PairAnnotation/test/0001-2008_000003-2007_000001-tvmonitor.json").read_text())
    assert (second["src_kps"], second["trg_kps"], second["kps_ids"]) == ([[5.0, 6.0]], [[9.0, 9.0]], [0])
    with zipfile.ZipFile(storage / PF_PATH) as zipped:
        published = zipped.read("PF-dataset-PASCAL/JPEGImages/2007_000001.jpg")
    assert (folder / "JPEGImages/tvmonitor/2007_000001.jpg").read_bytes() == published
    downloads = Path(os.environ["PROBE_CACHE"]) / "downloads"
    assert not (downloads / PF_PATH).exists() and (downloads / PF_PAIRS_PATH).read_text() == PF_PAIRS


def test_download_by_name_and_the_list(mirror):
    before = probe("download", "--list")
    assert before.returncode == 0, before.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in before.stdout.splitlines() if line.startswith("│")}
    cache = Path(os.environ["PROBE_CACHE"])
    assert rows["spair71k"] == ["not downloaded", "", str(cache / "datasets/spair71k")]
    assert rows["pfpascal/test_pairs"] == ["not downloaded", "", str(cache / "downloads" / PF_PAIRS_PATH)]
    fetched = probe("download", "spair71k", "PF-PASCAL", "--quiet")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.splitlines() == [f"spair71k: {cache / 'datasets/spair71k'}",
                                           f"pfpascal: {cache / 'datasets/pfpascal'}"]
    after = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
             for line in probe("download", "--list").stdout.splitlines() if line.startswith("│")}
    assert after["spair71k"][0] == after["pfpascal"][0] == "unpacked"
    assert after["pfpascal/test_pairs"][:2] == ["downloaded", f"{len(PF_PAIRS)} B"]
    verified = probe("download", "--verify")
    assert verified.returncode == 0 and "spair71k: ok" in verified.stdout and "pfpascal: ok" in verified.stdout


def test_an_archive_without_spairs_layout_is_named_and_deleted(mirror, tmp_path, monkeypatch):
    other = tmp_path / "other"
    tree = tmp_path / "tree" / "SPair-71k"
    jpeg(tree / "JPEGImages/cat/a.jpg", 8, 8, 0)
    tar_gz(other / SPAIR_PATH, tree)
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"SPair-71k \(SPair-71k.tar.gz\) from http://127.0.0.1:\d+/correspondence/"
                                         r"SPair-71k.tar.gz: it holds no folder with JPEGImages and PairAnnotation"
                                         r".*the archive was deleted"):
        fetch.pairs_dataset(lookup_pairs("spair71k"), progress=False)
    cache = Path(os.environ["PROBE_CACHE"])
    archive = cache / "downloads" / SPAIR_PATH
    assert not archive.exists() and fetch.read_record(archive)["sha256"] is None  # a fixed archive may come
    assert [p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")] == []  # nothing staged


def test_a_zip_member_outside_the_folder_is_refused(mirror, tmp_path, monkeypatch):
    other = tmp_path / "other"
    pf_zip(other / PF_PATH)
    with zipfile.ZipFile(other / PF_PATH, "a") as zipped:
        zipped.writestr("PF-dataset-PASCAL/../../escaped.txt", b"x")
    (other / PF_PAIRS_PATH).write_text(PF_PAIRS)
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"member 'PF-dataset-PASCAL/\.\./\.\./escaped\.txt' climbs out of the "
                                         r"folder with '\.\.'; refusing to unpack it"):
        fetch.pairs_dataset(lookup_pairs("pfpascal"), progress=False)
    cache = Path(os.environ["PROBE_CACHE"])
    assert not list(cache.rglob("escaped.txt")) and not (cache / "datasets/pfpascal").exists()


def test_a_pair_whose_annotation_is_missing_is_named(mirror, tmp_path, monkeypatch):
    other = tmp_path / "other"
    pf_zip(other / PF_PATH, {key: value for key, value in PF_ANNOTATIONS.items() if key[0] != "tvmonitor"})
    (other / PF_PAIRS_PATH).write_text(PF_PAIRS)
    monkeypatch.setattr(mirror, "folder", other)
    with pytest.raises(ProbeError, match=r"PF-dataset-PASCAL.zip: PF-dataset-PASCAL/Annotations/tvmonitor/"
                                         r"2008_000003\.mat is missing: PF-PASCAL's pair list names 2008_000003\.jpg "
                                         r"as a tvmonitor.*the archive was deleted"):
        fetch.pairs_dataset(lookup_pairs("pfpascal"), progress=False)
    assert not (Path(os.environ["PROBE_CACHE"]) / "datasets/pfpascal").exists()


def test_offline_is_one_line_naming_the_url_and_the_ways_out():
    with pytest.raises(ProbeError, match=r"cannot download SPair-71k \(SPair-71k.tar.gz\) from http://127.0.0.1:9/"
                                         r"correspondence/SPair-71k.tar.gz \(.*\): pass --data DIR holding a copy in "
                                         r"SPair-71k's layout, or run `probe download spair71k`"):
        fetch.pairs_dataset(lookup_pairs("spair71k"), progress=False)


def test_probe_correspond_reads_a_benchmark_by_name(mirror, tmp_path):
    """`probe correspond --dataset pfpascal` downloads, rewrites and matches its pairs; --dataset with --data is one
    line."""
    out = tmp_path / "out"
    result = probe("correspond", "--dataset", "pfpascal", "--blocks", "8", "--steps", "50", "--threads", 1, "--quiet",
                   "--out", out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    cache = Path(os.environ["PROBE_CACHE"])
    assert metrics["data"] == str(cache / "datasets" / "pfpascal") and metrics["dataset"] == "pfpascal"
    assert metrics["pairs"] == len(read_pairs(cache / "datasets" / "pfpascal")) > 0
    both = probe("correspond", "--dataset", "pfpascal", "--data", tmp_path / "pairs", "--out", tmp_path / "other")
    assert both.returncode == 2 and "give --dataset or --data, not both" in both.stderr
    assert not (tmp_path / "other").exists()
