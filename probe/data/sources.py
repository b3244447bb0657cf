"""Where a command's images, labels and checkpoint come from: the embedded default, a paper dataset (from
--data-root, else the cache, downloaded on first use), a folder, a paper checkpoint or a hub name.

This is the one place where names become local paths (probe.data.fetch, probe.data.hub): `open_source` resolves the
data options, `backbone_spec` the checkpoint; everything after them only ever sees paths."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from probe.backbones.spec import BackboneSpec, check_revision, is_guided_diffusion
from probe.data import default_domain
from probe.data.fetch import dataset_root, paper_checkpoint
from probe.data.hub import hub_snapshot, is_repo_id
from probe.data.layout import (
    CLASSES_FILE,
    LabeledImage,
    check_fit,
    find_split_dir,
    infer_num_classes,
    list_images,
    load_labeled_split,
    read_class_names,
    resolve_dataset_root,
)
from probe.data.registry import DatasetInfo, lookup, publishes_checkpoint
from probe.errors import ProbeError

log = logging.getLogger("probe")

PAPER_IMAGE_SIZE = 256
DEFAULT_MODEL_SIZE = 32  # the shipped default DDPM's image size (probe/weights/default_ddpm.json)


@dataclass
class Source:
    """A labelled dataset. `info` is set for the paper's datasets (their checkpoint and model flags).

    `keep_size`: label maps stay at their images' own size, so training pixels, predictions and scores are at the
    user's size (own data: --data and the embedded default); False for the paper's datasets, whose label maps are
    resized to the model's input size by OpenCV's nearest rule, as the authors do. `fit`: how non-square images are
    made square ("resize" or "pad"; None refuses them)."""

    name: str
    root: Path
    class_names: list[str]
    ignore_label: int
    palette: np.ndarray
    native_size: int
    info: DatasetInfo | None = None
    keep_size: bool = True
    fit: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def inputs(self) -> list[Path]:
        """The folders this source reads (an output folder must not hold them)."""
        return [self.root]

    def split(self, split: str, resolution: int, limit: int | None, at_most: int | None = None,
              root: Path | None = None, keep_size: bool | None = None, option: str | None = None
              ) -> list[LabeledImage]:
        """The first `limit` images of a split (an error when it holds fewer), else up to `at_most`, else all.
        `root`: read the split from another folder labelled with this source's classes (`check_training_data`).
        The model input is at `resolution`; the label maps at the images' own size or at `resolution` as the
        source's `keep_size` (or the given one) says. `option`: what gave `limit`, named when the split is short."""
        return load_labeled_split(root or self.root, split, resolution, self.num_classes, self.ignore_label, limit,
                                  at_most, keep_size=self.keep_size if keep_size is None else keep_size, fit=self.fit,
                                  option=option)

    def check_training_data(self, folder: Path) -> None:
        """Refuse a --train-data folder (e.g. one `probe synthesize` wrote) that cannot train for these classes:
        no train split, or a classes.txt naming other classes. Label values are checked as the images load."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ProbeError(f"--train-data {folder} is not a folder: pass a dataset folder with train/ "
                             "(e.g. the output of probe synthesize)")
        find_split_dir(folder, "train")
        if (folder / CLASSES_FILE).is_file():
            names = read_class_names(folder, infer_num_classes(folder))
            if names != self.class_names:
                raise ProbeError(f"--train-data {folder}: its {CLASSES_FILE} lists {len(names)} classes "
                                 f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) but the test data "
                                 f"{self.name} has {self.num_classes} ({', '.join(self.class_names[:4])}"
                                 f"{', ...' if self.num_classes > 4 else ''}); train on data labelled with the test "
                                 "data's classes")


def class_palette(n: int, given=None) -> np.ndarray:
    """A colour per class for `n` classes: the first `n` of `given` when it has that many, else drawn from a fixed
    seed (the same colours every run)."""
    if given is not None and len(given) >= n:
        return np.asarray(given[:n], dtype=np.uint8)
    rng = np.random.default_rng(0)
    return rng.integers(40, 256, size=(n, 3)).astype(np.uint8)


def _first_image_size(root: Path) -> int:
    """The first train image's side (its longer side when it is not square)."""
    with Image.open(list_images(find_split_dir(root, "train"))[0]) as image:
        return max(image.width, image.height)


def open_source(dataset: str | None = None, data_root: Path | None = None, data: Path | None = None, *,
                progress: bool = True, fit: str | None = None) -> Source:
    """Resolve the data options: none (embedded default), --dataset NAME [--data-root DIR] (without it, the cached
    copy, downloaded on first use), or --data DIR. `fit` (--fit): how non-square images are made square."""
    check_fit(fit)
    if dataset and data:
        raise ProbeError("--dataset and --data both given: use --dataset NAME [--data-root DIR], or --data DIR")
    if dataset:
        info: DatasetInfo = lookup(dataset)
        if data_root is None:
            data_root = dataset_root(info, progress=progress)
        root = resolve_dataset_root(info, Path(data_root))
        return Source(info.name, root, read_class_names(root, info.num_classes, info), info.ignore_label,
                      class_palette(info.num_classes, info.palette), PAPER_IMAGE_SIZE, info, keep_size=False, fit=fit)
    if data:
        root = Path(data)
        if not root.is_dir():
            raise ProbeError(f"--data {root} is not a folder: pass a dataset folder with train/ and test/ (or real/train, real/test)")
        classes = read_class_names(root, infer_num_classes(root))
        palette_file = root / "palette.json"
        given = json.loads(palette_file.read_text()) if palette_file.is_file() else None
        return Source(root.name, root, classes, 255, class_palette(len(classes), given), _first_image_size(root),
                      fit=fit)
    root = default_domain.default_domain_dir(progress=progress)
    return Source("default", root, list(default_domain.CLASSES), 255, default_domain.PALETTE, DEFAULT_MODEL_SIZE,
                  fit=fit)


def backbone_spec(source: Source | None, spec: BackboneSpec, *, progress: bool = True) -> BackboneSpec:
    """`spec` with its checkpoint as a local path, completed by the data source (None: no data, as for `probe
    features`). A hub name (owner/name) of a hub model (BackboneSpec.hub_name) becomes its snapshot folder; a
    paper dataset without --checkpoint gives its paper checkpoint for ddpm, mae, swav and swav_w2 (downloaded on
    first use) and the guided-diffusion flags of its DDPM; a --data folder without --checkpoint uses the embedded
    default DDPM, said in one line."""
    check_revision(spec.kind, spec.revision)
    spec.require_libraries()  # a missing extra is one line, before any download
    name = spec.hub_name()
    if name is not None and is_repo_id(name):
        spec = replace(spec, checkpoint=hub_snapshot(name, spec.kind, revision=spec.revision, progress=progress))
    info = source.info if source is not None else None
    if info is not None and spec.checkpoint is None and publishes_checkpoint(spec.kind):
        spec = replace(spec, checkpoint=paper_checkpoint(spec.kind, info, model_flags=spec.model_flags,
                                                         progress=progress))
    if not is_guided_diffusion(spec.kind) or source is None:
        return spec
    if info is not None:
        return replace(spec, model_flags=spec.model_flags or info.model_flags)
    if spec.shipped_default() and source.name != "default":
        log.info(f"--data without --checkpoint: using the embedded default DDPM, which sees images resized to "
                 f"{DEFAULT_MODEL_SIZE}x{DEFAULT_MODEL_SIZE}; pass --checkpoint for your own model")
    return spec


def to_uint8_image(image: LabeledImage) -> np.ndarray:
    """(H, W, 3) uint8 from the model input in [-1, 1]."""
    return np.clip(np.round((image.image.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)


def picture(image: LabeledImage) -> np.ndarray:
    """(H, W, 3) uint8 of the image at the size of its label map and predictions (LabeledImage.size), for figures."""
    return image.picture if image.picture is not None else to_uint8_image(image)
