"""The public Python API: the functions behind the CLI, for notebooks and scripts.

    import probe
    backbone = probe.load_backbone()                     # the embedded default DDPM
    train, test = probe.load_dataset(), probe.load_dataset(split="test", number=20)
    segmenter = probe.Segmenter(backbone).fit(train)     # probe segment's defaults
    segmenter.score(test)["miou"]

Every function here runs the pipeline the commands run (the activation store, the pixel sampler, the ensemble, the
authors' mIoU), so the same inputs and seed give the commands' numbers. Bad input raises `probe.ProbeError`.

The functions that compute take `threads=` (torch threads for the call, as the commands' `--threads`; None: all
cores) and warn (RuntimeWarning) when the load average already fills the cores, and `progress=` (None: bars in a
notebook, none elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from sklearn.base import BaseEstimator

from probe import backbones, plots
from probe.backbones import BackboneSpec, build_backbone
from probe.backbones.spec import check_kind
from probe.data.layout import LabeledImage, prepared_image
from probe.data.registry import lookup
from probe.data.sources import DEFAULT_MODEL_SIZE, Source, backbone_spec, class_palette, open_source, to_uint8_image
from probe.errors import ProbeError
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore
from probe.metrics import PCK_ALPHAS, SegmentationScore
from probe.tasks.correspond import (
    Correspondence,
    CorrespondOptions,
    check_options,
    chosen_pairs,
    match_cell,
    pair_inputs,
    results,
)
from probe.tasks.grid import class_areas, group_means, size_groups
from probe.tasks.kmeans import cluster_maps
from probe.tasks.segment import ensemble_manifest, fit_and_predict, fit_ensemble, load_predictor, predict_image
from probe.utils.progress import progress_bar, show_progress
from probe.utils.runtime import torch_threads

ImageLike = Union[np.ndarray, Image.Image]
Images = Union["Dataset", ImageLike, Sequence[ImageLike]]
LabelMaps = Union[np.ndarray, Sequence[np.ndarray]]
SPEC_OPTIONS = ("model_flags", "noise", "input_activations", "image_size", "prompt", "revision", "model_dtype",
                "class_label", "offload", "tokens")  # BackboneSpec fields that load_backbone takes as keyword options
FEATURES_BATCH = 4  # images per forward in Backbone.features, as `probe features` (--batch-size)


class Backbone:
    """A network's named feature maps ("cells": a layer at a diffusion step, e.g. ``t50_block5``): the notebook face
    of a `probe.backbones.Backbone`. Made by `load_backbone`.

    Attributes:
        spec: everything that rebuilds it (kind, local checkpoint, cells, seed, device).
        network: the probe.backbones.Backbone it wraps, which the store and the commands' functions take.
    """

    def __init__(self, network: backbones.Backbone, spec: BackboneSpec) -> None:
        self.network = network
        self.spec = spec

    @property
    def kind(self) -> str:
        """The registry name (ddpm, mae, pixels, ...)."""
        return self.network.kind

    @property
    def cells(self) -> list[str]:
        """The cell names, step by step (e.g. ``t50_block5``; ``block5`` for a backbone without steps)."""
        return self.network.names

    @property
    def layers(self) -> list[str]:
        """The distinct layers of the cells, in depth order."""
        return self.network.layers

    @property
    def steps(self) -> list[int | None]:
        """The distinct diffusion steps of the cells ([None] for a backbone without steps)."""
        return self.network.steps

    @property
    def image_size(self) -> int:
        """The side of the square input the network sees; images are resized to it."""
        return self.network.image_size

    def features(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = FEATURES_BATCH,
                 threads: int | None = None) -> dict[str, torch.Tensor]:
        """Every cell's feature maps at native resolution, as `probe features` exports them.

        Args:
            images: an (N, H, W, 3) or (H, W, 3) uint8 array, a list of such arrays, or PIL images; square.
            batch_size: images per forward.
            threads: torch threads for the call (None: torch's setting, all cores by default).

        Returns:
            {cell name: (N, C, h, w) float32 tensor on the CPU}.
        """
        prepared = _prepare(images, self.image_size)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.cells}
        with torch_threads(threads):
            for start in range(0, len(prepared), batch_size):
                chunk = prepared[start:start + batch_size]
                batch = torch.from_numpy(np.stack([im.image for im in chunk]))
                for step in self.steps:
                    for name, maps in self.network(batch, [im.stem for im in chunk], step).items():
                        parts[name].append(maps)
        return {name: torch.cat(maps) for name, maps in parts.items()}

    def __repr__(self) -> str:
        return f"Backbone({self.kind!r}, {len(self.cells)} cells: {', '.join(self.cells[:4])}" + (
            ", ...)" if len(self.cells) > 4 else ")")


@dataclass(repr=False)
class Dataset:
    """Labelled images of one split of a dataset. Made by `load_dataset`.

    Attributes:
        name: the dataset's name ("default" for the embedded default).
        split: "train" or "test".
        images: (N, H, W, 3) uint8.
        labels: (N, H, W) int64 class ids, `ignore_label` where unlabelled.
        classes: the class names; id i is classes[i].
        palette: (K, 3) uint8, a colour per class.
        ignore_label: the id of unlabelled pixels.
        stems: the image files' names without suffix.
        keep_size: True: a model seeing another size predicts at the images' size (own data); False: labels are
            resized to the model's input size by the nearest rule, as the authors do (the paper's datasets).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    palette: np.ndarray
    ignore_label: int
    stems: list[str]
    keep_size: bool = True
    source: Source | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        height, width = self.images.shape[1:3]
        return (f"Dataset({self.name!r}, split={self.split!r}, {len(self)} images {width}x{height}, "
                f"{len(self.classes)} classes)")

    def labeled(self, resolution: int) -> list[LabeledImage]:
        """The images as the pipeline takes them: the model input at `resolution` and the label maps."""
        return _prepare(self.images, resolution, self.labels, self.stems, self.keep_size, self.ignore_label,
                        len(self.classes))


def _open(name_or_folder: str | Path | None, progress: bool) -> Source:
    """The data source of a paper dataset's name, a folder, or None (the embedded default)."""
    if name_or_folder is None:
        return open_source(progress=progress)
    if Path(name_or_folder).is_dir():
        return open_source(data=Path(name_or_folder), progress=progress)
    try:
        lookup(str(name_or_folder))
    except ProbeError as error:
        raise ProbeError(f"{name_or_folder!r} is neither a folder nor a dataset name: {error}") from None
    return open_source(dataset=str(name_or_folder), progress=progress)


def load_dataset(name_or_folder: str | Path | None = None, split: str = "train", *, number: int | None = None,
                 resolution: int | None = None, progress: bool | None = None) -> Dataset:
    """A split of a labelled dataset, read as the commands read it.

    Args:
        name_or_folder: None for the embedded default (synthetic faces, 10 classes); a paper dataset's name
            (``horse21``, ``ffhq34``, ...: from the cache, downloaded on first use, as ``--dataset``); or a folder
            in the dataset layout (``train/`` and ``test/`` with a ``<stem>.npy`` label map beside each image,
            as ``--data``).
        split: "train" or "test".
        number: the first `number` images by file name (the commands' choice); None: on a paper dataset its split
            as the paper has it (Table 1, as ``probe segment``: 30 training and 20 test images of Horse-21), else
            all of them.
        resolution: resize images (bilinear) and label maps (nearest) to this square side; None: the first
            image's size.
        progress: show download progress bars (None: in a notebook).

    Returns:
        The images, label maps, class names and palette.
    """
    if split not in ("train", "test"):
        raise ProbeError(f"split {split!r}: use 'train' or 'test'")
    source = _open(name_or_folder, show_progress(progress))
    paper = source.info.split_number(split) if source.info is not None else None
    loaded = source.split(split, resolution or source.native_size, number, paper, keep_size=False, option="number")
    return Dataset(source.name, split, np.stack([to_uint8_image(im) for im in loaded]),
                   np.stack([im.labels for im in loaded]), list(source.class_names),
                   np.asarray(source.palette, dtype=np.uint8), source.ignore_label, [im.stem for im in loaded],
                   keep_size=source.keep_size, source=source)


def _cell_text(value: str | int | Sequence[int | str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return ",".join(map(str, value))


def load_backbone(kind_or_name: str = "ddpm", checkpoint: str | Path | None = None, *,
                  blocks: str | int | Sequence[int | str] | None = None, steps: str | int | Sequence[int] | None = None,
                  device: str = "cpu", seed: int = 0, purpose: str = "segment", dataset: Dataset | str | None = None,
                  progress: bool | None = None, **options) -> Backbone:
    """A backbone from the registry, resolved as ``--backbone`` / ``--checkpoint`` are.

    Args:
        kind_or_name: the family (ddpm, random, pixels, mae, swav, swav_w2, diffusers, sd, transformers, dit,
            pixart, sd3, flux), or ``kind=checkpoint`` (e.g. ``"sd=stabilityai/sd-turbo"``) as in ``probe layers``.
        checkpoint: a local file or folder, or a hub name (owner/name) for the hub families; None: the embedded
            default DDPM for ddpm, or the paper's checkpoint for `dataset` (ddpm, mae, swav, swav_w2).
        blocks: the layers, as ``--blocks`` takes them ("5,6", "0-17", "all", [5, 6]); None: `purpose`'s default.
        steps: the diffusion steps ("50,150,250" or [50, 150]); None: `purpose`'s default.
        device: "cpu", "cuda", ...
        seed: seeds the noise added at each step (and a random network's weights).
        purpose: whose default cells: "segment" (the paper's segmenter), "grid" (every layer), "kmeans" or
            "features".
        dataset: a paper dataset (a `Dataset` or its name) whose checkpoint and model flags to take, and whose image
            size sets the input of backbones without one (pixels, swav); None: the embedded default's.
        progress: show download progress bars (None: in a notebook).
        **options: the family's options, as BackboneSpec fields: model_flags, noise, input_activations,
            image_size, prompt, revision, model_dtype, class_label, offload, tokens ("modulated": a diffusion
            transformer block's AdaLN-modulated tokens).

    Returns:
        The backbone.
    """
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise ProbeError(f"load_backbone: unknown option {unknown[0]!r}; the options are {', '.join(SPEC_OPTIONS)}")
    text = str(kind_or_name)
    kind, _, named = text.partition("=")
    if named and checkpoint is not None:
        raise ProbeError(f"load_backbone({kind_or_name!r}, {str(checkpoint)!r}): give the checkpoint once")
    if "/" in text and not named:
        raise ProbeError(f"load_backbone({kind_or_name!r}): name the family too, e.g. "
                         f"load_backbone('diffusers', {kind_or_name!r}) or 'sd={kind_or_name}'")
    check_kind(kind, "load_backbone: kind")
    progress = show_progress(progress)
    source = dataset.source if isinstance(dataset, Dataset) else _open(dataset, progress) if dataset else None
    spec = BackboneSpec(kind=kind, checkpoint=named or checkpoint, layers=_cell_text(blocks),
                        steps=_cell_text(steps), seed=seed, device=device, **options)
    if spec.checkpoint is not None and spec.hub_name() is None:
        spec = replace(spec, checkpoint=Path(spec.checkpoint).expanduser())
    spec = backbone_spec(source, spec, progress=progress)
    native_size = source.native_size if source is not None else DEFAULT_MODEL_SIZE
    return Backbone(build_backbone(spec, purpose, native_size), spec)


def _pictures(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """Each image as an (H, W, 3) uint8 array; refuses anything else in one line."""
    if isinstance(images, Dataset):
        images = images.images
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    elif isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ProbeError("images: none given; pass an (N, H, W, 3) uint8 array, a list of them, or PIL images")
    pictures = []
    for i, image in enumerate(images):
        picture = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        if not isinstance(picture, np.ndarray) or picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
            what = f"{picture.dtype} {picture.shape}" if isinstance(picture, np.ndarray) else type(picture).__name__
            raise ProbeError(f"image {i} is {what}: pass (H, W, 3) uint8 RGB images (e.g. np.asarray(pil_image))")
        if picture.shape[0] != picture.shape[1]:
            raise ProbeError(f"image {i} is {picture.shape[1]}x{picture.shape[0]}: only square images are supported; "
                             "crop it to a square")
        pictures.append(picture)
    return pictures


def _label_maps(labels: LabelMaps, pictures: list[np.ndarray], num_classes: int, ignore_label: int) -> list[np.ndarray]:
    """Each label map as (H, W) int64 of its image's size, with ids in 0..num_classes-1 or the ignore label."""
    maps = [labels] if isinstance(labels, np.ndarray) and labels.ndim == 2 else list(labels)
    if len(maps) != len(pictures):
        raise ProbeError(f"{len(maps)} label maps for {len(pictures)} images: pass one (H, W) map per image")
    checked = []
    for i, (lab, picture) in enumerate(zip(maps, pictures)):
        lab = np.asarray(lab)
        if lab.shape != picture.shape[:2] or not np.issubdtype(lab.dtype, np.integer):
            raise ProbeError(f"label map {i} is {lab.dtype} {lab.shape} but its image is {picture.shape[:2]}: pass "
                             "integer class ids at the image's height x width")
        bad = (lab != ignore_label) & ((lab < 0) | (lab >= num_classes))
        if bad.any():
            raise ProbeError(f"label map {i} holds ids {np.unique(lab[bad])[:5].tolist()} outside 0..{num_classes - 1} "
                             f"(ignore label {ignore_label}): fix the map or pass classes= with every class")
        checked.append(lab.astype(np.int64))
    return checked


def _prepare(images: ImageLike | Sequence[ImageLike], resolution: int, labels: LabelMaps | None = None,
             stems: Sequence[str] | None = None, keep_size: bool = True, ignore_label: int = 255,
             num_classes: int = 256) -> list[LabeledImage]:
    """The images (and label maps) as the pipeline takes them, the model input at `resolution` exactly as a file of
    those pixels loads (probe.data.layout); stems `image0000`, ... unless given."""
    pictures = _pictures(images)
    maps = [None] * len(pictures) if labels is None else _label_maps(labels, pictures, num_classes, ignore_label)
    stems = list(stems) if stems is not None else [f"image{i:04d}" for i in range(len(pictures))]
    return [prepared_image(stem, Image.fromarray(picture), lab, resolution, keep_size, None, ignore_label)
            for stem, picture, lab in zip(stems, pictures, maps)]


def _labeled(images: Images, labels: LabelMaps | None, resolution: int, num_classes: int, ignore_label: int,
             what: str) -> list[LabeledImage]:
    """A Dataset's images, or images with their label maps (`labels` None: unlabelled)."""
    if isinstance(images, Dataset):
        if labels is not None:
            raise ProbeError(f"{what}: a Dataset holds its label maps; pass labels=None")
        return images.labeled(resolution)
    return _prepare(images, resolution, labels, ignore_label=ignore_label, num_classes=num_classes)


def _datasets_classes(train: Dataset, test: Dataset) -> None:
    for name, data in (("train", train), ("test", test)):
        if not isinstance(data, Dataset):
            raise ProbeError(f"{name}: pass a Dataset (probe.load_dataset), not {type(data).__name__}")
    if train.classes != test.classes or train.ignore_label != test.ignore_label:
        raise ProbeError(f"train ({train.name}) and test ({test.name}) have other classes or ignore labels: pass two "
                         "splits of one dataset")


def grid(backbone: Backbone, train: Dataset, test: Dataset, *, members: int = 1, seed: int = 0,
         size_threshold: float | None = None, cache: str | Path | None = None, threads: int | None = None,
         progress: bool | None = None) -> pd.DataFrame:
    """An MLP probe per cell of the backbone, trained on `train` and scored on `test`, as ``probe grid`` does (the
    paper's Fig. 2 and 3); load the backbone with ``purpose="grid"`` for every layer.

    Args:
        backbone: its cells are the grid's (layers x steps).
        train: the labelled images the probes train on.
        test: the images they are scored on.
        members: MLPs per probe (majority vote).
        seed: seeds the probes.
        size_threshold: the mean area (fraction of the image) below which a class is small; None: the median.
        cache: the activation store's folder (None: $PROBE_CACHE/activations, shared with the commands).
        threads: torch threads for the call, as ``--threads`` (None: torch's setting, all cores by default); on a
            machine busy with other work, the free cores (a RuntimeWarning says how many).
        progress: show progress bars (None: in a notebook): the extraction's, then one over the cells.

    Returns:
        A tidy table, columns layer, layer_index, step, group, class, miou (%): per cell, a row per class (its
        IoU; group small or large) and a row per group (all, small, large) whose class is empty (the mean over the
        group's classes, ``probe grid``'s grid.csv). ``probe.plots.grid_heatmap(table)`` draws it.
    """
    _datasets_classes(train, test)
    network = backbone.network
    train_images, test_images = train.labeled(network.image_size), test.labeled(network.image_size)
    num_classes, ignore_label = len(train.classes), train.ignore_label
    groups, _ = size_groups(class_areas(train_images + test_images, num_classes, ignore_label), size_threshold)
    store, progress = ActivationStore(network, cache), show_progress(progress)
    cells = [(layer, step) for layer in network.layers for step in network.steps]
    records = []
    with torch_threads(threads):
        store.fill(train_images + test_images, progress=progress)
        with progress_bar(progress) as bar:
            task = bar.add_task("grid: a probe per cell", total=len(cells))
            for layer, step in cells:
                fitted = fit_and_predict(store, [network.cell_name(layer, step)], train_images, test_images,
                                         num_classes, ignore_label, members, seed, device=backbone.spec.device,
                                         progress=False)
                records += [{"layer": layer, "layer_index": network.layer_index(layer), "step": step,
                             "class": train.classes[c], "group": groups[c], "iou": 100 * iou}
                            for c, iou in zip(fitted.score.class_ids, fitted.score.iou)]
                bar.advance(task)
    per_class = pd.DataFrame(records).astype({"step": "Int64"})
    table = pd.concat([group_means(per_class).assign(**{"class": None}), per_class.rename(columns={"iou": "miou"})],
                      ignore_index=True)
    return table[["layer", "layer_index", "step", "group", "class", "miou"]]


@dataclass(repr=False)
class ClusterMaps:
    """k-means cluster maps per image and cell. Made by `kmeans`.

    Attributes:
        maps: {cell name: (N, R, R) int64 cluster ids in [0, k)}, each image's ids matched to its first cell's.
        images: (N, R, R, 3) uint8, the images as the model saw them.
        stems: the images' names.
        layers: the backbone's layers (the figure's rows).
        steps: its steps (the figure's columns).
        k: the number of clusters.
        cell_names: {(layer, step): cell name}.
    """

    maps: dict[str, np.ndarray]
    images: np.ndarray
    stems: list[str]
    layers: list[str]
    steps: list[int | None]
    k: int
    cell_names: dict[tuple[str, int | None], str]

    def __repr__(self) -> str:
        return f"ClusterMaps(k={self.k}, {len(self.stems)} images, {len(self.maps)} cells)"

    def figure(self, title: str | None = None) -> Figure:
        """The cluster maps per image, layer (rows) and step (columns), as ``probe kmeans`` draws them (Fig. 4).

        Args:
            title: the figure's title.

        Returns:
            The figure.
        """
        clusters = {(stem, layer, step): self.maps[self.cell_names[layer, step]][i]
                    for i, stem in enumerate(self.stems) for layer in self.layers for step in self.steps}
        return plots.kmeans_figure(dict(zip(self.stems, self.images)), clusters, self.layers, self.steps, None, self.k,
                                   title=title)


def kmeans(backbone: Backbone, images: Images, *, k: int = 5, seed: int = 0, fit_on: str = "image",
           cache: str | Path | None = None, threads: int | None = None, progress: bool | None = None) -> ClusterMaps:
    """k-means (faiss) over each cell's upsampled pixel features, as ``probe kmeans`` does (the paper's Fig. 4).

    Args:
        backbone: whose cells are clustered (``purpose="kmeans"`` gives a few layers for a figure).
        images: a Dataset, or images as `Backbone.features` takes them; clustered at the model's input size.
        k: clusters per map (1..10 for the figure's colours).
        seed: seeds k-means++ and the pixels drawn.
        fit_on: "image" (centroids per image) or "all" (one set of centroids for all images).
        cache: the activation store's folder (None: $PROBE_CACHE/activations).
        threads: torch threads for the call, as ``--threads`` (None: torch's setting, all cores by default).
        progress: show progress bars (None: in a notebook).

    Returns:
        The cluster maps; ``.figure()`` draws them.
    """
    if fit_on not in ("image", "all"):
        raise ProbeError(f"fit_on {fit_on!r}: choose 'image' or 'all'")
    network = backbone.network
    stems = images.stems if isinstance(images, Dataset) else None
    prepared = _prepare(images, network.image_size, stems=stems, keep_size=False)
    with torch_threads(threads):
        maps = cluster_maps(ActivationStore(network, cache), prepared, k, seed, fit_on, show_progress(progress))
    names = {(layer, step): network.cell_name(layer, step) for layer in network.layers for step in network.steps}
    return ClusterMaps({name: np.stack([maps[im.stem, layer, step] for im in prepared])
                        for (layer, step), name in names.items()},
                       np.stack([to_uint8_image(im) for im in prepared]), [im.stem for im in prepared],
                       list(network.layers), list(network.steps), k, names)


def correspond(backbone: Backbone, data: str | Path, *, alphas: Sequence[float] = PCK_ALPHAS,
               threshold: str = "bbox", soft_argmax: int | None = None, pairs: int | None = None,
               drop_massive: bool = False, cache: str | Path | None = None, threads: int | None = None,
               progress: bool | None = None) -> Correspondence:
    """Zero-shot semantic correspondence per cell of the backbone, as ``probe correspond`` computes it (DIFT's
    protocol: both maps upsampled bilinearly to their images' own sizes, each source keypoint's cosine nearest
    neighbour over the whole target map); load the backbone with ``purpose="grid"`` for every layer.

    Args:
        backbone: its cells are matched one by one.
        data: a folder in SPair-71k's layout (``JPEGImages/<category>/``, ``PairAnnotation/test/*.json``).
        alphas: the PCK thresholds, fractions of the base size.
        threshold: the base size: "bbox" (the target bounding box's longer side) or "image" (the target image's).
        soft_argmax: a window side in pixels (odd) for a soft-argmax around each nearest neighbour; None: off.
        pairs: at most this many pairs per category, first by name; None: all.
        drop_massive: leave out each cell's massive-activation channels (probe.features.massive) before matching;
            ``.metrics["massive_channels"]`` names them per cell.
        cache: the activation store's folder (None: $PROBE_CACHE/activations, shared with the commands).
        threads: torch threads for the call, as ``--threads`` (None: torch's setting, all cores by default).
        progress: show progress bars (None: in a notebook).

    Returns:
        ``.keypoints`` (keypoints.csv: a row per keypoint per cell), ``.grid`` (grid.csv: PCK per point and per
        image per cell and alpha), ``.metrics`` (metrics.json's scores: the best cell's overall, per category and
        per viewpoint, every cell's, the protocol); ``.heatmap()`` draws PCK per image per layer and step.
    """
    options = CorrespondOptions(alphas=list(alphas), threshold=threshold, soft_argmax=soft_argmax, pairs=pairs,
                                drop_massive=drop_massive)
    check_options(options)
    folder = str(Path(data).expanduser().absolute())
    network, progress = backbone.network, show_progress(progress)
    chosen = chosen_pairs(folder, pairs)
    images, keys = pair_inputs(folder, pairs, network.image_size)
    store = ActivationStore(network, cache)
    cells = [(layer, step) for layer in network.layers for step in network.steps]
    matched, dropped = [], {}
    with torch_threads(threads):
        store.fill(images, progress=progress)
        with progress_bar(progress) as bar:
            task = bar.add_task("correspond: matching per cell", total=len(cells))
            for layer, step in cells:
                name = network.cell_name(layer, step)
                predictions, dropped[name] = match_cell(store, chosen, keys, name, soft_argmax, drop_massive)
                matched.append((layer, step, predictions))
                bar.advance(task)
    return results(chosen, matched, network, options, dropped)


class Segmenter(BaseEstimator):
    """The few-shot segmenter of ``probe segment`` in scikit-learn's style: an ensemble of MLPs on a backbone's
    pixel features, majority vote, the authors' mIoU. Its defaults are ``probe segment``'s, so the same images
    and seed give its mIoU.

    Fitted attributes: ``backbone_``, ``ensemble_`` (probe.ensemble.PixelEnsemble), ``classes_``, ``palette_``,
    ``ignore_label_``, ``keep_size_``, ``training_pixels_``.
    """

    def __init__(self, backbone: Backbone | str | None = None, *, members: int = 10,
                 classes: Sequence[str] | int | None = None, ignore_label: int = 255, precision: str = "auto",
                 early_batch_size: int | None = None, batched: bool = True, device: str = "cpu",
                 cache: str | Path | None = None, threads: int | None = None, progress: bool | None = None,
                 seed: int = 0) -> None:
        """
        Args:
            backbone: a Backbone, a family's name (its segment cells), or None: the embedded default DDPM at
                blocks/steps of the paper's segmenter, its noise seeded by `seed` (as ``probe segment --seed``).
            members: MLPs in the ensemble.
            classes: the class names or their number, when `fit` gets arrays (a Dataset brings its own); None: the
                largest id in the training maps plus 1.
            ignore_label: the id of unlabelled pixels, for arrays.
            precision: the first layer's products: "auto", "float32" or "bfloat16".
            early_batch_size: pixels per step in the epochs before early stopping checks (None: the authors'
                batches of 64 throughout).
            batched: train the members together (False: one by one, the authors' reference).
            device: where the ensemble (and a backbone loaded here) computes.
            cache: the activation store's folder (None: $PROBE_CACHE/activations, shared with the commands).
            threads: torch threads for fit, predict and score, as ``--threads`` (None: torch's setting, all cores by
                default); on a machine busy with other work, the free cores (a RuntimeWarning says how many).
            progress: show progress bars (None: in a notebook).
            seed: seeds the members (and the default backbone's noise).
        """
        self.backbone = backbone
        self.members = members
        self.classes = classes
        self.ignore_label = ignore_label
        self.precision = precision
        self.early_batch_size = early_batch_size
        self.batched = batched
        self.device = device
        self.cache = cache
        self.threads = threads
        self.progress = progress
        self.seed = seed

    def _backbone(self) -> Backbone:
        if isinstance(self.backbone, Backbone):
            return self.backbone
        if self.backbone is None or isinstance(self.backbone, str):
            return load_backbone(self.backbone or "ddpm", device=self.device, seed=self.seed,
                                 progress=show_progress(self.progress))
        raise ProbeError(f"backbone: pass a Backbone (probe.load_backbone), a family's name or None, not "
                         f"{type(self.backbone).__name__}")

    def _class_names(self, labels: LabelMaps | None) -> list[str]:
        if isinstance(self.classes, (int, np.integer)):
            return [f"class_{c}" for c in range(self.classes)]
        if self.classes is not None:
            return list(self.classes)
        if labels is None:
            raise ProbeError("fit: no label maps given; pass fit(images, labels) or a Dataset")
        ids = np.concatenate([np.asarray(lab).ravel() for lab in labels])
        ids = ids[ids != self.ignore_label]
        if ids.size == 0 or ids.min() < 0:
            raise ProbeError("fit: the label maps hold no class id >= 0 (all ignore label?): check the label maps")
        return [f"class_{c}" for c in range(int(ids.max()) + 1)]

    def fit(self, images: Images, labels: LabelMaps | None = None) -> Segmenter:
        """Train the ensemble on every labelled pixel of the images (a class under the authors' 20-pixel rule,
        scaled with the map's area, is dropped from an image's labels), as ``probe segment`` does.

        Args:
            images: a Dataset (its label maps, classes and palette), or images as `Backbone.features` takes them.
            labels: with arrays, one (H, W) integer label map per image.

        Returns:
            self, fitted.
        """
        backbone = self._backbone()
        if isinstance(images, Dataset):
            classes, palette, ignore_label = images.classes, images.palette, images.ignore_label
            keep_size = images.keep_size
        else:
            classes = self._class_names(labels)
            palette, ignore_label, keep_size = class_palette(len(classes)), self.ignore_label, True
        train = _labeled(images, labels, backbone.image_size, len(classes), ignore_label, "fit")
        if any(im.labels is None for im in train):
            raise ProbeError("fit: no label maps given; pass fit(images, labels) or a Dataset")
        store, progress = ActivationStore(backbone.network, self.cache), show_progress(self.progress)
        with torch_threads(self.threads):
            store.fill(train, progress=progress)
            self.ensemble_, self.training_pixels_ = fit_ensemble(
                store, backbone.cells, train, len(classes), ignore_label, self.members, self.seed, self.batched,
                self.device, progress, self.precision, self.early_batch_size)
        self.backbone_, self.classes_, self.palette_ = backbone, list(classes), np.asarray(palette, dtype=np.uint8)
        self.ignore_label_, self.keep_size_ = ignore_label, keep_size
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "ensemble_"):
            raise ProbeError("this Segmenter is not fitted yet: call fit(images, labels) or Segmenter.load(path)")

    def _predicted(self, images: Images, labels: LabelMaps | None) -> tuple[list[LabeledImage], list, list[float]]:
        self._check_fitted()
        network = self.backbone_.network
        prepared = (images.labeled(network.image_size) if isinstance(images, Dataset) else
                    _prepare(images, network.image_size, labels, keep_size=self.keep_size_,
                             ignore_label=self.ignore_label_, num_classes=len(self.classes_)))
        store = ActivationStore(network, self.cache)
        store.fill(prepared, progress=show_progress(self.progress))
        predictions, uncertainties = [], []
        for image in prepared:
            sampler = PixelSampler.from_store(store, [image], network.names)
            prediction, uncertainty = predict_image(self.ensemble_, sampler, size=image.size)
            predictions.append(prediction.astype(np.int64))
            uncertainties.append(uncertainty)
        return prepared, predictions, uncertainties

    def predict(self, images: Images) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
        """Segment images by the members' majority vote.

        Args:
            images: a Dataset, or images as `Backbone.features` takes them.

        Returns:
            (labels, uncertainty): (N, H, W) int64 class ids at the images' size (a list when sizes differ), and
            (N,) the mean Jensen-Shannon divergence of the members per image.
        """
        with torch_threads(self.threads):
            _, predictions, uncertainties = self._predicted(images, None)
        same = len({p.shape for p in predictions}) == 1
        return (np.stack(predictions) if same else predictions), np.asarray(uncertainties)

    def score(self, images: Images, labels: LabelMaps | None = None) -> dict:
        """The authors' mIoU of the predictions, as ``probe segment`` reports it in metrics.json.

        Args:
            images: a Dataset, or images as `Backbone.features` takes them.
            labels: with arrays, one (H, W) integer label map per image.

        Returns:
            {"miou": %, "per_class": {class name: IoU %}} over the classes present in the label maps or predicted.
        """
        if not isinstance(images, Dataset) and labels is None:
            raise ProbeError("score: no label maps given; pass score(images, labels) or a Dataset")
        with torch_threads(self.threads):
            prepared, predictions, _ = self._predicted(images, labels)
        score = SegmentationScore(len(self.classes_), self.ignore_label_)
        for image, prediction in zip(prepared, predictions):
            score.update(prediction, image.labels)
        return {"miou": float(100 * score.miou),
                "per_class": {self.classes_[c]: float(100 * iou) for c, iou in zip(score.class_ids, score.iou)}}

    def save(self, path: str | Path) -> None:
        """Write the fitted segmenter to the folder `path`: the ensemble folder ``probe segment`` writes (weights.pt,
        manifest.json), which ``probe predict --ensemble`` also reads.

        Args:
            path: the folder (created; its two files are replaced).
        """
        self._check_fitted()
        manifest = ensemble_manifest(self.classes_, self.palette_, self.ignore_label_, self.backbone_.network,
                                     self.backbone_.spec)
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("backbone", "cache", "classes", "threads", "progress")}  # not the machine's settings
        self.ensemble_.save(Path(path), {**manifest, "segmenter": {**params, "keep_size": self.keep_size_,
                                                                   "training_pixels": self.training_pixels_}})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", cache: str | Path | None = None) -> Segmenter:
        """A segmenter written by `save`, or the ensemble folder of ``probe segment`` (OUT/ensemble).

        Args:
            path: the folder.
            device: where it computes.
            cache: the activation store's folder.

        Returns:
            The fitted segmenter; its backbone is rebuilt (refused when its checkpoint changed since).
        """
        ensemble, manifest, network = load_predictor(Path(path), device)
        spec = BackboneSpec.from_dict(manifest["backbone"], device=device)
        saved = dict(manifest.get("segmenter", {}))
        keep_size, training_pixels = saved.pop("keep_size", True), saved.pop("training_pixels", None)
        saved.update(device=device, members=ensemble.members)
        segmenter = cls(Backbone(network, spec), cache=cache, **saved)
        segmenter.ensemble_, segmenter.backbone_ = ensemble, segmenter.backbone
        segmenter.classes_, segmenter.palette_ = manifest["class_names"], np.asarray(manifest["palette"], np.uint8)
        segmenter.ignore_label_, segmenter.keep_size_ = manifest["ignore_label"], keep_size
        segmenter.training_pixels_ = training_pixels
        return segmenter
