"""The mIoU grids of `probe grid` (heatmap and lines per layer and step, paper Fig 2) and `probe layers` (mIoU
against relative depth)."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import require_columns, save, styled

NO_STEP = "-"  # the column label of a backbone without diffusion steps


def grid_matrix(table: pd.DataFrame, group: str | None = "all", value: str = "miou") -> pd.DataFrame:
    """The `value` (mIoU) of `group` as a layers x steps matrix: rows in depth order (`layer_index`), columns by step
    (one column labelled "-" for a backbone without steps). A table with a `class` column (probe.grid's) contributes
    its group means, the rows whose class is empty. `group` None: a table without groups (one row per cell)."""
    require_columns(table, ["layer", "layer_index", "step", value, *(["group"] if group is not None else [])])
    if "class" in table.columns:
        table = table[table["class"].isna()]
    rows = table if group is None else table[table["group"] == group]
    if rows.empty:
        groups = sorted(table["group"].unique()) if group is not None else []
        raise ProbeError(f"group {group!r} not in the table (groups: {groups}): pass one of them" if group is not None
                         else "the table is empty: pass one row per (layer, step)")
    rows = rows.assign(step=rows["step"].astype("object").where(rows["step"].notna(), NO_STEP))
    order = rows.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
    try:
        matrix = rows.pivot(index="layer", columns="step", values=value)
    except ValueError:
        raise ProbeError(f"group {group!r} has several rows for one (layer, step): aggregate the table first") from None
    steps = sorted(matrix.columns, key=lambda t: (t == NO_STEP, t if t != NO_STEP else 0))
    return matrix.loc[order, steps]


@styled
def grid_heatmap(
    table: pd.DataFrame,
    path: str | Path | None = None,
    group: str = "all",
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    layer_title: str = "decoder block",
    value: str = "miou",
    value_label: str = "mIoU, %",
) -> Figure:
    """mIoU per (layer, step) of one class group as an annotated heatmap, the deepest layer at the top (paper
    Fig 2). Pass the same vmin/vmax to the all/small/large heatmaps to draw them on one colour scale.

    Args:
        table: `probe.grid`'s table, or `probe grid`'s grid.csv (columns layer, layer_index, step, group, miou).
        path: where to write the PNG; None writes nothing.
        group: the class group drawn: all, small or large; None for a table without groups.
        title: the title (default: "<group> classes").
        vmin: the lower end of the colour scale (default: the group's lowest mIoU).
        vmax: the upper end of the colour scale.
        layer_title: the rows' axis label.
        value: the column drawn (another score per cell, e.g. `probe correspond`'s pck_image).
        value_label: the colour bar's label.

    Returns:
        The figure (shown in a notebook as an image).
    """
    matrix = grid_matrix(table, group, value)
    width = max(4.6, 2.2 + 0.5 * matrix.shape[1])  # small grids keep room for the title and the axis labels
    fig = Figure(figsize=(width, max(2.6, 0.9 + 0.24 * matrix.shape[0])), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(
        matrix.astype(float), ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=True, fmt=".1f",
        annot_kws={"fontsize": 6.5}, linewidths=0.5, linecolor="white", cbar_kws={"label": value_label},
    )
    stepless = list(matrix.columns) == [NO_STEP]
    ax.set(xlabel="(no diffusion step)" if stepless else "diffusion step t", ylabel=layer_title)
    ax.set_title(textwrap.fill(title or f"{group} classes", width=int(width * 9)))
    ax.tick_params(axis="y", rotation=0)
    return save(fig, path)


@styled
def grid_lines(table: pd.DataFrame, path: str | Path, group: str = "all", title: str | None = None,
               layer_title: str = "decoder block") -> Figure:
    """mIoU against layer (in depth order), one line per step coloured along viridis (paper Fig 2, right)."""
    matrix = grid_matrix(table, group)
    fig = Figure(figsize=(max(5.2, 2.5 + 0.28 * matrix.shape[0]), 3.0), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(matrix.shape[0])
    for step, colour in zip(matrix.columns, sns.color_palette("viridis", matrix.shape[1])):
        label = "no step" if step == NO_STEP else f"t = {step}"
        ax.plot(positions, matrix[step].astype(float), marker="o", markersize=3, color=colour, label=label)
    ax.set(xlabel=layer_title, ylabel="mIoU, %", title=title or f"{group} classes")
    ax.set_xticks(positions, matrix.index, rotation=90 if matrix.shape[0] > 12 else 0, fontsize=6.5)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="step")
    return save(fig, path)


@styled
def layer_depth_lines(table: pd.DataFrame, path: str | Path, title: str | None = None, value: str = "miou",
                      value_label: str = "mIoU, %") -> Figure:
    """Per-layer `value` (mIoU; `probe layers --task correspondence`: PCK) against relative depth (0 = a backbone's
    first layer, 1 = its last), one line per backbone in the table's order (`probe layers`; a diffusion backbone's
    rows are its best step per layer)."""
    require_columns(table, ["backbone", "relative_depth", value])
    if table.empty:
        raise ProbeError("layer_depth_lines got an empty table: pass one row per (backbone, layer)")
    names = list(dict.fromkeys(table["backbone"]))
    fig = Figure(figsize=(5.8, 3.3), layout="constrained")
    ax = fig.add_subplot()
    for name, colour in zip(names, sns.color_palette("colorblind", len(names))):
        rows = table[table["backbone"] == name].sort_values("relative_depth")
        stepped = "step" in rows and rows["step"].notna().any()
        ax.plot(rows["relative_depth"], rows[value].astype(float), marker="o", markersize=3, color=colour,
                label=f"{name} (best t)" if stepped else name)
    ax.set(xlabel="relative depth: layer index / (layers - 1)", ylabel=value_label, xlim=(-0.03, 1.03),
           title=textwrap.fill(title or f"{value_label} per layer", 70))
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="backbone")
    return save(fig, path)
