"""The experiments' figures: mIoU against the number of labelled images (efficiency), the drop under corruption
(robustness), and mean ± std bars over seeds (variants, the analysis scripts)."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import require_columns, save, styled


def _lines_with_bands(ax, stats: pd.DataFrame, groups: list[str]) -> None:
    """One line per group at `stats["mean"]` with a `stats["std"]` band; `stats` is indexed by (group, x)."""
    for group, colour in zip(groups, sns.color_palette("colorblind", len(groups))):
        rows = stats.loc[group].sort_index()
        ax.plot(rows.index, rows["mean"], marker="o", markersize=3, color=colour, label=group)
        ax.fill_between(rows.index, rows["mean"] - rows["std"], rows["mean"] + rows["std"], color=colour, alpha=0.2,
                        linewidth=0)


@styled
def efficiency_lines(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """mIoU against the number of labelled training images, one line per backbone at the mean over seeds with a
    ± std band (population std), the paper's Table 4 as a figure."""
    require_columns(table, ["backbone", "train_number", "seed", "miou"])
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
    return save(fig, path)


@styled
def robustness_lines(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Figure:
    """mIoU drop (clean minus corrupted) against corruption severity, one line per backbone: each seed's drop
    averaged over the corruptions, then the mean over seeds with a ± std band (population std), the paper's Fig. 6."""
    require_columns(table, ["backbone", "seed", "corruption", "severity", "drop"])
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
    return save(fig, path)


@styled
def seed_bars(table: pd.DataFrame, path: str | Path, title: str | None = None, group: str = "backbone") -> Figure:
    """mIoU per `group` (a backbone, an extraction variant): a bar at the mean over seeds with a ± std error bar,
    and each seed as a dot."""
    require_columns(table, [group, "seed", "miou"])
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
    return save(fig, path)
