"""Scores exactly as their authors compute them: segmentation (ddpm-segmentation's compute_iou) and keypoint
correspondence (PCK as DIFT's eval_spair.py computes it, both averages)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from probe.errors import ProbeError


class SegmentationScore:
    """Intersection and union per class, summed over every image passed to `update`.

    Class c (c != ignore_label) adds ((pred == c) & (gt == c)) to its intersection and
    ((pred == c) | (gt == c)) to its union, as the authors do: a pixel whose ground truth is the
    ignore label still counts in the union of the class predicted there, and a class absent from
    both prediction and ground truth has IoU 0 and still counts in the mean.

    `confusion` counts the same pixels by (true, predicted) label: (K + 1) x (K + 1) for K = num_classes, row and
    column K holding every label value >= K (the ignore label 255; an ignore label inside 0..K-1 is its own row).
    Class c's intersection is confusion[c, c] and its union its row sum plus its column sum minus confusion[c, c].
    """

    def __init__(self, num_classes: int, ignore_label: int) -> None:
        if num_classes < 1:
            raise ProbeError(f"num_classes={num_classes}: give the number of label values (at least 1)")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    @property
    def class_ids(self) -> np.ndarray:
        """The scored classes, in order: range(num_classes) without the ignore label."""
        ids = np.arange(self.num_classes)
        return ids[ids != self.ignore_label]

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or any batch of pixels) of predicted and true labels."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ProbeError(f"prediction shape {pred.shape} differs from label shape {gt.shape}: pass the same pixels")
        pred, gt = pred.ravel().astype(np.int64), gt.ravel().astype(np.int64)
        if pred.size and min(pred.min(), gt.min()) < 0:
            raise ProbeError("labels must be non-negative: map the ignore value to a non-negative label first")
        k = self.num_classes
        pred_count = np.bincount(pred, minlength=k)[:k]
        gt_count = np.bincount(gt, minlength=k)[:k]
        both = np.bincount(gt[pred == gt], minlength=k)[:k]
        self.intersection += both
        self.union += pred_count + gt_count - both
        self.confusion += np.bincount(np.minimum(gt, k) * (k + 1) + np.minimum(pred, k),
                                      minlength=(k + 1) ** 2).reshape(k + 1, k + 1)

    @property
    def iou(self) -> np.ndarray:
        """IoU per scored class (see `class_ids`): intersection / (1e-8 + union)."""
        ids = self.class_ids
        return self.intersection[ids] / (1e-8 + self.union[ids])

    @property
    def miou(self) -> float:
        """Mean IoU over the scored classes, as a fraction."""
        return float(self.iou.mean())


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (np.std), as reported "mean +- std over seeds"."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ProbeError("mean_std got no values: pass at least one score")
    return float(array.mean()), float(array.std())


# PCK: a predicted keypoint is correct at alpha when its distance to the true one is at most alpha x a base size.
PCK_ALPHAS = (0.05, 0.1, 0.15)
PCK_REFERENCE_ALPHA = 0.1  # the one that ranks cells (else the middle of those given)
PCK_BASES = {"bbox": "the longer side of the target's bounding box, max(x2 - x1, y2 - y1)",
             "image": "the longer side of the target image, max(width, height)"}


def check_pck(alphas: Sequence[float], threshold: str, soft_argmax: int | None = None) -> None:
    """Refuse, in one line, alphas outside (0, 1], a base other than PCK_BASES, or a soft-argmax window that is not
    an odd number of pixels."""
    if not alphas or any(not 0 < a <= 1 for a in alphas):
        raise ProbeError(f"--alpha {','.join(map(str, alphas))}: give fractions in (0, 1], e.g. 0.05,0.1,0.15")
    if threshold not in PCK_BASES:
        raise ProbeError(f"--threshold {threshold!r}: use bbox (the target's bounding box, the default) or image (the "
                         "target image)")
    if soft_argmax is not None and (soft_argmax < 1 or soft_argmax % 2 == 0):
        raise ProbeError(f"--soft-argmax {soft_argmax}: give an odd window side in pixels, e.g. 15")


def parse_alphas(text: str) -> list[float]:
    """--alpha's comma-separated fractions, checked."""
    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ProbeError(f"--alpha {text!r}: give comma-separated fractions, e.g. 0.05,0.1,0.15") from None
    check_pck(alphas, "bbox")
    return alphas


def alpha_key(alpha: float) -> str:
    """An alpha as tables and JSON name it: "0.1"."""
    return format(alpha, "g")


def reference_alpha(alphas: Sequence[float]) -> float:
    """PCK_REFERENCE_ALPHA when given, else the middle of `alphas`."""
    return PCK_REFERENCE_ALPHA if PCK_REFERENCE_ALPHA in alphas else sorted(alphas)[len(alphas) // 2]


def pck_correct(table: pd.DataFrame, alpha: float) -> pd.Series:
    """Whether each keypoint (a row with pred_x, pred_y, trg_x, trg_y, bbox_size) is correct at alpha:
    sqrt((pred_x - trg_x)^2 + (pred_y - trg_y)^2) <= alpha * bbox_size."""
    distance = np.sqrt((table.pred_x - table.trg_x) ** 2 + (table.pred_y - table.trg_y) ** 2)
    return distance <= alpha * table.bbox_size


def pck(table: pd.DataFrame, alphas: Sequence[float]) -> dict:
    """PCK in percent of the keypoints of `table` (rows as pck_correct takes them, and their `pair`), by alpha_key:
    `pck_point` pools every keypoint (DIFT's "per point"), `pck_image` is the mean over pairs of each pair's fraction
    (DIFT's "per image"); with the numbers of pairs and keypoints."""
    if table.empty:
        raise ProbeError("pck got no keypoints: pass at least one pair")
    scores = {"pairs": int(table.pair.nunique()), "keypoints": len(table), "pck_point": {}, "pck_image": {}}
    for alpha in alphas:
        hits = pck_correct(table, alpha)
        scores["pck_point"][alpha_key(alpha)] = 100 * int(hits.sum()) / len(table)
        scores["pck_image"][alpha_key(alpha)] = 100 * float(hits.groupby(table.pair, sort=False).mean().mean())
    return scores
