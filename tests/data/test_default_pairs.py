"""The embedded default's correspondence set: keypoints on the parts the generator drew, SPair-71k's layout, pairs of
different faces, same seed same files, cached under the cache root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.data.default_domain import (
    CLASSES, EYES, KEYPOINTS, SKIN, image_rng, render, render_with_landmarks,
)
from probe.data.default_pairs import PAIRS, default_pairs_folder, write_face_pairs
from probe.errors import ProbeError
from probe.utils.cache import cache_entries


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def pairs(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "PairAnnotation/test").glob("*.json"))}


def test_keypoints_lie_on_the_parts_drawn():
    """At 64 pixels (parts a few pixels wide) every visible keypoint's pixel carries its part's label, the pupils'
    pixels are the pupil's near-black, and rendering with landmarks draws the same portrait as render."""
    parts = np.array([part for _, part in KEYPOINTS])
    for index in range(30):
        image, label, marks = render_with_landmarks(image_rng(0, "pairs", index), 64)
        plain_image, plain_label = render(image_rng(0, "pairs", index), 64)
        assert np.array_equal(image, plain_image) and np.array_equal(label, plain_label)
        assert marks.points.shape == (len(KEYPOINTS), 2) and marks.visible[:10].all()  # only an ear may hide
        x, y = np.round(marks.points).astype(int).T
        assert np.array_equal(label[y, x][marks.visible], parts[marks.visible]), (index, label[y, x], parts)
        assert image[y[:2], x[:2]].max() <= 60  # pupil colour 0.05 * 255, lit and noisy
        assert image[y[2:4], x[2:4]].astype(int).sum(axis=1).min() > image[y[:2], x[:2]].astype(int).sum(axis=1).max()
        x1, y1, x2, y2 = marks.face_box
        face = np.isin(label, [SKIN, EYES, CLASSES.index("eyebrows"), CLASSES.index("nose"), CLASSES.index("mouth")])
        rows, cols = np.nonzero(face)
        assert abs(x1 - cols.min()) <= 1 and abs(x2 - cols.max()) <= 1 and abs(y1 - rows.min()) <= 1
        assert abs(y2 - rows.max()) <= 1  # the sub-sample box agrees with the label map's to a pixel
        assert (x1 <= marks.points[:10, 0]).all() and (marks.points[:10, 0] <= x2).all()


def test_the_written_set_is_spairs_layout_of_different_faces(tmp_path):
    out = write_face_pairs(tmp_path / "pairs", pairs=6, size=32, seed=3, progress=False)
    assert sorted(p.name for p in (out / "JPEGImages/face").iterdir()) == [f"{i:03d}.png" for i in range(6)]
    found = pairs(out)
    assert list(found) == [f"{k:03d}-{k:03d}-{(k + 1) % 6:03d}" for k in range(6)]
    assert json.loads((out / "keypoints.json").read_text())["keypoints"] == [name for name, _ in KEYPOINTS]
    faces = out / "JPEGImages/face"
    images = {name: np.asarray(Image.open(faces / name)) for name in os.listdir(faces)}
    assert len({image.tobytes() for image in images.values()}) == 6  # six different faces
    for stem, pair in found.items():
        assert pair["src_imname"] != pair["trg_imname"] and pair["category"] == "face"
        assert pair["viewpoint_variation"] == 0 and pair["src_imsize"] == pair["trg_imsize"] == [32, 32, 3]
        src = render_with_landmarks(image_rng(3, "pairs", int(stem.split("-")[1])), 32)
        trg = render_with_landmarks(image_rng(3, "pairs", int(stem.split("-")[2])), 32)
        assert np.array_equal(images[pair["src_imname"]], src[0]) and np.array_equal(images[pair["trg_imname"]], trg[0])
        shown = [k for k in range(len(KEYPOINTS)) if src[2].visible[k] and trg[2].visible[k]]
        assert pair["kps_ids"] == shown and len(shown) >= 10
        assert pair["src_kps"] == [[round(float(v), 2) for v in point] for point in src[2].points[shown]]
        assert pair["trg_kps"] == [[round(float(v), 2) for v in point] for point in trg[2].points[shown]]
        assert pair["src_bndbox"] == list(src[2].face_box) and pair["trg_bndbox"] == list(trg[2].face_box)
        pupil = np.round(pair["trg_kps"][0]).astype(int)  # kps_ids[0] is the left pupil
        eye = images[pair["trg_imname"]][trg[1] == EYES].astype(int).sum(axis=1)
        assert images[pair["trg_imname"]][pupil[1], pupil[0]].astype(int).sum() <= np.percentile(eye, 25)


def test_same_seed_same_files_and_another_seed_other_faces(tmp_path):
    first = files(write_face_pairs(tmp_path / "a", pairs=4, seed=1, progress=False))
    again = files(write_face_pairs(tmp_path / "b", pairs=4, seed=1, progress=False))
    other = files(write_face_pairs(tmp_path / "c", pairs=4, seed=2, progress=False))
    assert first == again and len(first) == 4 + 4 + 1
    assert all(first[name] != other[name] for name in first if name.endswith(".png"))
    domain = {render(image_rng(1, split, 0), 32)[0].tobytes() for split in ("pool", "train", "test")}
    assert np.asarray(Image.open(tmp_path / "a/JPEGImages/face/000.png")).tobytes() not in domain


def test_the_default_set_is_cached_under_the_cache_root(tmp_path):
    folder = default_pairs_folder(progress=False)
    assert folder == Path(os.environ["PROBE_CACHE"]) / "default-domain-v1-pairs20-s32-seed0"
    assert len(pairs(folder)) == PAIRS and len(list((folder / "JPEGImages/face").glob("*.png"))) == PAIRS
    stamp = (folder / "keypoints.json").stat().st_mtime_ns
    assert default_pairs_folder(progress=False) == folder and (folder / "keypoints.json").stat().st_mtime_ns == stamp
    assert files(folder) == files(write_face_pairs(tmp_path / "fresh", progress=False))
    entries = cache_entries()
    assert entries.loc[entries["name"] == folder.name, "kind"].tolist() == ["default domain"]
    elsewhere = default_pairs_folder(tmp_path / "other-cache", size=16, seed=1, progress=False)
    assert elsewhere == tmp_path / "other-cache" / "default-domain-v1-pairs20-s16-seed1"
    assert json.loads((elsewhere / "keypoints.json").read_text())["size"] == 16


@pytest.mark.parametrize("options, message", [
    (dict(pairs=1), "pairs=1: a pair needs two different faces"),
    (dict(size=4), "size=4 is too small"),
    (dict(seed=-1), "seed=-1 is negative"),
])
def test_bad_settings_are_one_line(tmp_path, options, message):
    with pytest.raises(ProbeError, match=message):
        write_face_pairs(tmp_path / "x", progress=False, **options)
