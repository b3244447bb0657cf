"""A sweep's data options, as its cells carry them: JSON-able, so a Ray worker opens the same data source."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from probe.data.sources import Source, open_source


@dataclass
class SweepData:
    """The data options of a sweep (as for `probe segment`) and where activations are cached."""

    dataset: str | None = None
    data_root: str | None = None
    data: str | None = None
    cache: str | None = None
    fit: str | None = None  # --fit: how non-square images are made square

    def source(self) -> Source:
        """The data source, opened once per process."""
        return _source(self.dataset, self.data_root, self.data, self.fit)

    def config(self) -> dict:
        """The fields for a cell's config; `fit` only when given, so that the cells of sweeps without it keep
        their keys."""
        return {k: v for k, v in vars(self).items() if k != "fit" or v is not None}


@functools.lru_cache(maxsize=8)
def _source(dataset: str | None, data_root: str | None, data: str | None, fit: str | None = None) -> Source:
    return open_source(dataset, data_root, data, fit=fit)
