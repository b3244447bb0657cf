"""k-means over pixel features (faiss), and relabelling clusters so maps from different blocks/steps agree."""

from dataclasses import replace
from pathlib import Path
from typing import Literal, Sequence

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import kmeans_plusplus

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.layout import LabeledImage, load_images
from probe.data.sources import Source, to_uint8_image
from probe.errors import ProbeError, counting_files
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore
from probe.utils.outputs import output_dir
from probe.utils.progress import progress_bar


def _check_features(features: np.ndarray, k: int, what: str = "features") -> np.ndarray:
    """Return `features` as a contiguous float32 (N, D) array with N >= k, or raise ProbeError."""
    if k < 1:
        raise ProbeError(f"k={k}: the number of clusters must be at least 1")
    if features.ndim != 2:
        raise ProbeError(f"{what} has shape {features.shape}: pass one row per pixel, shape (N, D)")
    if features.shape[0] < k:
        raise ProbeError(f"{what} has {features.shape[0]} pixels, fewer than k={k}: lower k or pass more pixels")
    return np.ascontiguousarray(features, dtype=np.float32)


def _use_gpu(use_gpu: bool | None) -> bool:
    """Resolve `use_gpu`: None means "when faiss sees a GPU"; True demands one."""
    gpus = faiss.get_num_gpus()
    if use_gpu and gpus == 0:
        raise ProbeError(
            "use_gpu=True but faiss sees no GPU: install faiss-gpu (pip install 'probe[gpu]') or pass use_gpu=None"
        )
    return gpus > 0 if use_gpu is None else use_gpu


def _training_pixels(features: Sequence[np.ndarray], k: int, seed: int) -> np.ndarray:
    """All rows of `features` stacked, or, when there are more than faiss's max_points_per_centroid * k,
    that many drawn without replacement by a generator seeded with `seed` (never stacking all rows)."""
    count = faiss.ClusteringParameters().max_points_per_centroid * k
    offsets = np.cumsum([0] + [len(f) for f in features])
    if offsets[-1] <= count:
        return np.concatenate([np.asarray(f, dtype=np.float32) for f in features])
    chosen = np.sort(np.random.default_rng(seed).choice(offsets[-1], size=count, replace=False))
    owner = np.searchsorted(offsets, chosen, side="right") - 1
    return np.concatenate(
        [np.asarray(features[i][chosen[owner == i] - offsets[i]], dtype=np.float32) for i in range(len(features))]
    )


def _train(training: np.ndarray, k: int, seed: int, niter: int, use_gpu: bool | None) -> faiss.Kmeans:
    """faiss k-means on float32 (N, D) pixels, started from seeded k-means++ centroids.

    faiss's own start (k random pixels) often puts two centroids in one cluster and never recovers.
    """
    start, _ = kmeans_plusplus(training, k, random_state=seed)
    kmeans = faiss.Kmeans(training.shape[1], k, niter=niter, seed=seed, gpu=_use_gpu(use_gpu))
    kmeans.train(training, init_centroids=start)
    return kmeans


def _assign(kmeans: faiss.Kmeans, features: np.ndarray) -> np.ndarray:
    """Nearest-centroid id per row, int64."""
    _, nearest = kmeans.index.search(features, 1)
    return nearest.ravel().astype(np.int64)


def kmeans_labels(
    features: np.ndarray, k: int = 5, seed: int = 0, niter: int = 25, use_gpu: bool | None = None
) -> np.ndarray:
    """Cluster (N, D) pixel features into k clusters; returns (N,) int64 ids in [0, k). Same seed, same labels."""
    features = _check_features(features, k)
    return _assign(_train(_training_pixels([features], k, seed), k, seed, niter, use_gpu), features)


def fit_kmeans(
    features: Sequence[np.ndarray],
    k: int = 5,
    seed: int = 0,
    fit_on: Literal["image", "all"] = "image",
    niter: int = 25,
    use_gpu: bool | None = None,
) -> list[np.ndarray]:
    """Cluster each image's (N_i, D) pixel features; returns one (N_i,) int64 label array per image.

    fit_on="image": separate centroids per image. fit_on="all": one set of centroids trained on the pixels
    of all images (at most faiss's max_points_per_centroid * k of them, drawn with a generator seeded by
    `seed`), so a cluster id means the same thing in every image.
    """
    if fit_on not in ("image", "all"):
        raise ProbeError(f"fit_on={fit_on!r}: choose 'image' or 'all'")
    if not features:
        raise ProbeError("features is empty: pass one (N_i, D) array per image")
    if fit_on == "image":
        return [kmeans_labels(f, k, seed, niter, use_gpu) for f in features]
    if any(f.ndim != 2 for f in features) or len({f.shape[1] for f in features}) != 1:
        raise ProbeError(f"features have shapes {[f.shape for f in features]}: all must be (N_i, D) with one D")
    training = _check_features(_training_pixels(features, k, seed), k, "the pixels of all images")
    kmeans = _train(training, k, seed, niter, use_gpu)
    return [_assign(kmeans, np.ascontiguousarray(f, dtype=np.float32)) for f in features]


def match_labels(reference: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Rename the clusters of `labels` so each gets the id of the reference cluster it overlaps most.

    The one-to-one renaming maximises the total overlap (Hungarian algorithm on the k x k pixel-count
    matrix). Both arrays hold ids in [0, k) and have the same shape; the result has that shape too.
    """
    if reference.shape != labels.shape:
        raise ProbeError(f"reference has shape {reference.shape} but labels {labels.shape}: pass maps of one size")
    for name, ids in (("reference", reference), ("labels", labels)):
        if ids.size and (ids.min() < 0 or ids.max() >= k):
            raise ProbeError(
                f"{name} holds ids {ids.min()}..{ids.max()}, outside [0, k={k}): pass the k used to cluster"
            )
    overlap = np.bincount(
        reference.ravel().astype(np.int64) * k + labels.ravel(), minlength=k * k
    ).reshape(k, k)
    reference_ids, label_ids = linear_sum_assignment(overlap, maximize=True)
    renaming = np.empty(k, dtype=np.int64)
    renaming[label_ids] = reference_ids
    return renaming[labels]


def cluster_maps(store: ActivationStore, images: list[LabeledImage], k: int, seed: int, fit_on: str = "image",
                 progress: bool = True) -> dict[tuple[str, str, int | None], np.ndarray]:
    """k-means cluster maps {(stem, layer, step): (R, R) ids} over the upsampled pixel features of each cell of the
    store's backbone, at the images' model input size R; each image's ids are matched to its first cell's by the
    Hungarian method (match_labels), so a colour means one cluster throughout its maps."""
    backbone = store.backbone
    size = images[0].image.shape[-1]
    maps: dict[tuple[str, str, int | None], np.ndarray] = {}
    cells = [(layer, t) for layer in backbone.layers for t in backbone.steps]
    store.fill(images, progress=progress)
    with progress_bar(progress) as bar:
        task = bar.add_task("k-means per cell", total=len(cells))
        for layer, t in cells:
            sampler = PixelSampler.from_store(store, images, [backbone.cell_name(layer, t)], size)
            features = [sampler.image_features(i, slice(None)).numpy() for i in range(len(images))]
            for image, labels in zip(images, fit_kmeans(features, k, seed, fit_on)):
                maps[(image.stem, layer, t)] = labels.reshape(size, size)
            bar.advance(task)
    for image in images:
        reference = maps[(image.stem, *cells[0])]
        for layer, t in cells[1:]:
            maps[(image.stem, layer, t)] = match_labels(reference, maps[(image.stem, layer, t)], k)
    return maps


def run_kmeans(source: Source, spec: BackboneSpec, k: int, seed: int, fit_on: str, out: Path, *,
               image_files: Sequence[Path] = (), n_images: int = 2, cache: Path | None = None, progress: bool = True,
               overwrite: bool = False) -> dict[tuple[str, str, int | None], np.ndarray]:
    """k-means over the upsampled pixel features of each cell of the backbone (the paper's Fig. 4).

    Writes `out/kmeans.png` (per image, a layers x steps grid of cluster maps whose ids are matched to the first
    cell's by the Hungarian method) and `out/clusters.npz` with keys `<stem>/<cell name>`.
    The images: `image_files`, else the first `n_images` of the source's test split.
    """
    if fit_on not in ("image", "all"):
        raise ProbeError(f"--fit-on {fit_on!r}: choose image or all")
    backbone = build_backbone(replace(spec, seed=seed), "kmeans", source.native_size)
    # the cluster maps are at the model's input size (k-means over every pixel of each image's features)
    images = (load_images(list(image_files), backbone.image_size, fit=source.fit) if image_files
              else source.split("test", backbone.image_size, n_images, keep_size=False, option="--n-images"))
    store = ActivationStore(backbone, cache)
    with counting_files(lambda: store.written), \
            output_dir(out, command="kmeans", overwrite=overwrite, inputs=[*source.inputs, *image_files, cache]) as tmp:
        maps = cluster_maps(store, images, k, seed, fit_on, progress)
        np.savez_compressed(tmp / "clusters.npz", **{f"{s}/{backbone.cell_name(layer, t)}": m.astype(np.uint8)
                                                      for (s, layer, t), m in maps.items()})
        plots.kmeans_figure({im.stem: to_uint8_image(im) for im in images}, maps, backbone.layers, backbone.steps,
                            tmp / "kmeans.png", k)
    return maps
