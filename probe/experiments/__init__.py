"""The paper's sweeps as lists of runner cells. Every cell is one `probe segment` fit and score (`segment_work`),
configured by a JSON dict, so a sweep runs in this process or on Ray with the same numbers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probe.backbones import BackboneSpec
from probe.ensemble import BATCH_SIZE, EARLY_BATCH_SIZE
from probe.segment import Evaluation, SegmentOptions, evaluate
from probe.sources import Source, backbone_spec, open_source


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


def segment_config(data: SweepData, spec: BackboneSpec, *, train_number: int | None, test_number: int | None = None,
                   members: int = 10, precision: str = "auto", train_draw: bool = False, batched: bool = True,
                   train_data: str | None = None, early_batch_size: int = EARLY_BATCH_SIZE, **extra) -> dict:
    """A cell's config: everything `segment_work` needs (the SegmentOptions fields), JSON-ready (the seed is the
    cell's). `extra` entries (e.g. a corruption) are passed to the work function as they are. `early_batch_size`
    enters only when it is not the authors' 64, so the cells of sweeps on the authors' rule keep their keys."""
    full = backbone_spec(data.source(), spec).to_dict()
    full.pop("seed")
    label = "_".join([spec.kind, *([spec.noise] if spec.noise else []), *(f"{k}{v}" for k, v in extra.items()),
                      f"n{train_number or 'all'}"])
    return {"label": label, "data": data.config(), "backbone": full, "train_number": train_number,
            "test_number": test_number, "members": members, "precision": precision, "train_draw": train_draw,
            "batched": batched, "train_data": train_data,
            **({"early_batch_size": early_batch_size} if early_batch_size != BATCH_SIZE else {}), **extra}


@functools.lru_cache(maxsize=8)
def _source(dataset: str | None, data_root: str | None, data: str | None, fit: str | None = None) -> Source:
    return open_source(dataset, data_root, data, fit=fit)


def evaluate_cell(spec: dict) -> tuple[Evaluation, Source, Path | None]:
    """A segment cell's fit and score (the Evaluation), its data source and its activation store folder. The data
    source and the networks are loaded once per process."""
    data = SweepData(**spec["data"])
    source = data.source()
    options = SegmentOptions(backbone=BackboneSpec.from_dict(spec["backbone"]), train_number=spec["train_number"],
                             test_number=spec["test_number"], members=spec["members"], precision=spec["precision"],
                             train_draw=spec["train_draw"], batched=spec["batched"], train_data=spec["train_data"],
                             early_batch_size=spec.get("early_batch_size", BATCH_SIZE))
    cache = Path(data.cache) if data.cache else None
    return evaluate(source, options, spec["seed"], cache, progress=False), source, cache


def segment_work(spec: dict, threads: int) -> dict:
    """One cell: fit and score one ensemble as `probe segment` does; returns its metrics (mIoU, per class, times,
    the images used)."""
    metrics = evaluate_cell(spec)[0].metrics
    return {key: metrics[key] for key in ("miou", "per_class", "seconds", "training_pixels", "precision",
                                          "train_images", "test_images")}


def mean_std_table(table: pd.DataFrame, rows: str, columns: str, value: str = "miou") -> str:
    """A markdown table of `value` as mean ± std (population) over seeds, `rows` x `columns`, like the paper's."""
    stats = table.groupby([rows, columns], sort=False)[value].agg(mean="mean", std=lambda v: v.std(ddof=0))
    row_keys = list(dict.fromkeys(table[rows]))
    column_keys = list(dict.fromkeys(table[columns]))
    lines = [f"| {rows} | " + " | ".join(f"{columns} {c}" for c in column_keys) + " |",
             "|---|" + "---|" * len(column_keys)]
    for r in row_keys:
        cells = [f"{stats.loc[(r, c), 'mean']:.1f} ± {stats.loc[(r, c), 'std']:.1f}" if (r, c) in stats.index else ""
                 for c in column_keys]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
