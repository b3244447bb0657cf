"""Segmentation figures: image, ground truth and prediction side by side (`probe segment`, `probe deeplab`), and a
segmentation network's training history."""

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
