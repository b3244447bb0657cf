"""k-means cluster maps per image, layer and step (`probe kmeans`, paper Fig 4)."""

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import check_image, colorize, save, show, styled


def _cluster_palette(k: int) -> np.ndarray:
    if not 1 <= k <= 10:
        raise ProbeError(f"k={k}: cluster maps are coloured with tab10, so k must be 1..10")
    return (np.asarray(matplotlib.colormaps["tab10"].colors[:k]) * 255).round().astype(np.uint8)


@styled
def kmeans_figure(
    images: dict[str, np.ndarray],
    clusters: dict[tuple[str, str, int | None], np.ndarray],
    layers: Sequence[str],
    steps: Sequence[int | None],
    path: str | Path | None,
    k: int,
    title: str | None = None,
) -> Figure:
    """k-means cluster maps per image, layer (rows) and step (columns; one for a backbone without steps), the
    image on the left (paper Fig 4).

    `clusters[(name, layer, step)]` is an (h, w) map of ids in [0, k); match ids across maps beforehand
    (clusters.match_labels) so a colour means one cluster throughout an image's rows. `path`: where to write the
    PNG (None: nowhere; the figure is returned either way).
    """
    if not images or not layers or not steps:
        raise ProbeError("kmeans_figure needs at least one image, layer and step")
    missing = [(n, b, s) for n in images for b in layers for s in steps if (n, b, s) not in clusters]
    if missing:
        shown = f"{missing[:3]}{' ...' if len(missing) > 3 else ''}"
        raise ProbeError(f"no cluster map for (image, layer, step) {shown}: pass one per image, layer and step")
    palette = _cluster_palette(k)
    rows_per_image = len(layers)
    cell_in = max(0.65, min(1.0, 9.5 / (len(images) * rows_per_image)))
    label_in = 0.85  # room for the layer labels
    image_columns = min(2, rows_per_image)
    gap = 0.25  # blank row between images, in cells
    height_ratios = ([1] * rows_per_image + [gap]) * len(images)
    height_ratios.pop()
    width_in = label_in + cell_in * (image_columns + len(steps))
    height_in = 0.4 + (0.3 if title else 0) + cell_in * sum(height_ratios)
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    grid = fig.add_gridspec(len(height_ratios), 1 + len(steps), height_ratios=height_ratios,
                            width_ratios=[image_columns] + [1] * len(steps))
    for i, (name, image) in enumerate(images.items()):
        top = i * (rows_per_image + 1)
        ax = fig.add_subplot(grid[top : top + rows_per_image, 0])
        show(ax, check_image(image, f"images[{name!r}]"))
        ax.set_title(name)
        for r, layer in enumerate(layers):
            for c, step in enumerate(steps):
                ax = fig.add_subplot(grid[top + r, 1 + c])
                show(ax, colorize(clusters[name, layer, step], palette), str(layer) if c == 0 else "")
                if top + r == 0 and step is not None:
                    ax.set_title(f"t = {step}")
    if title:
        fig.suptitle(title)
    return save(fig, path)
