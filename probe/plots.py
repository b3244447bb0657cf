"""Every figure of the toolkit (the paper's Figs 2-4 and friends), written as PNG at 150 dpi.

Figures are built as `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot state is
touched, so nothing stays open and the global backend is never switched. Each function writes its PNG
(to a temporary name, then renamed) and returns the Figure so callers and tests can inspect what was drawn.
Tables are tidy pandas DataFrames.
"""

import functools
import math
import textwrap
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from probe.errors import ProbeError
from probe.outputs import atomic_write

DPI = 150
_STYLE = {
    **sns.axes_style("ticks"),
    **sns.plotting_context("paper"),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def _styled(plot: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a figure function under the toolkit's style without changing global rcParams."""

    @functools.wraps(plot)
    def styled(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(_STYLE):
            return plot(*args, **kwargs)

    return styled


def _save(fig: Figure, path: str | Path | None) -> Figure:
    """Write `fig` as PNG at DPI to `path` atomically (None: write nothing) and return it."""
    if path is None:
        return fig
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ProbeError(f"{path}: figures are written as PNG, give the file a .png suffix")
    atomic_write(path, lambda partial: fig.savefig(partial, dpi=DPI, format="png"))
    return fig


def _require_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ProbeError(
            f"table lacks columns {missing} (has {list(table.columns)}): pass a tidy table with {list(columns)}"
        )


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ProbeError(f"{what} is {image.dtype} {image.shape}: pass an (H, W, 3) uint8 RGB image")
    return image


def _check_classes(class_names: Sequence[str], palette: np.ndarray) -> None:
    if len(class_names) != len(palette):
        raise ProbeError(
            f"{len(class_names)} class names but {len(palette)} palette colours: pass one colour per class"
        )


def _legend_layout(names: Sequence[str], width_in: float, fontsize: float) -> tuple[int, float]:
    """Columns that fit `names` (with colour swatches) across `width_in`, and the legend's height in inches."""
    column_in = (0.6 * fontsize * max(len(n) for n in names) + 3 * fontsize) / 72
    columns = max(1, min(len(names), int(width_in / column_in)))
    return columns, math.ceil(len(names) / columns) * 1.8 * fontsize / 72 + 0.1


def _class_handles(ids: Sequence[int], class_names: Sequence[str], palette: np.ndarray) -> list[Patch]:
    return [Patch(facecolor=palette[i] / 255, edgecolor="0.4", linewidth=0.4, label=class_names[i]) for i in ids]


def _show(ax, picture: np.ndarray, label: str | None = None) -> None:
    """An RGB picture without ticks or frame; `label` (if any) written horizontally to its left."""
    ax.imshow(picture, interpolation="nearest")
    if label is None:
        ax.set_axis_off()
        return
    ax.set(xticks=[], yticks=[])
    ax.spines[:].set_visible(False)
    ax.set_ylabel(label, rotation=0, ha="right", va="center")


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """(H, W) integer label map -> (H, W, 3) uint8 image: label c gets palette[c], ignore_label black."""
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.min(initial=0) < 0 or palette.max(initial=0) > 255:
        raise ProbeError(f"palette has shape {palette.shape}: pass (K, 3) RGB values in 0..255")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ProbeError(f"label map has dtype {labels.dtype}: pass integer class ids (labels.astype(int))")
    valid = labels != ignore_label
    bad = np.unique(labels[valid & ((labels < 0) | (labels >= len(palette)))])
    if bad.size:
        raise ProbeError(
            f"label map holds ids {bad.tolist()} outside the palette's {len(palette)} colours "
            f"(ignore label {ignore_label}): pass a palette with a colour per class"
        )
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[valid] = palette.astype(np.uint8)[labels[valid]]
    return rgb


NO_STEP = "-"  # the column label of a backbone without diffusion steps


def grid_matrix(table: pd.DataFrame, group: str = "all") -> pd.DataFrame:
    """The mIoU of `group` as a layers x steps matrix: rows in depth order (`layer_index`), columns by step (one
    column labelled "-" for a backbone without steps). A table with a `class` column (probe.grid's) contributes its
    group means, the rows whose class is empty."""
    _require_columns(table, ["layer", "layer_index", "step", "group", "miou"])
    if "class" in table.columns:
        table = table[table["class"].isna()]
    rows = table[table["group"] == group]
    if rows.empty:
        groups = sorted(table["group"].unique())
        raise ProbeError(f"group {group!r} not in the table (groups: {groups}): pass one of them")
    rows = rows.assign(step=rows["step"].astype("object").where(rows["step"].notna(), NO_STEP))
    order = rows.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
    try:
        matrix = rows.pivot(index="layer", columns="step", values="miou")
    except ValueError:
        raise ProbeError(f"group {group!r} has several rows for one (layer, step): aggregate the table first") from None
    steps = sorted(matrix.columns, key=lambda t: (t == NO_STEP, t if t != NO_STEP else 0))
    return matrix.loc[order, steps]


@_styled
def grid_heatmap(
    table: pd.DataFrame,
    path: str | Path | None = None,
    group: str = "all",
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    layer_title: str = "decoder block",
) -> Figure:
    """mIoU per (layer, step) of one class group as an annotated heatmap, the deepest layer at the top (paper
    Fig 2). Pass the same vmin/vmax to the all/small/large heatmaps to draw them on one colour scale.

    Args:
        table: `probe.grid`'s table, or `probe grid`'s grid.csv (columns layer, layer_index, step, group, miou).
        path: where to write the PNG; None writes nothing.
        group: the class group drawn: all, small or large.
        title: the title (default: "<group> classes").
        vmin: the lower end of the colour scale (default: the group's lowest mIoU).
        vmax: the upper end of the colour scale.
        layer_title: the rows' axis label.

    Returns:
        The figure (shown in a notebook as an image).
    """
    matrix = grid_matrix(table, group)
    width = max(4.6, 2.2 + 0.5 * matrix.shape[1])  # small grids keep room for the title and the axis labels
    fig = Figure(figsize=(width, max(2.6, 0.9 + 0.24 * matrix.shape[0])), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(
        matrix.astype(float), ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=True, fmt=".1f",
        annot_kws={"fontsize": 6.5}, linewidths=0.5, linecolor="white", cbar_kws={"label": "mIoU, %"},
    )
    stepless = list(matrix.columns) == [NO_STEP]
    ax.set(xlabel="(no diffusion step)" if stepless else "diffusion step t", ylabel=layer_title)
    ax.set_title(textwrap.fill(title or f"{group} classes", width=int(width * 9)))
    ax.tick_params(axis="y", rotation=0)
    return _save(fig, path)


@_styled
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
    return _save(fig, path)


@_styled
def layer_depth_lines(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """Per-layer mIoU against relative depth (0 = a backbone's first layer, 1 = its last), one line per backbone in
    the table's order (`probe layers`; a diffusion backbone's rows are its best step per layer)."""
    _require_columns(table, ["backbone", "relative_depth", "miou"])
    if table.empty:
        raise ProbeError("layer_depth_lines got an empty table: pass one row per (backbone, layer)")
    names = list(dict.fromkeys(table["backbone"]))
    fig = Figure(figsize=(5.8, 3.3), layout="constrained")
    ax = fig.add_subplot()
    for name, colour in zip(names, sns.color_palette("colorblind", len(names))):
        rows = table[table["backbone"] == name].sort_values("relative_depth")
        stepped = "step" in rows and rows["step"].notna().any()
        ax.plot(rows["relative_depth"], rows["miou"].astype(float), marker="o", markersize=3, color=colour,
                label=f"{name} (best t)" if stepped else name)
    ax.set(xlabel="relative depth: layer index / (layers - 1)", ylabel="mIoU, %", xlim=(-0.03, 1.03),
           title=textwrap.fill(title or "mIoU of a probe per layer", 70))
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="backbone")
    return _save(fig, path)


def _lines_with_bands(ax, stats: pd.DataFrame, groups: list[str]) -> None:
    """One line per group at `stats["mean"]` with a `stats["std"]` band; `stats` is indexed by (group, x)."""
    for group, colour in zip(groups, sns.color_palette("colorblind", len(groups))):
        rows = stats.loc[group].sort_index()
        ax.plot(rows.index, rows["mean"], marker="o", markersize=3, color=colour, label=group)
        ax.fill_between(rows.index, rows["mean"] - rows["std"], rows["mean"] + rows["std"], color=colour, alpha=0.2,
                        linewidth=0)


@_styled
def efficiency_lines(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """mIoU against the number of labelled training images, one line per backbone at the mean over seeds with a
    ± std band (population std), the paper's Table 4 as a figure."""
    _require_columns(table, ["backbone", "train_number", "seed", "miou"])
    stats = table.groupby(["backbone", "train_number"], sort=False)["miou"].agg(mean="mean", std=lambda v: v.std(ddof=0))
    fig = Figure(figsize=(5.2, 3.2), layout="constrained")
    ax = fig.add_subplot()
    _lines_with_bands(ax, stats, list(dict.fromkeys(table["backbone"])))
    numbers = sorted(table["train_number"].unique())
    ax.set(xscale="log", xlabel="labelled training images", ylabel="mIoU, %",
           title=title or "mIoU against the number of labelled images")
    ax.set_xticks(numbers, [str(n) for n in numbers])
    ax.minorticks_off()
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="backbone")
    return _save(fig, path)


@_styled
def robustness_lines(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """mIoU drop (clean minus corrupted) against corruption severity, one line per backbone: each seed's drop
    averaged over the corruptions, then the mean over seeds with a ± std band (population std), the paper's Fig. 6."""
    _require_columns(table, ["backbone", "seed", "corruption", "severity", "drop"])
    if table.empty:
        raise ProbeError("robustness_lines got an empty table: pass one row per (backbone, seed, corruption, severity)")
    per_seed = table.groupby(["backbone", "seed", "severity"], sort=False)["drop"].mean()
    stats = per_seed.groupby(["backbone", "severity"], sort=False).agg(mean="mean", std=lambda v: v.std(ddof=0))
    fig = Figure(figsize=(5.2, 3.2), layout="constrained")
    ax = fig.add_subplot()
    _lines_with_bands(ax, stats, list(dict.fromkeys(table["backbone"])))
    severities = sorted(table["severity"].unique())
    corruptions = table["corruption"].nunique()
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set(xlabel="corruption severity", ylabel="mIoU drop, points",
           title=title or f"mIoU drop under corruption (mean over {corruptions} corruptions)")
    ax.set_xticks(severities, [str(s) for s in severities])
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside right center", title="backbone")
    return _save(fig, path)


@_styled
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
    _check_image(image, "image")
    labelled = [pred] if gt is None else [gt, pred]
    if any(m.shape != image.shape[:2] for m in labelled):
        raise ProbeError(
            f"image is {image.shape[:2]}, label maps {[m.shape for m in labelled]}: pass label maps of the image's size"
        )
    _check_classes(class_names, palette)
    present = [int(c) for c in np.unique(np.concatenate([m.ravel() for m in labelled])) if c != ignore_label]
    maps = [colorize(m, palette, ignore_label) for m in labelled]
    names = ["image", "prediction"] if gt is None else ["image", "ground truth", "prediction"]
    width_in, panel_in = 7.6, 2.4
    columns, legend_in = (
        _legend_layout([class_names[c] for c in present], width_in, _STYLE["legend.fontsize"]) if present else (1, 0.0)
    )
    fig = Figure(figsize=(width_in, panel_in + 0.55 + (0.3 if title else 0) + legend_in), layout="constrained")
    for ax, picture, name in zip(fig.subplots(1, len(names)), [image, *maps], names):
        _show(ax, picture)
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    if present:
        fig.legend(handles=_class_handles(present, class_names, np.asarray(palette)), loc="outside lower center",
                   ncol=columns, handlelength=1.0, columnspacing=1.0)
    return _save(fig, path)


def _cluster_palette(k: int) -> np.ndarray:
    if not 1 <= k <= 10:
        raise ProbeError(f"k={k}: cluster maps are coloured with tab10, so k must be 1..10")
    return (np.asarray(matplotlib.colormaps["tab10"].colors[:k]) * 255).round().astype(np.uint8)


@_styled
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
        _show(ax, _check_image(image, f"images[{name!r}]"))
        ax.set_title(name)
        for r, layer in enumerate(layers):
            for c, step in enumerate(steps):
                ax = fig.add_subplot(grid[top + r, 1 + c])
                _show(ax, colorize(clusters[name, layer, step], palette), str(layer) if c == 0 else "")
                if top + r == 0 and step is not None:
                    ax.set_title(f"t = {step}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _chunks(pictures: Sequence[np.ndarray], columns: int) -> list[list[np.ndarray]]:
    return [list(pictures[i : i + columns]) for i in range(0, len(pictures), columns)]


def _image_grid(subfig, rows: list[list[np.ndarray]], columns: int, title: str) -> None:
    """Rows of pictures in a grid of `columns` (short rows leave blank cells), titled."""
    axes = subfig.subplots(len(rows), columns, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax in ax_row:
            ax.set_axis_off()
        for ax, picture in zip(ax_row, row):
            _show(ax, picture)
    subfig.suptitle(title)


@_styled
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
            _check_image(picture, f"{name}[{i}]")
    if (class_names is None) != (palette is None) or (label_maps is not None and palette is None):
        raise ProbeError("pass class_names and palette together (label_maps need them too)")
    if label_maps is not None and len(label_maps) != len(train_images):
        raise ProbeError(f"{len(label_maps)} label maps for {len(train_images)} training images: pass one per image")
    if class_names is not None:
        _check_classes(class_names, palette)
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
        columns, legend_in = _legend_layout(class_names, width_in, _STYLE["legend.fontsize"])
        fig = Figure(figsize=(width_in, grids_in + legend_in), layout="constrained")
        grids, strip = fig.subfigures(2, 1, height_ratios=[grids_in, legend_in])
        strip.legend(handles=_class_handles(range(len(class_names)), class_names, np.asarray(palette)),
                     loc="center", ncol=columns, handlelength=1.0, columnspacing=1.0)
    train_fig, sample_fig = grids.subfigures(1, 2, width_ratios=[train_columns, sample_columns], wspace=0.04)
    train_title = "training images" if label_maps is None else "training images and labels"
    _image_grid(train_fig, train_rows, train_columns, train_title)
    _image_grid(sample_fig, sample_rows, sample_columns, "generated samples")
    return _save(fig, path)


@_styled
def seed_bars(table: pd.DataFrame, path: str | Path, title: str | None = None, group: str = "backbone") -> Figure:
    """mIoU per `group` (a backbone, an extraction variant): a bar at the mean over seeds with a ± std error bar,
    and each seed as a dot."""
    _require_columns(table, [group, "seed", "miou"])
    if table.empty:
        raise ProbeError(f"seed_bars got an empty table: pass one row per ({group}, seed)")
    names = list(pd.unique(table[group]))
    grouped = table.groupby(group, sort=False)["miou"]
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0)})  # population std, as metrics.mean_std
    fig = Figure(figsize=(1.4 + 1.0 * len(names), 3.0), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    ax.bar(positions, stats["mean"], width=0.6, yerr=stats["std"], capsize=4, error_kw={"linewidth": 1},
           color=sns.color_palette("colorblind", len(names)), alpha=0.85)
    for position, name in zip(positions, names):
        scores = table.loc[table[group] == name].sort_values("seed")["miou"].to_numpy()
        offsets = np.linspace(-0.18, 0.18, len(scores)) if len(scores) > 1 else np.zeros(1)
        ax.scatter(position + offsets, scores, s=10, color="0.15", zorder=3, linewidths=0)
        mean, std = stats.loc[name]
        ax.annotate(f"{mean:.1f} ± {std:.1f}", (position, max(mean + std, scores.max())), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set(xticks=positions, xticklabels=[textwrap.fill(str(name), 16) for name in names], xlabel=group,
           ylabel="mIoU, %")
    ax.set_title(textwrap.fill(title or "", int(12 * fig.get_figwidth())))  # about 12 characters per inch
    ax.set_ylim(0, 1.15 * max(table["miou"].max(), (stats["mean"] + stats["std"]).max()))
    return _save(fig, path)


@_styled
def synthesis_preview(groups: dict[str, Sequence[tuple[np.ndarray, np.ndarray, str]]], class_names: Sequence[str],
                      palette: np.ndarray, path: str | Path, ignore_label: int = 255) -> Figure:
    """Synthesized samples over their labels, one block per group (e.g. the most and the least certain): each
    group a row of images, each captioned, above the row of their label maps; a class legend below."""
    if not groups or not all(groups.values()):
        raise ProbeError("synthesis_preview needs at least one group with at least one (image, labels, caption)")
    _check_classes(class_names, palette)
    columns = max(len(items) for items in groups.values())
    tile_in, width_in = 1.25, 1.25 * columns + 1.2
    legend_columns, legend_in = _legend_layout(class_names, width_in, _STYLE["legend.fontsize"])
    height_in = len(groups) * (2 * tile_in + 0.45)
    fig = Figure(figsize=(width_in, height_in + legend_in), layout="constrained")
    blocks, strip = fig.subfigures(2, 1, height_ratios=[height_in, legend_in])
    for block, (title, items) in zip(np.atleast_1d(blocks.subfigures(len(groups), 1)), groups.items()):
        axes = block.subplots(2, columns, squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for column, (image, labels, caption) in enumerate(items):
            _show(axes[0, column], _check_image(image, f"{title} image {column}"))
            axes[0, column].set_title(caption, fontsize=6)
            _show(axes[1, column], colorize(labels, palette, ignore_label))
        block.suptitle(f"{title}: samples above, labels below")
    strip.legend(handles=_class_handles(range(len(class_names)), class_names, np.asarray(palette)), loc="center",
                 ncol=legend_columns, handlelength=1.0, columnspacing=1.0)
    return _save(fig, path)


@_styled
def training_history(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """Training loss (left axis) and validation mIoU (right axis) per epoch, the best epoch marked."""
    _require_columns(table, ["epoch", "loss", "val_miou"])
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
    return _save(fig, path)
