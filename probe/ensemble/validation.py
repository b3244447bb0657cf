"""Checks a fit makes before any work, each failing with one line that names the value and the fix."""

from __future__ import annotations

import numpy as np

from probe.errors import ProbeError


def check_fit(num_classes: int, members: int, batch_size: int, early_batch_size: int | None,
              labels: np.ndarray) -> None:
    """The ensemble's settings and the training labels: >= 2 classes and >= 1 member, batches of >= 2 pixels
    (batch normalisation), at least one batch of pixels, labels in [0, num_classes)."""
    if num_classes < 2 or members < 1:
        raise ProbeError(f"num_classes={num_classes}, members={members}: need >= 2 classes, >= 1 member")
    for name, size in (("batch_size", batch_size), ("early_batch_size", early_batch_size)):
        if size is not None and size < 2:
            raise ProbeError(f"{name}={size}: batch normalisation needs at least 2 pixels per batch")
    if len(labels) < batch_size:
        raise ProbeError(f"{len(labels)} training pixels < batch_size {batch_size}: label more pixels or use a "
                         "smaller batch")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ProbeError(
            f"training labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes}): "
            "remove ignore-label pixels and check num_classes"
        )
