"""The figures of `probe similarity`: heatmaps of a similarity metric between cells (cell x cell within a backbone,
t x t at fixed layers, one backbone's layers against another's at relative depth) and the alignment plot (per layer of
one backbone, the most similar layer of each other backbone and its score, as REPA's alignment plots)."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import require_columns, save, styled

SIMILARITY_COLUMNS = ["backbone_a", "cell_a", "backbone_b", "cell_b", "metric", "value"]
ANNOTATED = 20  # a matrix with at most this many rows and columns gets its values written in


def similarity_matrix(table: pd.DataFrame, metric: str, backbone_a: str, backbone_b: str,
                      cells_a: list[str] | None = None, cells_b: list[str] | None = None) -> pd.DataFrame:
    """`metric` between the cells of `backbone_a` (rows) and of `backbone_b` (columns) from `probe similarity`'s
    similarity.csv (columns backbone_a, cell_a, backbone_b, cell_b, metric, value), in the order of `cells_a` /
    `cells_b` (default: the table's)."""
    require_columns(table, SIMILARITY_COLUMNS)
    rows = table[(table.metric == metric) & (table.backbone_a == backbone_a) & (table.backbone_b == backbone_b)]
    if rows.empty:
        raise ProbeError(f"no {metric!r} rows for {backbone_a} against {backbone_b} in the table (metrics: "
                         f"{sorted(table.metric.unique())}, backbones: {sorted(table.backbone_a.unique())})")
    matrix = rows.pivot_table(index="cell_a", columns="cell_b", values="value", aggfunc="first")
    order_a = cells_a if cells_a is not None else list(dict.fromkeys(rows.cell_a))
    order_b = cells_b if cells_b is not None else list(dict.fromkeys(rows.cell_b))
    missing = [c for c in order_a if c not in matrix.index] + [c for c in order_b if c not in matrix.columns]
    if missing:
        raise ProbeError(f"cells {missing[:3]} have no {metric!r} rows for {backbone_a} against {backbone_b}")
    return matrix.loc[order_a, order_b]


@styled
def similarity_heatmap(panels: pd.DataFrame | dict[str, pd.DataFrame], path: str | Path | None = None,
                       title: str | None = None, metric: str = "similarity", xlabel: str | None = None,
                       ylabel: str | None = None, vmin: float | None = None, vmax: float | None = None) -> Figure:
    """One heatmap, or several side by side on one colour scale (a dict: panel title -> matrix), of a similarity
    matrix (rows and columns labelled by cell, e.g. from `similarity_matrix`). Matrices of at most 20 x 20 get their
    values written in.

    Args:
        panels: a matrix (DataFrame), or {panel title: matrix}.
        path: where to write the PNG; None writes nothing.
        title: the figure's title.
        metric: the colour bar's label.
        xlabel: the columns' axis label.
        ylabel: the rows' axis label.
        vmin: the lower end of the colour scale (default: the lowest value, or 0 when higher).
        vmax: the upper end of the colour scale (default: the highest value).

    Returns:
        The figure.
    """
    if isinstance(panels, pd.DataFrame):
        panels = {"": panels}
    if not panels or any(m.empty for m in panels.values()):
        raise ProbeError("similarity_heatmap got an empty matrix: pass at least one row and column per panel")
    values = np.concatenate([m.to_numpy(dtype=float).ravel() for m in panels.values()])
    vmin = min(0.0, float(np.nanmin(values))) if vmin is None else vmin
    vmax = float(np.nanmax(values)) if vmax is None else vmax
    rows = max(m.shape[0] for m in panels.values())
    cols = max(m.shape[1] for m in panels.values())
    cell = 0.3 if max(rows, cols) <= ANNOTATED else max(0.06, min(0.3, 12 / max(rows, cols)))
    width = len(panels) * (1.6 + cell * cols) + 1.2
    height = 1.6 + cell * rows
    fig = Figure(figsize=(max(4.6, min(width, 18)), max(3.0, min(height, 16))), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for index, (ax, (name, matrix)) in enumerate(zip(axes, panels.items())):
        annotate = max(matrix.shape) <= ANNOTATED
        last = index == len(panels) - 1
        sns.heatmap(matrix.astype(float), ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=annotate, fmt=".2f",
                    annot_kws={"fontsize": 5}, square=True, linewidths=0.3 if annotate else 0, linecolor="white",
                    cbar=last, cbar_kws={"label": metric, "shrink": 0.8}, xticklabels="auto", yticklabels="auto")
        ax.set(xlabel=xlabel or "", ylabel=(ylabel or "") if index == 0 else "")
        if name:
            ax.set_title(name, fontsize=8)
        ax.tick_params(axis="both", labelsize=5.5 if max(matrix.shape) <= 40 else 4)
        ax.tick_params(axis="y", rotation=0)
    if title:
        fig.suptitle(textwrap.fill(title, 90), fontsize=9)
    return save(fig, path)


@styled
def alignment_lines(table: pd.DataFrame, path: str | Path | None = None, title: str | None = None,
                    metric: str = "similarity") -> Figure:
    """REPA-style alignment: for each layer of backbone A (x: its relative depth), the most similar layer of each
    other backbone B: left, that similarity; right, that layer's relative depth in B (0 its first layer, 1 its last;
    the diagonal is equal depth). One line per backbone B.

    Args:
        table: `probe similarity`'s alignment.csv (columns backbone_b, relative_depth_a, relative_depth_b, value).
        path: where to write the PNG; None writes nothing.
        title: the title.
        metric: the similarity's name, for the axis.

    Returns:
        The figure.
    """
    require_columns(table, ["backbone_b", "relative_depth_a", "relative_depth_b", "value"])
    if table.empty:
        raise ProbeError("alignment_lines got an empty table: pass one row per (backbone B, layer of A)")
    names = list(dict.fromkeys(table["backbone_b"]))
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    score, depth = fig.subplots(1, 2)
    for name, colour in zip(names, sns.color_palette("colorblind", len(names))):
        rows = table[table["backbone_b"] == name].sort_values("relative_depth_a")
        score.plot(rows["relative_depth_a"], rows["value"], marker="o", markersize=3, color=colour, label=name)
        depth.plot(rows["relative_depth_a"], rows["relative_depth_b"], marker="o", markersize=3, color=colour)
    depth.plot([0, 1], [0, 1], color="0.7", linewidth=0.6, linestyle="--", zorder=0)
    score.set(xlabel="relative depth of A's layer", ylabel=f"{metric} of the best layer of B", xlim=(-0.03, 1.03))
    depth.set(xlabel="relative depth of A's layer", ylabel="relative depth of B's best layer", xlim=(-0.03, 1.03),
              ylim=(-0.03, 1.03))
    for ax in (score, depth):
        ax.grid(linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="backbone B")
    if title:
        fig.suptitle(textwrap.fill(title, 100), fontsize=9)
    return save(fig, path)
