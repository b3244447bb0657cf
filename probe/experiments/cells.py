"""What the paper's sweeps share: their cells. Every cell is one `probe segment` fit and score (`segment_work`),
configured by a JSON dict, so a sweep runs in this process or on Ray with the same numbers; `segment_extractions`
gives the sweep's plan what those cells extract."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from probe.backbones import BackboneSpec, build_backbone
from probe.data.sources import Source, backbone_spec
from probe.ensemble import BATCH_SIZE, EARLY_BATCH_SIZE
from probe.sweeps.data import SweepData
from probe.sweeps.plan import Extraction
from probe.tasks.segment import Evaluation, SegmentOptions, evaluate, scored_images, training_images


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
    the images used) and what it extracted (run_sweep's `extraction`)."""
    evaluation = evaluate_cell(spec)[0]
    metrics = evaluation.metrics
    return {**{key: metrics[key] for key in ("miou", "per_class", "seconds", "training_pixels", "precision",
                                             "train_images", "test_images")},
            "extraction": asdict(evaluation.extraction)}


def segment_extractions(cells: list, corrupted: bool = False) -> list[Extraction]:
    """The extractions of sweep cells made by segment_config (efficiency, variants, robustness, segment --seeds): per
    cell, its backbone at its seed over its train and test images; `corrupted`: also the test images' corrupted copies
    (a temporary store per corruption and severity)."""
    built, splits, extractions = {}, {}, []
    for cell in cells:
        config = cell.config
        data = SweepData(**config["data"])
        source = data.source()
        spec = BackboneSpec.from_dict(config["backbone"])
        spec_key = repr(sorted(config["backbone"].items(), key=str))
        if (spec_key, cell.seed) not in built:
            first = next((b for (k, _), b in built.items() if k == spec_key), None)
            other = first.reseeded(cell.seed) if first is not None else None
            built[spec_key, cell.seed] = (other if other is not None else
                                          build_backbone(replace(spec, seed=cell.seed), "segment", source.native_size))
        backbone = built[spec_key, cell.seed]
        options = SegmentOptions(backbone=spec, train_number=config["train_number"],
                                 test_number=config["test_number"], train_draw=config["train_draw"],
                                 train_data=config["train_data"])
        resolution = backbone.image_size
        train_key = (repr(config["data"]), resolution, options.train_number,
                     cell.seed if options.train_draw else None, options.train_data)
        if train_key not in splits:
            splits[train_key] = training_images(source, options, resolution, cell.seed)
        test_key = (repr(config["data"]), resolution, "test", options.test_number)
        if test_key not in splits:
            splits[test_key] = scored_images(source, options, resolution)
        train, test = splits[train_key], splits[test_key]
        extractions.append(Extraction(backbone, train + test, data.cache, split=(len(train), len(test))))
        if corrupted:
            repeats = len(config["corruptions"]) * len(config["severities"])
            extractions.append(Extraction(backbone, splits[test_key], data.cache, temporary=True, repeats=repeats))
    return extractions


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
