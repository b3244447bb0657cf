"""What every figure shares: the style, the PNG writer, the argument checks, legends of classes, picture panels
and label maps as colours."""

import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from probe.errors import ProbeError
from probe.utils.outputs import atomic_write

DPI = 150
STYLE = {
    **sns.axes_style("ticks"),
    **sns.plotting_context("paper"),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def styled(plot: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a figure function under the toolkit's style without changing global rcParams."""

    @functools.wraps(plot)
    def in_style(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return in_style


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Write `fig` as PNG at DPI to `path` atomically (None: write nothing) and return it."""
    if path is None:
        return fig
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ProbeError(f"{path}: figures are written as PNG, give the file a .png suffix")
    atomic_write(path, lambda partial: fig.savefig(partial, dpi=DPI, format="png"))
    return fig


def require_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise a ProbeError naming the missing ones unless `table` has all `columns`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ProbeError(
            f"table lacks columns {missing} (has {list(table.columns)}): pass a tidy table with {list(columns)}"
        )


def check_image(image: np.ndarray, what: str) -> np.ndarray:
    """`image` itself if it is an (H, W, 3) uint8 RGB picture; otherwise a ProbeError about `what`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ProbeError(f"{what} is {image.dtype} {image.shape}: pass an (H, W, 3) uint8 RGB image")
    return image


def check_classes(class_names: Sequence[str], palette: np.ndarray) -> None:
    """Raise a ProbeError unless there is one palette colour per class name."""
    if len(class_names) != len(palette):
        raise ProbeError(
            f"{len(class_names)} class names but {len(palette)} palette colours: pass one colour per class"
        )


def legend_layout(names: Sequence[str], width_in: float, fontsize: float) -> tuple[int, float]:
    """Columns that fit `names` (with colour swatches) across `width_in`, and the legend's height in inches."""
    column_in = (0.6 * fontsize * max(len(n) for n in names) + 3 * fontsize) / 72
    columns = max(1, min(len(names), int(width_in / column_in)))
    return columns, math.ceil(len(names) / columns) * 1.8 * fontsize / 72 + 0.1


def class_handles(ids: Sequence[int], class_names: Sequence[str], palette: np.ndarray) -> list[Patch]:
    """Legend entries (a colour swatch and the class name) for the classes `ids`."""
    return [Patch(facecolor=palette[i] / 255, edgecolor="0.4", linewidth=0.4, label=class_names[i]) for i in ids]


def show(ax, picture: np.ndarray, label: str | None = None) -> None:
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
