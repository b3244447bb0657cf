"""Where training pixels come from: the TrainingPixels protocol (labels in memory, features fetched on demand; the
activation store's are probe.features.sampler.StorePixels) and ArrayPixels over features already in memory."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from probe.errors import ProbeError


class TrainingPixels(Protocol):
    """Training pixels: labels in memory, features fetched on demand."""

    dim: int
    labels: np.ndarray

    def features(self, idx: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(len(idx), dim) features of the pixels `idx` as `dtype` (the float32 features, cast)."""
        ...

    def compile(self) -> None:
        """Fetch features through torch.compile from now on, where that is faster (a fit that compiles its step
        calls this)."""
        ...


class ArrayPixels:
    """TrainingPixels over features already in memory."""

    def __init__(self, features: np.ndarray | torch.Tensor, labels: np.ndarray) -> None:
        self._features = torch.as_tensor(features)
        self.labels = np.asarray(labels).astype(np.int64)
        if self._features.ndim != 2 or self.labels.shape != (self._features.shape[0],):
            raise ProbeError(
                f"features {tuple(self._features.shape)} and labels {self.labels.shape} must be (N, D) and (N,)"
            )
        self.dim = int(self._features.shape[1])

    def features(self, idx: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._features[torch.as_tensor(idx)].float().to(dtype)

    def compile(self) -> None:
        """Nothing to compile: the features are rows of a tensor in memory."""
