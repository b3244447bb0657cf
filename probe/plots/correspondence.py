"""`probe correspond`'s figure of matches: each pair's source and target side by side, a line from each source
keypoint to its predicted match, green when correct and red when not, the true target keypoints as white rings."""

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from probe.errors import ProbeError
from probe.plots.common import check_image, save, styled

CORRECT, WRONG = "#2ca02c", "#d62728"


@dataclass
class MatchPanel:
    """One pair as drawn: the (H, W, 3) uint8 pictures at their own sizes, (K, 2) (x, y) arrays of the source
    keypoints, the predicted and the true target keypoints in the target's pixels, and whether each is correct."""

    source: np.ndarray
    target: np.ndarray
    source_points: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray
    correct: np.ndarray
    label: str = ""


def side_by_side(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The two pictures on one white canvas, top-aligned, the target right of the source (no resampling)."""
    height = max(source.shape[0], target.shape[0])
    canvas = np.full((height, source.shape[1] + target.shape[1], 3), 255, dtype=np.uint8)
    canvas[:source.shape[0], :source.shape[1]] = source
    canvas[:target.shape[0], source.shape[1]:] = target
    return canvas


@styled
def correspondence_figure(panels: Sequence[MatchPanel], path: str | Path | None = None,
                          title: str | None = None) -> Figure:
    """One row per pair: source | target, a line from each source keypoint to its predicted match (green correct,
    red wrong), the true target keypoints as white rings.

    Args:
        panels: the pairs drawn, top to bottom.
        path: where to write the PNG; None writes nothing.
        title: the figure's title.

    Returns:
        The figure.
    """
    if not panels:
        raise ProbeError("correspondence_figure got no pairs: pass at least one MatchPanel")
    width = 7.0
    heights = [max(p.source.shape[0], p.target.shape[0]) / (p.source.shape[1] + p.target.shape[1]) * width
               for p in panels]
    fig = Figure(figsize=(width, sum(heights) + 0.35 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, panel in zip(axes, panels):
        source = check_image(panel.source, f"{panel.label} source")
        target = check_image(panel.target, f"{panel.label} target")
        count = len(panel.source_points)
        if not (len(panel.predicted) == len(panel.truth) == len(panel.correct) == count):
            raise ProbeError(f"{panel.label}: {count} source keypoints but {len(panel.predicted)} predictions, "
                             f"{len(panel.truth)} targets and {len(panel.correct)} verdicts; pass one of each")
        ax.imshow(side_by_side(source, target), interpolation="nearest")
        offset = source.shape[1]
        for (sx, sy), (px, py), good in zip(panel.source_points, panel.predicted, panel.correct):
            colour = CORRECT if good else WRONG
            ax.plot([sx, px + offset], [sy, py], color=colour, linewidth=0.8, alpha=0.85)
            ax.plot([sx, px + offset], [sy, py], "o", color=colour, markersize=2.5)
        ax.scatter(panel.truth[:, 0] + offset, panel.truth[:, 1], s=14, facecolors="none", edgecolors="white",
                   linewidths=0.8)
        ax.set_title(f"{panel.label}: {int(np.sum(panel.correct))}/{count} correct", fontsize=7)
        ax.set_axis_off()
    if title:
        fig.suptitle(textwrap.fill(title, 90), fontsize=8)
    return save(fig, path)
