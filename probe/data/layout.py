"""Dataset folders: images with `<stem>.npy` label maps beside them, read as the authors read them.

Accepted layouts: `<root>/real/<split>/` (the authors' archive) or `<root>/<split>/`, with an optional
`<root>/classes.txt` holding one class name per line. Images become the model's (3, R, R) float32 input in [-1, 1]
after a PIL bilinear resize. Label maps become (H, W) int64: resized to R x R by OpenCV's nearest rule (the authors'
rule, kept for the paper's datasets), or with `keep_size` left at the image's own size (own data: the features are
upsampled to it and predictions come back at it). Images must be square unless `fit` says how to make them so:
"resize" (stretched to the model's square) or "pad" (padded at the bottom and right to a square of the longer side,
black; label maps padded with the ignore label).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from probe.data.registry import DatasetInfo
from probe.errors import ProbeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NUMBER = 20  # images per split when no number is given, on data other than the paper's and for probe grid
CLASSES_FILE = "classes.txt"
UNLABELLED = 255
FITS = ("resize", "pad")  # the ways to make a non-square image square (--fit); None refuses it


@dataclass
class LabeledImage:
    """One image as the model sees it, (3, R, R) float32 in [-1, 1], and its (H, W) int64 label map (None when
    unlabelled) at `size`, the size its predictions come back at.

    `shape`: that (H, W) when it is not the model input's (own data at its own size); `canvas`: the (H', W') that the
    model input stands for, when it is not `size` (an image padded by fit="pad": the labels and predictions are its
    top-left H x W). The feature maps are upsampled to the canvas. `picture`: the (H, W, 3) uint8 image at `size` for
    figures, when it is not the model input."""

    stem: str
    image: np.ndarray
    labels: np.ndarray | None
    shape: tuple[int, int] | None = None
    canvas: tuple[int, int] | None = None
    picture: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the label map and the predictions."""
        if self.labels is not None:
            return tuple(self.labels.shape)
        return self.shape or tuple(self.image.shape[1:])

    @property
    def grid(self) -> tuple[int, int]:
        """(H', W') the feature maps are upsampled to: the canvas, else `size`."""
        return self.canvas or self.size


def _layouts(root: Path, split: str) -> str:
    return f"{root / 'real' / split} or {root / split}, holding images with <same stem>.npy label maps"


def find_split_dir(root: Path, split: str) -> Path:
    """The folder of `split` under `root`: `<root>/real/<split>` if present, else `<root>/<split>`."""
    root = Path(root)
    if not root.is_dir():
        raise ProbeError(f"dataset folder {root} does not exist; expected {_layouts(root, split)}")
    for folder in (root / "real" / split, root / split):
        if folder.is_dir():
            return folder
    raise ProbeError(f"no {split!r} split in {root}; expected {_layouts(root, split)}")


def list_images(folder: Path) -> list[Path]:
    """The .png/.jpg/.jpeg files in `folder`, sorted by file name (the authors' order)."""
    paths = sorted((path for path in Path(folder).iterdir()
                    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES), key=lambda path: path.name)
    if not paths:
        raise ProbeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}; put the images there")
    stems = [path.stem for path in paths]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise ProbeError(f"images in {folder} share the stem {shared[0]!r}, so their label maps collide; "
                         "rename or remove one")
    return paths


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ProbeError(f"resolution {resolution!r} is not a positive integer; pass e.g. 256")


def check_fit(fit: str | None) -> None:
    if fit is not None and fit not in FITS:
        raise ProbeError(f"--fit {fit!r}: choose resize (stretch the image to the model's square) or pad (pad it to "
                         "a square)")


def _open_rgb(path: Path, fit: str | None = None) -> Image.Image:
    """The image as RGB; a non-square one only with a `fit`."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ProbeError(f"cannot read image {path} ({error}); replace or remove the file") from error
    if image.width != image.height and fit is None:
        raise ProbeError(f"image {path} is {image.width}x{image.height}; only square images are supported: crop it "
                         "to a square, or pass --fit resize (stretch it) or --fit pad (pad it)")
    return image


def scaled_pixels(image: Image.Image, resolution: int) -> np.ndarray:
    """PIL bilinear resize (skipped at the right size), then pixel / 255 * 2 - 1 in float32, (3, H, W)."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    unit = np.asarray(image, dtype=np.float32) / np.float32(255)
    return np.ascontiguousarray((unit * 2 - 1).transpose(2, 0, 1))


def nearest_source_indices(source_size: int, target_size: int) -> np.ndarray:
    """OpenCV INTER_NEAREST: target index i reads source index min(floor(i * src / dst), src - 1).

    The scale is formed as OpenCV forms it, 1 / (dst / src) in double precision.
    """
    scale = 1.0 / (target_size / source_size)
    return np.minimum(np.floor(np.arange(target_size) * scale).astype(np.intp), source_size - 1)


def resize_labels_nearest(labels: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a 2-D label map (of any shape) to (resolution, resolution) as cv2.resize(..., INTER_NEAREST) does."""
    rows = nearest_source_indices(labels.shape[0], resolution)
    cols = nearest_source_indices(labels.shape[1], resolution)
    return labels[np.ix_(rows, cols)]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise ProbeError(f"cannot read label map {path} ({error}); save it with numpy.save") from error


def _read_labels(path: Path, image_path: Path, shape: tuple[int, int], num_classes: int,
                 ignore_label: int) -> np.ndarray:
    """Load and check the label map of `image_path`, whose (height, width) is `shape`: uint8 as the authors cast it."""
    height, width = shape
    if not path.is_file():
        raise ProbeError(f"label map {path} missing for image {image_path}; put a {path.name} of shape "
                         f"({height}, {width}) beside it")
    raw = _load_npy(path)
    if raw.ndim != 2:
        raise ProbeError(f"label map {path} has shape {raw.shape}; expected a 2-D ({height}, {width}) map")
    if raw.shape != (height, width):
        raise ProbeError(f"label map {path} is {raw.shape[0]}x{raw.shape[1]} but its image {image_path.name} is "
                         f"{height}x{width} (rows x columns); save the map at the image's size")
    labels = raw.astype(np.uint8)
    bad = (labels != raw) | ((labels >= num_classes) & (labels != ignore_label))
    if bad.any():
        raise ProbeError(f"label map {path} holds values {np.unique(raw[bad])[:5].tolist()} outside "
                         f"0..{num_classes - 1} (ignore label {ignore_label}); fix the map or the number of classes")
    return labels


def prepared_image(stem: str, image: Image.Image, labels: np.ndarray | None, resolution: int, keep_size: bool,
                   fit: str | None, ignore_label: int = UNLABELLED) -> LabeledImage:
    """The model input at `resolution` and the label map: at `resolution` (OpenCV's nearest rule, the authors'),
    or with `keep_size` at the image's own size. A non-square image is made square by `fit`: "resize" stretches it
    in the one resize to the model's input (its label map, at `resolution`, by the nearest rule); "pad" pads it at
    the bottom and right to a square of its longer side, black (its label map with the ignore label)."""
    width, height = image.size
    side = max(width, height)
    padded = fit == "pad" and width != height
    square = image
    if padded:
        square = Image.new("RGB", (side, side))
        square.paste(image, (0, 0))
    pixels = scaled_pixels(square, resolution)
    if not keep_size:
        if labels is not None:
            if padded:
                labels = np.pad(labels, ((0, side - height), (0, side - width)), constant_values=ignore_label)
            labels = resize_labels_nearest(labels, resolution).astype(np.int64)
        return LabeledImage(stem, pixels, labels)
    size = (height, width)
    at_model_size = size == (resolution, resolution)
    return LabeledImage(stem, pixels, None if labels is None else labels.astype(np.int64),
                        shape=None if at_model_size else size, canvas=(side, side) if padded else None,
                        picture=None if at_model_size else np.asarray(image))


def load_labeled_split(root: Path, split: str, resolution: int, num_classes: int, ignore_label: int,
                       limit: int | None = None, at_most: int | None = None, *, keep_size: bool = False,
                       fit: str | None = None, option: str | None = None) -> list[LabeledImage]:
    """The first images of `split` by file name, each with its label map: `limit` of them (an error when the
    split holds fewer, naming `option`, the command's option or argument that gave `limit`), else up to `at_most`
    (a default that adapts to small splits), else all. `keep_size`: label maps at their images' own size (else at
    `resolution`); `fit`: how a non-square image is made square (else it is refused)."""
    _check_resolution(resolution)
    check_fit(fit)
    folder = find_split_dir(root, split)
    paths = list_images(folder)
    if limit is None and at_most is not None:
        limit = min(at_most, len(paths))
    if limit is not None:
        if limit < 1 or limit > len(paths):
            asked = f"{option} {limit}" if option and option.startswith("--") else \
                f"{option}={limit}" if option else f"{limit} images asked for"
            raise ProbeError(f"{asked}: {folder} holds {len(paths)} images; "
                             f"{f'give {option} ' if option else 'ask for '}1..{len(paths)}")
        paths = paths[:limit]
    return [load_labeled_image(path, resolution, num_classes, ignore_label, keep_size=keep_size, fit=fit)
            for path in paths]


def load_labeled_image(path: Path, resolution: int, num_classes: int, ignore_label: int, *, keep_size: bool = False,
                       fit: str | None = None) -> LabeledImage:
    """One image at `resolution` with its label map (`<stem>.npy` beside it), checked as `load_labeled_split` does."""
    image = _open_rgb(path, fit)
    labels = _read_labels(path.with_suffix(".npy"), path, (image.height, image.width), num_classes, ignore_label)
    return prepared_image(path.stem, image, labels, resolution, keep_size, fit, ignore_label)


def image_paths(paths_or_dir: Path | str | Iterable[Path | str]) -> list[Path]:
    """The image files of a folder (sorted by file name), one file, or a list of files; each must exist."""
    if isinstance(paths_or_dir, (str, Path)):
        single = Path(paths_or_dir)
        paths = list_images(single) if single.is_dir() else [single]
    else:
        paths = [Path(path) for path in paths_or_dir]
        if not paths:
            raise ProbeError("no image paths given; pass a folder of images or at least one image file")
    for path in paths:
        if not path.is_file():
            raise ProbeError(f"image {path} does not exist; pass an existing image file or folder")
    return paths


def native_size(paths_or_dir: Path | str | Iterable[Path | str]) -> int:
    """The size of the first image (images are square)."""
    return _open_rgb(image_paths(paths_or_dir)[0]).width


def load_images(paths_or_dir: Path | str | Iterable[Path | str], resolution: int, *, keep_size: bool = False,
                fit: str | None = None) -> list[LabeledImage]:
    """Unlabelled images from a folder (sorted by file name), one file, or a list of files, at `resolution`.
    `keep_size`: their predictions come back at each image's own size (LabeledImage.size), else at `resolution`;
    `fit`: how a non-square image is made square (else it is refused)."""
    _check_resolution(resolution)
    check_fit(fit)
    return [prepared_image(path.stem, _open_rgb(path, fit), None, resolution, keep_size, fit)
            for path in image_paths(paths_or_dir)]


def _read_classes_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_class_names(root: Path, num_classes: int, info: DatasetInfo | None = None) -> list[str]:
    """Names from `<root>/classes.txt`, else the registry's names of `info`, else class_0, class_1, ..."""
    path = Path(root) / CLASSES_FILE
    if path.is_file():
        names = _read_classes_file(path)
        if len(names) != num_classes:
            raise ProbeError(f"{path} lists {len(names)} class names but there are {num_classes} classes; "
                             f"write one name per line for labels 0..{num_classes - 1}")
        return names
    if info is not None:
        if info.num_classes != num_classes:
            raise ProbeError(f"dataset {info.name} has {info.num_classes} classes, not {num_classes}; "
                             f"pass {info.num_classes} or write {path}")
        return list(info.class_names)
    return [f"class_{label}" for label in range(num_classes)]


def infer_num_classes(root: Path) -> int:
    """The line count of `<root>/classes.txt`, else the largest train label + 1 (label 255 ignored)."""
    path = Path(root) / CLASSES_FILE
    if path.is_file():
        return len(_read_classes_file(path))
    folder = find_split_dir(root, "train")
    label_paths = sorted(folder.glob("*.npy"))
    if not label_paths:
        raise ProbeError(f"no .npy label maps in {folder}: a labelled split needs a <stem>.npy label map (class ids "
                         "0..K-1, 255 unlabelled) beside each image (docs/data.md)")
    highest = -1
    for label_path in label_paths:
        labels = _load_npy(label_path)
        labels = labels[labels != UNLABELLED]
        if labels.size:
            highest = max(highest, int(labels.max()))
    if highest < 0:
        raise ProbeError(f"every label in {folder} is {UNLABELLED} (unlabelled): label some pixels with class ids "
                         f"0..K-1 in its .npy maps")
    return highest + 1


def resolve_dataset_root(info: DatasetInfo, data_root: Path) -> Path:
    """`<data_root>/<info.name>`, or an error naming that path and the ways to get the dataset."""
    root = Path(data_root) / info.name
    if not root.is_dir():
        raise ProbeError(f"dataset {info.name} not found at {root}: drop --data-root to use (and on first use "
                         f"download) the cached copy, or unpack the authors' datasets.tar.gz into {data_root}")
    return root
