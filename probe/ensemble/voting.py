"""From the members' logits to a prediction: majority-vote labels, the Jensen-Shannon divergence between the
members (per pixel) and an image's uncertainty (the mean of its largest divergences), as Baranchuk et al. define
them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def majority_vote(member_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M, N) labels -> (N,) most frequent label per pixel; ties go to the smallest label."""
    votes = F.one_hot(member_labels, num_classes).sum(0)
    return votes.argmax(-1)


def jensen_shannon(logits: torch.Tensor) -> torch.Tensor:
    """(M, N, K) logits -> (N,) entropy of the mean softmax minus the mean of the members' entropies."""
    log_probs = F.log_softmax(logits, -1)
    probs = log_probs.exp()
    member_entropy = -(probs * log_probs).sum(-1).mean(0)
    mean_probs = probs.mean(0)
    return -torch.special.xlogy(mean_probs, mean_probs).sum(-1) - member_entropy


def image_uncertainty(js: np.ndarray | torch.Tensor) -> float:
    """An image's uncertainty: the mean of its int(N / 10) largest per-pixel JS values (at least one)."""
    values = np.asarray(js, dtype=np.float64).ravel()
    top = max(1, values.size // 10)
    return float(np.partition(values, values.size - top)[-top:].mean())


def vote(logits_of: Callable[[torch.Tensor], torch.Tensor], parts: tuple[torch.Tensor, ...],
         num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int64) and Jensen-Shannon divergences (float32) of the pixels of `parts`, whose (M, n, K) logits
    `logits_of` computes part by part (without gradients)."""
    labels, divergences = [], []
    with torch.no_grad():
        for part in parts:
            logits = logits_of(part)
            labels.append(majority_vote(logits.argmax(-1), num_classes).cpu())
            divergences.append(jensen_shannon(logits).cpu())
    return torch.cat(labels).numpy().astype(np.int64), torch.cat(divergences).numpy().astype(np.float32)
