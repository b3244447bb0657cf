"""The default domain: determinism, layout, part areas, colour ambiguity and atomic writes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import probe.data.default_domain as domain
from probe.data.default_domain import (
    CLASSES, PALETTE, default_domain_dir, image_rng, render, write_default_domain,
)
from probe.errors import ProbeError
from probe.utils.outputs import MARKER

SMALL = dict(pool=8, train=3, test=5, progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the output marker's (it records the time of writing)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != MARKER}


@functools.lru_cache(maxsize=1)
def _sample(count: int = 200, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`count` rendered test-split images and label maps, stacked."""
    pairs = [render(image_rng(0, "test", index), size) for index in range(count)]
    return np.stack([image for image, _ in pairs]), np.stack([label for _, label in pairs])


def test_classes_and_palette():
    assert CLASSES == ["background", "skin", "hair", "eyebrows", "eyes", "nose", "mouth", "ears", "neck",
                       "clothing"]
    assert PALETTE.shape == (10, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(colour) for colour in PALETTE.tolist()}) == 10


def test_render_is_deterministic_and_well_formed():
    image, label = render(np.random.default_rng(3), 48)
    again_image, again_label = render(np.random.default_rng(3), 48)
    other_image, _ = render(np.random.default_rng(4), 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert label.shape == (48, 48) and label.dtype == np.uint8 and label.max() < len(CLASSES)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert np.abs(image.astype(int) - other_image.astype(int)).mean() > 10
    assert image.std() > 20  # a picture, not a flat fill


def test_written_layout_matches_renders(tmp_path):
    out = write_default_domain(tmp_path / "faces", seed=2, **SMALL)
    assert out == tmp_path / "faces"
    assert sorted(path.name for path in (out / "pool").iterdir()) == [f"{i:05d}.png" for i in range(8)]
    assert sorted(path.name for path in (out / "real" / "test").iterdir()) == sorted(
        [f"{i:03d}.png" for i in range(5)] + [f"{i:03d}.npy" for i in range(5)])
    assert (out / "classes.txt").read_text().splitlines() == CLASSES
    assert np.array_equal(np.array(json.loads((out / "palette.json").read_text())), PALETTE)
    info = json.loads((out / "domain.json").read_text())
    assert info == {"version": 1, "size": 32, "seed": 2, "counts": {"pool": 8, "train": 3, "test": 5}}
    for split, index in [("train", 2), ("test", 4)]:
        label = np.load(out / "real" / split / f"{index:03d}.npy")
        image = np.asarray(Image.open(out / "real" / split / f"{index:03d}.png"))
        expected_image, expected_label = render(image_rng(2, split, index), 32)
        assert label.dtype == np.uint8 and label.shape == (32, 32) and label.max() < len(CLASSES)
        assert np.array_equal(label, expected_label) and np.array_equal(image, expected_image)
    pool_image = np.asarray(Image.open(out / "pool" / "00007.png"))
    assert np.array_equal(pool_image, render(image_rng(2, "pool", 7), 32)[0])


def test_same_seed_same_bytes_and_independent_splits(tmp_path):
    first = _files(write_default_domain(tmp_path / "a", seed=5, **SMALL))
    second = _files(write_default_domain(tmp_path / "b", seed=5, **SMALL))
    other = _files(write_default_domain(tmp_path / "c", seed=6, **SMALL))
    assert first == second
    images = [name for name in first if name.endswith(".png")]
    assert len(images) == 16 and all(first[name] != other[name] for name in images)
    assert len({first["pool/00000.png"], first["real/train/000.png"], first["real/test/000.png"]}) == 3


def test_every_class_is_present_in_most_labelled_images():
    _, labels = _sample()
    present = np.stack([(labels == k).any(axis=(1, 2)) for k in range(len(CLASSES))], axis=1)
    assert present.mean(axis=0).min() >= 0.95, dict(zip(CLASSES, present.mean(axis=0)))


def test_part_areas_at_32_pixels():
    _, labels = _sample()
    pixels = {name: (labels == k).sum(axis=(1, 2)).mean() for k, name in enumerate(CLASSES)}
    for name, (low, high) in {"eyes": (15, 30), "eyebrows": (8, 16), "nose": (5, 10), "mouth": (10, 20),
                              "ears": (15, 30)}.items():
        assert low <= pixels[name] <= high, (name, pixels[name])
    for name in ["eyes", "eyebrows", "nose", "mouth"]:
        assert pixels[name] / 1024 < 0.05, name
    for name in ["background", "skin", "hair", "clothing"]:
        assert pixels[name] / 1024 > 0.10, name


def test_colour_does_not_name_a_class():
    images, labels = _sample()
    index = {name: k for k, name in enumerate(CLASSES)}

    def mean_colour(i: int, name: str) -> np.ndarray:
        return images[i][labels[i] == index[name]].astype(float).mean(axis=0)

    with_parts = [i for i in range(len(images)) if all((labels[i] == index[n]).any() for n in CLASSES)]
    brow_to_hair = np.array([np.linalg.norm(mean_colour(i, "eyebrows") - mean_colour(i, "hair")) for i in with_parts])
    brow_to_skin = np.array([np.linalg.norm(mean_colour(i, "eyebrows") - mean_colour(i, "skin")) for i in with_parts])
    ear_to_skin = np.array([np.linalg.norm(mean_colour(i, "ears") - mean_colour(i, "skin")) for i in with_parts])
    assert np.median(brow_to_hair) < 25 and (brow_to_hair < brow_to_skin).mean() > 0.8
    assert np.median(ear_to_skin) < 20
    backgrounds = np.array([mean_colour(i, "background") for i in with_parts])
    clothes = np.array([mean_colour(i, "clothing") for i in with_parts])
    assert np.linalg.norm(backgrounds.mean(axis=0) - clothes.mean(axis=0)) < 25
    assert abs(backgrounds.std(axis=0).mean() - clothes.std(axis=0).mean()) < 15


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_render(rng, size):
        calls.append(size)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return render(rng, size)

    monkeypatch.setattr(domain, "render", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        write_default_domain(tmp_path / "faces", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_and_existing_folder_are_refused(tmp_path):
    with pytest.raises(ProbeError, match="size=4"):
        write_default_domain(tmp_path / "tiny", size=4, **SMALL)
    with pytest.raises(ProbeError, match="pool=-1"):
        write_default_domain(tmp_path / "neg", pool=-1, progress=False)
    assert list(tmp_path.iterdir()) == []
    write_default_domain(tmp_path / "faces", **SMALL)
    before = _files(tmp_path / "faces")
    with pytest.raises(ProbeError, match="previous result of `probe data default`: pass --overwrite"):
        write_default_domain(tmp_path / "faces", **SMALL)
    assert [path.name for path in tmp_path.iterdir()] == ["faces"] and _files(tmp_path / "faces") == before
    write_default_domain(tmp_path / "faces", **SMALL, overwrite=True)
    assert [path.name for path in tmp_path.iterdir()] == ["faces"] and _files(tmp_path / "faces") == before


def test_default_domain_dir_writes_once_then_reuses(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    writes = []
    write_contents = domain._write_contents

    def counted(folder, size, counts, seed, progress):
        assert counts["pool"] == 0  # the cached default holds only the labelled sets
        writes.append(folder)
        write_contents(folder, size, counts, seed, progress)

    monkeypatch.setattr(domain, "_write_contents", counted)
    folder = default_domain_dir(size=16, seed=3)
    assert folder == tmp_path / "cache" / "default-domain-v1-s16-seed3"
    before = _files(folder)
    assert json.loads(before["domain.json"])["size"] == 16
    assert default_domain_dir(size=16, seed=3) == folder
    assert len(writes) == 1 and _files(folder) == before
    assert sorted(path.name for path in folder.parent.iterdir()) == [folder.name]

    # a folder left half-written (no domain.json) is rebuilt, with a warning, without asking the user
    (folder / "domain.json").unlink()
    (folder / "real" / "train" / "000.png").write_bytes(b"half")
    assert default_domain_dir(size=16, seed=3) == folder
    assert _files(folder) == before and len(writes) == 2
    assert "incomplete; rebuilding it" in caplog.text
    assert sorted(path.name for path in folder.parent.iterdir()) == [folder.name]


def test_windowed_parts_match_whole_frame_drawing(monkeypatch):
    windowed = [render(image_rng(1, "pool", index), 32) for index in range(60)]

    def whole_frame(self, u, v, half):
        return (slice(None), slice(None)), self.u, self.v

    monkeypatch.setattr(domain._HeadFrame, "crop", whole_frame)
    for index, (image, label) in enumerate(windowed):
        whole_image, whole_label = render(image_rng(1, "pool", index), 32)
        assert np.array_equal(image, whole_image) and np.array_equal(label, whole_label), index
