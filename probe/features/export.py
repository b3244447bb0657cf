"""`probe features`: a backbone's feature maps exported per image, at native resolution, and (`--pca`) each map's
top 3 principal components drawn as RGB."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from probe import plots
from probe.backbones import Backbone
from probe.data.sources import picture
from probe.errors import ProbeError
from probe.features.store import stored_array
from probe.utils.outputs import output_dir
from probe.utils.progress import progress_bar

PCA_COMPONENTS = 3  # one per colour channel
log = logging.getLogger("probe")


def pca_projections(features: np.ndarray, components: int = PCA_COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """A (C, h, w) feature map's pixels projected on the map's top principal components: (h, w, components), and
    the share of the map's variance each component explains. The components are the right singular vectors of the
    (h·w, C) matrix of the pixels' feature vectors centred on their mean, largest singular value first, each signed
    so that its largest loading is positive; components beyond the map's rank project to 0."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 3:
        raise ProbeError(f"feature map of shape {array.shape}: pass one cell's (C, h, w) array")
    channels, height, width = array.shape
    centred = array.reshape(channels, height * width).T
    centred = centred - centred.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:components]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    projections = np.zeros((height * width, components))
    projections[:, :len(vt)] = centred @ vt.T
    variance = singular ** 2
    explained = np.zeros(components)
    explained[:len(vt)] = variance[:len(vt)] / variance.sum() if variance.sum() > 0 else 0.0
    return projections.reshape(height, width, components), explained


def export_features(backbone: Backbone, images: list, out: Path, dtype: str = "float32", batch_size: int = 4,
                    progress: bool = True, overwrite: bool = False, inputs: list = (), pca: bool = False) -> list[Path]:
    """Write `out/<stem>.npz` per image with one (C, h, w) array per cell, named by the cell (`t{t}_block{b}` for
    diffusion UNets, `block{b}` for MAE, `layer{L}.{j}` for SwAV): the documented export format. `pca`: also
    `out/pca/<stem>_<cell>.png` per image and cell, the image beside the map's top 3 principal components as RGB
    (pca_projections, plots.feature_pca_figure). Returns the written .npz paths. `inputs`: the files read (never
    inside `out`). With `dtype` float16, a map holding a value beyond float16's range is written in float32, as the
    activation store keeps it (stored_array), and named in one warning."""
    if dtype not in ("float32", "float16"):
        raise ProbeError(f"--dtype {dtype!r}: use float32 or float16")
    written, widened = [], []
    with output_dir(out, command="features", overwrite=overwrite, inputs=inputs) as tmp, progress_bar(progress) as bar:
        task = bar.add_task("extracting features", total=len(images))
        if pca:
            (tmp / "pca").mkdir()
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            acts = {name: a for step in backbone.steps
                    for name, a in backbone.batch_features([im.image for im in chunk], [im.stem for im in chunk], step,
                                                           batch_size).items()}
            for j, image in enumerate(chunk):
                arrays = {name: acts[name][j].numpy().astype(np.float32) for name in backbone.names}
                if dtype == "float16":
                    arrays = {name: stored_array(array) for name, array in arrays.items()}
                    widened += [f"{image.stem}.npz/{name}" for name, a in arrays.items() if a.dtype == np.float32]
                np.savez(tmp / f"{image.stem}.npz", **arrays)
                written.append(Path(out) / f"{image.stem}.npz")
                for name in backbone.names if pca else ():
                    projections, explained = pca_projections(acts[name][j].numpy())
                    plots.feature_pca_figure(picture(image), projections, tmp / "pca" / f"{image.stem}_{name}.png",
                                             title=f"{image.stem}, {name}: top 3 principal components as RGB "
                                                   f"({100 * explained.sum():.0f} % of the variance)")
            bar.advance(task, len(chunk))
    if widened:
        maps = f"{len(widened)} map{'s' if len(widened) > 1 else ''}"
        log.warning(f"{maps} held values beyond float16's range (+-65504), e.g. {widened[0]}: written in float32")
    return written
