"""Segmentation scores exactly as the authors compute them (ddpm-segmentation's compute_iou)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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
