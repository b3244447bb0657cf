"""Keypoint pairs for `probe correspond`, read from a folder in SPair-71k's own layout:

    <folder>/JPEGImages/<category>/<image name>          the images, any size and aspect ratio
    <folder>/PairAnnotation/test/<pair name>.json       one pair each

A pair's JSON holds `src_imname`, `trg_imname` (file names inside `JPEGImages/<category>/`), `src_imsize` and
`trg_imsize` ([width, height, 3]), `src_kps` and `trg_kps` (the same number of [x, y] points in the images' own
pixels, from 0 to the width and height, keypoint i of the source matching keypoint i of the target), `src_bndbox`
and `trg_bndbox` ([x1, y1, x2, y2]) and `category`; `viewpoint_variation` (0, 1 or 2) is optional. Other keys are
ignored.

`read_pairs(folder)` is the whole interface: every source of pairs (a download, the embedded default's set, a test's
folder) writes this layout. A bad annotation or a missing image is one ProbeError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from probe.data.layout import prepared_image
from probe.errors import ProbeError

IMAGES = "JPEGImages"
ANNOTATIONS = Path("PairAnnotation") / "test"
LAYOUT = (f"{IMAGES}/<category>/<image> and {ANNOTATIONS.as_posix()}/<pair>.json (SPair-71k's layout, "
          "docs/experiments/correspond.md)")
VIEWPOINTS = (0, 1, 2)  # SPair's viewpoint_variation: small, medium, large


@dataclass(frozen=True)
class Pair:
    """One annotated pair. Points are (K, 2) float64 arrays of (x, y) in each image's own pixels; boxes are
    (x1, y1, x2, y2); sizes are (width, height)."""

    name: str  # the annotation file's name without .json
    category: str
    source: Path
    target: Path
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    source_points: np.ndarray
    target_points: np.ndarray
    source_box: tuple[float, float, float, float]
    target_box: tuple[float, float, float, float]
    viewpoint: int | None = None

    @property
    def images(self) -> tuple[Path, Path]:
        return self.source, self.target


def read_pairs(folder: Path | str) -> list[Pair]:
    """Every pair of `folder` (SPair-71k's layout, see the module docstring), sorted by name; each image is checked
    to exist and to have the size its annotations give."""
    folder = Path(folder)
    annotations = folder / ANNOTATIONS
    if not annotations.is_dir():
        raise ProbeError(f"{annotations} is not a folder: --data needs {LAYOUT}")
    paths = sorted(annotations.glob("*.json"))
    if not paths:
        raise ProbeError(f"no pair annotations (*.json) in {annotations}: write one JSON per pair ({LAYOUT})")
    sizes: dict[Path, tuple[int, int]] = {}
    return [read_pair(path, folder, sizes) for path in paths]


def read_pair(path: Path, folder: Path, sizes: dict[Path, tuple[int, int]] | None = None) -> Pair:
    """One annotation file of `folder`, checked; `sizes` remembers the images' sizes already read."""
    sizes = {} if sizes is None else sizes
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProbeError(f"cannot read pair annotation {path} ({error}); write it as JSON") from None
    if not isinstance(data, dict):
        raise ProbeError(f"pair annotation {path} holds a {type(data).__name__}; write one JSON object per pair")

    def field(key: str):
        if key not in data:
            raise ProbeError(f"pair annotation {path} lacks {key!r}; {LAYOUT} names the keys a pair needs")
        return data[key]

    def numbers(key: str, shape: tuple) -> np.ndarray:
        value = field(key)
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        expected = " x ".join("K" if n is None else str(n) for n in shape)
        if array is None or array.ndim != len(shape) or any(n is not None and n != m for n, m in
                                                            zip(shape, array.shape)) or not np.isfinite(array).all():
            raise ProbeError(f"pair annotation {path}: {key} is {json.dumps(value)[:60]}; give {expected} numbers")
        return array

    category = field("category")
    if not isinstance(category, str) or not category or "/" in category:
        raise ProbeError(f"pair annotation {path}: category {category!r} is not a folder name under {IMAGES}/")
    images, dims, points, boxes = [], [], [], []
    for side in ("src", "trg"):
        name = field(f"{side}_imname")
        if not isinstance(name, str) or not name or "/" in name:
            raise ProbeError(f"pair annotation {path}: {side}_imname {name!r} is not a file name")
        image = folder / IMAGES / category / name
        size = numbers(f"{side}_imsize", (3,))
        if (size[:2] < 1).any() or (size != np.round(size)).any():
            raise ProbeError(f"pair annotation {path}: {side}_imsize {size.tolist()} is not [width, height, 3]")
        width, height = int(size[0]), int(size[1])
        actual = image_size(image, path, sizes)
        if actual != (width, height):
            raise ProbeError(f"pair annotation {path}: {side}_imsize says {width}x{height} but {image} is "
                             f"{actual[0]}x{actual[1]}; fix the annotation or the image")
        kps = numbers(f"{side}_kps", (None, 2))
        outside = (kps[:, 0] < 0) | (kps[:, 0] > width) | (kps[:, 1] < 0) | (kps[:, 1] > height)
        if outside.any():  # on the right or bottom edge is taken (1-based annotations), beyond it is a mistake
            raise ProbeError(f"pair annotation {path}: {side}_kps {kps[outside][0].tolist()} lies outside the "
                             f"{width}x{height} image; keypoints are [x, y] pixels inside it")
        box = numbers(f"{side}_bndbox", (4,))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ProbeError(f"pair annotation {path}: {side}_bndbox {box.tolist()} is not [x1, y1, x2, y2] with "
                             "x2 > x1 and y2 > y1")
        images.append(image)
        dims.append((width, height))
        points.append(kps)
        boxes.append(tuple(float(v) for v in box))
    if len(points[0]) != len(points[1]) or not len(points[0]):
        raise ProbeError(f"pair annotation {path}: {len(points[0])} src_kps but {len(points[1])} trg_kps; give the "
                         "same number (at least one), keypoint i of the source matching keypoint i of the target")
    viewpoint = data.get("viewpoint_variation")
    if viewpoint is not None and viewpoint not in VIEWPOINTS:
        raise ProbeError(f"pair annotation {path}: viewpoint_variation {viewpoint!r} is not one of 0, 1, 2 "
                         "(or leave it out)")
    return Pair(path.stem, category, images[0], images[1], dims[0], dims[1], points[0], points[1], boxes[0],
                boxes[1], None if viewpoint is None else int(viewpoint))


def check_per_category(per_category: int | None) -> None:
    if per_category is not None and per_category < 1:
        raise ProbeError(f"--pairs {per_category}: give 1 or more pairs per category")


def select_pairs(pairs: Sequence[Pair], per_category: int | None) -> list[Pair]:
    """The first `per_category` pairs of each category, in the order given (None: all)."""
    check_per_category(per_category)
    taken: dict[str, int] = {}
    chosen = []
    for pair in pairs:
        taken[pair.category] = taken.get(pair.category, 0) + 1
        if per_category is None or taken[pair.category] <= per_category:
            chosen.append(pair)
    return chosen


def image_size(image: Path, annotation: Path, sizes: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of an image named by `annotation` (its header only), remembered in `sizes`."""
    if image not in sizes:
        if not image.is_file():
            raise ProbeError(f"image {image} (named by {annotation}) does not exist; put it there or remove the pair")
        try:
            with Image.open(image) as opened:
                sizes[image] = opened.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ProbeError(f"cannot read image {image} ({error}); replace it or remove its pairs") from None
    return sizes[image]


def pair_images(pairs: Sequence[Pair]) -> list[Path]:
    """The distinct images of `pairs`, in order of first appearance."""
    return list(dict.fromkeys(path for pair in pairs for path in pair.images))


def image_stem(path: Path) -> str:
    """An image's name as the activation store and the noise policies see it: `<category>-<stem>`."""
    return f"{path.parent.name}-{path.stem}"


class PairImages(Sequence):
    """The images of pairs as a backbone sees them: each stretched to `size` x `size` (as DIFT resizes to 768 x 768),
    prepared when read, so that the store and the plan go through any number of them without holding them all."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path = self.paths[index]
        return prepared_image(image_stem(path), open_picture(path), None, self.size, keep_size=False, fit="resize")


def open_picture(path: Path) -> Image.Image:
    """An image of a pair as RGB, at its own size."""
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ProbeError(f"cannot read image {path} ({error}); replace it or remove its pairs") from None
