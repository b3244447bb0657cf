"""Feature maps as pictures: a cell's top 3 principal components as RGB beside the image (`probe features --pca`)."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import check_image, save, show, styled


def pca_rgb(projections: np.ndarray) -> np.ndarray:
    """(h, w, 3) projections on three principal components -> (h, w, 3) uint8 RGB: each channel scaled from its own
    minimum (0) to its maximum (255); a constant channel is 0."""
    values = np.asarray(projections, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] != 3:
        raise ProbeError(f"projections of shape {values.shape}: pass (h, w, 3), one channel per component")
    low, high = values.min(axis=(0, 1)), values.max(axis=(0, 1))
    span = np.where(high > low, high - low, 1.0)
    return np.round(255 * (values - low) / span).astype(np.uint8)


@styled
def feature_pca_figure(image: np.ndarray, projections: np.ndarray, path: str | Path | None = None,
                       title: str | None = None) -> Figure:
    """The image beside a feature map's projections on its top 3 principal components as red, green and blue
    (pca_rgb), the map drawn at its native resolution and stretched to the image's size.

    Args:
        image: the (H, W, 3) uint8 picture.
        projections: (h, w, 3), e.g. from `probe.features.export.pca_projections`.
        path: where to write the PNG; None writes nothing.
        title: the title.

    Returns:
        The figure.
    """
    check_image(image, "image")
    rgb = pca_rgb(projections)
    fig = Figure(figsize=(4.8, 2.6 + (0.3 if title else 0)), layout="constrained")
    left, right = fig.subplots(1, 2)
    show(left, image)
    left.set_title("image")
    right.imshow(rgb, interpolation="nearest", extent=(0, image.shape[1], image.shape[0], 0))
    right.set_axis_off()
    right.set_title(f"PC 1-3 as RGB ({rgb.shape[1]}x{rgb.shape[0]})")
    if title:
        fig.suptitle(title, fontsize=7)
    return save(fig, path)
