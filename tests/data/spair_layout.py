"""A test-only writer of small folders in SPair-71k's layout (probe.data.pairs): images of any size, keypoints
inside each image's bounding box, one JSON per pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(folder: Path, category: str, name: str, picture: np.ndarray) -> Path:
    path = folder / "JPEGImages" / category / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)  # .png names keep the pixels exact
    return path


def random_picture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random picture: coarse noise upsampled, so that features vary across it."""
    coarse = rng.integers(0, 256, (max(2, height // 6), max(2, width // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def write_pair(folder: Path, name: str, category: str, source: str, target: str, source_size: tuple[int, int],
               target_size: tuple[int, int], source_points, target_points, source_box, target_box,
               viewpoint: int | None = None, changes: dict | None = None) -> Path:
    """One annotation file; `changes` replace (or, with value None, drop) its keys."""
    data = {"src_imname": source, "trg_imname": target, "src_imsize": [*source_size, 3],
            "trg_imsize": [*target_size, 3], "src_kps": np.asarray(source_points).tolist(),
            "trg_kps": np.asarray(target_points).tolist(), "src_bndbox": list(source_box),
            "trg_bndbox": list(target_box), "category": category}
    if viewpoint is not None:
        data["viewpoint_variation"] = viewpoint
    data.update(changes or {})
    data = {key: value for key, value in data.items() if value is not None}
    path = folder / "PairAnnotation" / "test" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def box_and_points(rng: np.random.Generator, width: int, height: int, count: int) -> tuple[list[int], np.ndarray]:
    """A bounding box inside a width x height image and `count` integer keypoints inside it."""
    x1, y1 = int(rng.integers(0, width // 4)), int(rng.integers(0, height // 4))
    x2, y2 = int(rng.integers(3 * width // 4, width)), int(rng.integers(3 * height // 4, height))
    points = np.stack([rng.integers(x1, x2 + 1, count), rng.integers(y1, y2 + 1, count)], axis=1)
    return [x1, y1, x2, y2], points


def write_spair_folder(folder: Path, categories: tuple[str, ...] = ("cat", "dog"), pairs_per_category: int = 2,
                       keypoints: int = 5, seed: int = 0) -> Path:
    """Random pictures of assorted sizes (two per pair, named per category) and random keypoints; viewpoints cycle
    through 0, 1, 2."""
    rng = np.random.default_rng(seed)
    count = 0
    for category in categories:
        for index in range(pairs_per_category):
            sizes = [(int(rng.integers(40, 72)), int(rng.integers(32, 64))) for _ in range(2)]
            names = [f"{category}_{index}_{side}.png" for side in ("a", "b")]
            boxes, points = [], []
            for name, (width, height) in zip(names, sizes):
                write_image(folder, category, name, random_picture(rng, width, height))
                box, kps = box_and_points(rng, width, height, keypoints)
                boxes.append(box)
                points.append(kps)
            write_pair(folder, f"{count:06d}-{names[0][:-4]}-{names[1][:-4]}:{category}", category, names[0],
                       names[1], sizes[0], sizes[1], points[0], points[1], boxes[0], boxes[1], viewpoint=count % 3)
            count += 1
    return folder
