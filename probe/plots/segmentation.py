"""Segmentation figures: image, ground truth and prediction side by side (`probe segment`, `probe deeplab`), a
confusion matrix (`probe segment`), and a segmentation network's training history."""

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import (
    STYLE,
    check_classes,
    check_image,
    class_handles,
    colorize,
    legend_layout,
    require_columns,
    save,
    show,
    styled,
)


@styled
def segmentation_panel(
    image: np.ndarray,
    gt: np.ndarray | None,
    pred: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray,
    path: str | Path,
    ignore_label: int = 255,
    title: str | None = None,
) -> Figure:
    """image | ground truth | prediction (image | prediction when gt is None), with a legend of the classes
    present in the label maps."""
    check_image(image, "image")
    labelled = [pred] if gt is None else [gt, pred]
    if any(m.shape != image.shape[:2] for m in labelled):
        raise ProbeError(
            f"image is {image.shape[:2]}, label maps {[m.shape for m in labelled]}: pass label maps of the image's size"
        )
    check_classes(class_names, palette)
    present = [int(c) for c in np.unique(np.concatenate([m.ravel() for m in labelled])) if c != ignore_label]
    maps = [colorize(m, palette, ignore_label) for m in labelled]
    names = ["image", "prediction"] if gt is None else ["image", "ground truth", "prediction"]
    width_in, panel_in = 7.6, 2.4
    columns, legend_in = (
        legend_layout([class_names[c] for c in present], width_in, STYLE["legend.fontsize"]) if present else (1, 0.0)
    )
    fig = Figure(figsize=(width_in, panel_in + 0.55 + (0.3 if title else 0) + legend_in), layout="constrained")
    for ax, picture, name in zip(fig.subplots(1, len(names)), [image, *maps], names):
        show(ax, picture)
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    if present:
        fig.legend(handles=class_handles(present, class_names, np.asarray(palette)), loc="outside lower center",
                   ncol=columns, handlelength=1.0, columnspacing=1.0)
    return save(fig, path)


@styled
def confusion_heatmap(matrix: pd.DataFrame, path: str | Path | None = None, title: str | None = None) -> Figure:
    """A confusion matrix normalised by row: cell (true, predicted) is the % of the true class's pixels predicted
    as that class (a row without pixels stays empty), class names on both axes, values written in the cells when
    there are at most 15 classes.

    Args:
        matrix: pixel counts, rows the true classes and columns the predicted ones, labelled by class name
            (`probe segment`'s confusion.csv read with `index_col=0`).
        path: where to write the PNG; None writes nothing.
        title: the title.

    Returns:
        The figure.
    """
    if matrix.empty:
        raise ProbeError("confusion_heatmap got an empty matrix: pass pixel counts, rows true and columns predicted")
    counts = matrix.astype(float)
    shares = 100 * counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    rows, columns = shares.shape
    side = max(3.6, 1.8 + 0.32 * max(rows, columns))
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(shares, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=max(rows, columns) <= 15, fmt=".0f",
                annot_kws={"fontsize": 6}, linewidths=0.4, linecolor="white", square=True,
                cbar_kws={"label": "% of the true class's pixels"})
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "")
    ax.tick_params(axis="x", rotation=90)
    ax.tick_params(axis="y", rotation=0)
    return save(fig, path)


@styled
def training_history(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """Training loss (left axis) and validation mIoU (right axis) per epoch, the best epoch marked."""
    require_columns(table, ["epoch", "loss", "val_miou"])
    if table.empty:
        raise ProbeError("training_history got an empty table: pass one row per epoch")
    fig = Figure(figsize=(5.2, 3.0), layout="constrained")
    ax = fig.add_subplot()
    colours = sns.color_palette("colorblind", 2)
    ax.plot(table["epoch"], table["loss"], marker="o", markersize=3, color=colours[0], label="training loss")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title=title or "")
    right = ax.twinx()
    right.spines["right"].set_visible(True)
    right.plot(table["epoch"], table["val_miou"], marker="s", markersize=3, color=colours[1], label="validation mIoU")
    best = table.loc[table["val_miou"].idxmax()]
    right.axvline(best["epoch"], color="0.5", linewidth=0.6, linestyle="--")
    right.annotate(f"best {best['val_miou']:.1f}", (best["epoch"], best["val_miou"]), xytext=(3, 3),
                   textcoords="offset points", fontsize=7)
    right.set_ylabel("validation mIoU, %")
    fig.legend(loc="outside lower center", ncol=2)
    return save(fig, path)
