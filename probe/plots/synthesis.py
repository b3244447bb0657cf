"""Generated data: training images beside generated samples, and `probe synthesize`'s preview of synthesized
samples over their labels."""

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import (
    STYLE,
    check_classes,
    check_image,
    class_handles,
    colorize,
    legend_layout,
    save,
    show,
    styled,
)


def _chunks(pictures: Sequence[np.ndarray], columns: int) -> list[list[np.ndarray]]:
    return [list(pictures[i : i + columns]) for i in range(0, len(pictures), columns)]


def _image_grid(subfig, rows: list[list[np.ndarray]], columns: int, title: str) -> None:
    """Rows of pictures in a grid of `columns` (short rows leave blank cells), titled."""
    axes = subfig.subplots(len(rows), columns, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax in ax_row:
            ax.set_axis_off()
        for ax, picture in zip(ax_row, row):
            show(ax, picture)
    subfig.suptitle(title)


@styled
def samples_figure(
    train_images: Sequence[np.ndarray],
    samples: Sequence[np.ndarray],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
    label_maps: Sequence[np.ndarray] | None = None,
    ignore_label: int = 255,
) -> Figure:
    """Training images (left, each over its label map when given) beside generated samples (right), and a
    palette legend strip below when class_names and palette are given."""
    if not train_images or not samples:
        raise ProbeError("samples_figure needs at least one training image and one sample")
    for name, pictures in (("train_images", train_images), ("samples", samples)):
        for i, picture in enumerate(pictures):
            check_image(picture, f"{name}[{i}]")
    if (class_names is None) != (palette is None) or (label_maps is not None and palette is None):
        raise ProbeError("pass class_names and palette together (label_maps need them too)")
    if label_maps is not None and len(label_maps) != len(train_images):
        raise ProbeError(f"{len(label_maps)} label maps for {len(train_images)} training images: pass one per image")
    if class_names is not None:
        check_classes(class_names, palette)
    tile_in = 1.2
    train_columns = math.ceil(math.sqrt(len(train_images)))
    sample_columns = math.ceil(math.sqrt(len(samples)))
    train_rows = _chunks(train_images, train_columns)
    if label_maps is not None:  # each row of images followed by the row of their label maps
        map_rows = _chunks([colorize(m, palette, ignore_label) for m in label_maps], train_columns)
        train_rows = [row for pair in zip(train_rows, map_rows) for row in pair]
    sample_rows = _chunks(samples, sample_columns)
    grid_rows = max(len(train_rows), len(sample_rows))  # both grids on one row pitch, the shorter one padded
    train_rows += [[]] * (grid_rows - len(train_rows))
    sample_rows += [[]] * (grid_rows - len(sample_rows))
    width_in = tile_in * (train_columns + sample_columns) + 0.4
    grids_in = tile_in * grid_rows + 0.35
    if class_names is None:
        fig = grids = Figure(figsize=(width_in, grids_in), layout="constrained")
    else:
        columns, legend_in = legend_layout(class_names, width_in, STYLE["legend.fontsize"])
        fig = Figure(figsize=(width_in, grids_in + legend_in), layout="constrained")
        grids, strip = fig.subfigures(2, 1, height_ratios=[grids_in, legend_in])
        strip.legend(handles=class_handles(range(len(class_names)), class_names, np.asarray(palette)),
                     loc="center", ncol=columns, handlelength=1.0, columnspacing=1.0)
    train_fig, sample_fig = grids.subfigures(1, 2, width_ratios=[train_columns, sample_columns], wspace=0.04)
    train_title = "training images" if label_maps is None else "training images and labels"
    _image_grid(train_fig, train_rows, train_columns, train_title)
    _image_grid(sample_fig, sample_rows, sample_columns, "generated samples")
    return save(fig, path)


@styled
def synthesis_preview(groups: dict[str, Sequence[tuple[np.ndarray, np.ndarray, str]]], class_names: Sequence[str],
                      palette: np.ndarray, path: str | Path, ignore_label: int = 255) -> Figure:
    """Synthesized samples over their labels, one block per group (e.g. the most and the least certain): each
    group a row of images, each captioned, above the row of their label maps; a class legend below."""
    if not groups or not all(groups.values()):
        raise ProbeError("synthesis_preview needs at least one group with at least one (image, labels, caption)")
    check_classes(class_names, palette)
    columns = max(len(items) for items in groups.values())
    tile_in, width_in = 1.25, 1.25 * columns + 1.2
    legend_columns, legend_in = legend_layout(class_names, width_in, STYLE["legend.fontsize"])
    height_in = len(groups) * (2 * tile_in + 0.45)
    fig = Figure(figsize=(width_in, height_in + legend_in), layout="constrained")
    blocks, strip = fig.subfigures(2, 1, height_ratios=[height_in, legend_in])
    for block, (title, items) in zip(np.atleast_1d(blocks.subfigures(len(groups), 1)), groups.items()):
        axes = block.subplots(2, columns, squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for column, (image, labels, caption) in enumerate(items):
            show(axes[0, column], check_image(image, f"{title} image {column}"))
            axes[0, column].set_title(caption, fontsize=6)
            show(axes[1, column], colorize(labels, palette, ignore_label))
        block.suptitle(f"{title}: samples above, labels below")
    strip.legend(handles=class_handles(range(len(class_names)), class_names, np.asarray(palette)), loc="center",
                 ncol=legend_columns, handlelength=1.0, columnspacing=1.0)
    return save(fig, path)
