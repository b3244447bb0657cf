"""Per-cell probing (the paper's Fig. 2 and 3): an MLP probe per (layer, diffusion step) of a backbone (one column
for backbones without steps), scored by mIoU over all, small and large classes. Each probe is a cell of the sweep
runner, so a grid resumes where it stopped and fans out over a Ray cluster."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe import plots
from probe.backbones import Backbone, BackboneSpec, build_backbone
from probe.data.layout import SPLIT_NUMBER, LabeledImage
from probe.errors import ProbeError, counting_files
from probe.features.store import ActivationStore
from probe.sweeps.data import SweepData
from probe.sweeps.plan import Extraction
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.segment import fit_and_predict, resolved_spec
from probe.utils.outputs import atomic_write, write_json


def class_areas(images: list[LabeledImage], num_classes: int, ignore_label: int) -> np.ndarray:
    """Each class's mean area: the fraction of an image's pixels it covers, averaged over all annotated images
    (images where it is absent count as 0). The ignore label's entry is NaN."""
    fractions = np.stack([np.bincount(im.labels.ravel()[im.labels.ravel() != ignore_label], minlength=num_classes)[:num_classes]
                          / im.labels.size for im in images])
    areas = fractions.mean(axis=0)
    if 0 <= ignore_label < num_classes:
        areas[ignore_label] = np.nan
    return areas


def size_groups(areas: np.ndarray, threshold: float | None) -> tuple[dict[int, str], float]:
    """{class: 'small' | 'large'}: small when its mean area is below the threshold (default: the median area of the
    classes present in the images; absent classes, area 0, are small)."""
    scored = {c: a for c, a in enumerate(areas) if not np.isnan(a)}
    if threshold is None:
        present = [a for a in scored.values() if a > 0]
        threshold = float(np.median(present)) if present else 0.0
    if not 0 < threshold < 1:
        raise ProbeError(f"--size-threshold {threshold}: give a fraction of the image between 0 and 1, e.g. 0.02")
    return {c: "small" if a < threshold else "large" for c, a in scored.items()}, threshold


def group_means(per_class: pd.DataFrame) -> pd.DataFrame:
    """The mIoU (%) per (layer, step) over all classes and over each size group, from the IoU per class (columns
    layer, layer_index, step, class, group, iou): columns layer, layer_index, step, group, miou."""
    keys = ["layer_index", "layer", "step"]
    return pd.concat([
        per_class.groupby(keys, as_index=False, dropna=False)["iou"].mean().assign(group="all"),
        per_class.groupby([*keys, "group"], as_index=False, dropna=False)["iou"].mean(),
    ]).rename(columns={"iou": "miou"})[["layer", "layer_index", "step", "group", "miou"]]


@dataclass
class GridOptions:
    backbone: BackboneSpec = field(default_factory=BackboneSpec)  # its seed is replaced by the run's seed
    train_number: int | None = None  # None: up to SPLIT_NUMBER
    test_number: int | None = None
    members: int = 1
    size_threshold: float | None = None


def grid_work(spec: dict, threads: int) -> dict:
    """One cell of the grid: the probe of one (layer, step), fit on the train images and scored on the test images;
    its IoU (%) per class and what it extracted (run_sweep's `extraction`). Every cell builds the same backbone (all
    of the grid's layers and steps), so the cells share one store folder and the first cell of a step extracts that
    step for all layers."""
    data = SweepData(**spec["data"])
    source = data.source()
    backbone = build_backbone(BackboneSpec.from_dict(spec["backbone"], seed=spec["seed"]), "grid", source.native_size)
    train, test = grid_splits(data.dataset, data.data_root, data.data, backbone.image_size, spec["train_number"],
                              spec["test_number"], data.fit)
    store = ActivationStore(backbone, spec["data"]["cache"])
    with counting_files(lambda: store.written):
        extracted = store.fill(train + test, progress=False, steps=[spec["step"]])
        fitted = fit_and_predict(store, [backbone.cell_name(spec["layer"], spec["step"])], train, test,
                                 source.num_classes, source.ignore_label, spec["members"], spec["seed"],
                                 device=spec["backbone"]["device"], progress=False)
    return {"per_class": {source.class_names[c]: 100 * iou for c, iou in zip(fitted.score.class_ids, fitted.score.iou)},
            "seconds": fitted.seconds, "extraction": asdict(extracted)}


@functools.lru_cache(maxsize=2)
def grid_splits(dataset: str | None, data_root: str | None, data: str | None, size: int, train_number: int | None,
                test_number: int | None, fit: str | None = None) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """The grid's train and test images at `size` (up to SPLIT_NUMBER each unless a number is given), read once per
    process: every cell of a grid (and of `probe layers`) probes the same images."""
    source = SweepData(dataset, data_root, data, fit=fit).source()
    return (source.split("train", size, train_number, SPLIT_NUMBER, option="--train-number"),
            source.split("test", size, test_number, SPLIT_NUMBER, option="--test-number"))


def grid_cells(data: SweepData, options: GridOptions, seed: int) -> tuple[Backbone, list[SweepCell]]:
    """The grid's backbone (all of its grid layers and steps) and its cells, one probe per (layer, step), layer-major:
    the cells running at once on Ray are at different steps, so each step is extracted once. `probe layers` runs
    the same cells for several backbones in one sweep."""
    backbone = build_backbone(replace(options.backbone, seed=seed), "grid", data.source().native_size)
    spec = resolved_spec(options.backbone, backbone).to_dict()
    spec.pop("seed")
    cells = [SweepCell({"label": backbone.cell_name(layer, t), "data": data.config(), "backbone": spec, "layer": layer,
                   "step": t, "train_number": options.train_number, "test_number": options.test_number,
                   "members": options.members}, seed, title=layer if t is None else f"{layer} t={t}")
             for layer in backbone.layers for t in backbone.steps]
    return backbone, cells


def grid_extraction(backbone: Backbone, todo: list[SweepCell], images: list[LabeledImage], cache,
                    split: tuple[int, int] | None = None) -> Extraction:
    """What the grid cells `todo` extract: every grid layer of `backbone` at their steps (grid_work), over `images`
    (`split`: how many of them train and test each probe, named on the plan)."""
    steps = {cell.config["step"] for cell in todo}
    return Extraction(backbone, images, cache, steps=[t for t in backbone.steps if t in steps], split=split)


def run_grid(data: SweepData, options: GridOptions, seed: int, out: Path, *, ray: str | None = None,
             threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
             sweep_options: dict | None = None, dry_run: bool = False, downloads: Sequence[str] = ()) -> pd.DataFrame:
    """Fit one probe per (layer, step), each a cell of the sweep runner (resumable, in this process or on Ray);
    write tables and figures to the sweep folder `out`; return the table of mIoU per cell and class group.
    `sweep_options`: the command's result-determining options, which a rerun must repeat (`run_sweep`).
    The plan is printed first (`dry_run`: only the plan, then probe.errors.DryRun; `downloads`: what the command
    downloaded first, named on it)."""
    started = time.time()
    source = data.source()
    backbone, cells = grid_cells(data, options, seed)
    train, test = grid_splits(data.dataset, data.data_root, data.data, backbone.image_size, options.train_number,
                              options.test_number, data.fit)
    areas = class_areas(train + test, source.num_classes, source.ignore_label)
    groups, cut = size_groups(areas, options.size_threshold)
    records = run_sweep(cells, grid_work, out, command="grid", ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                        progress=progress, options=sweep_options, dry_run=dry_run, downloads=downloads,
                        extractions=lambda todo: [grid_extraction(backbone, todo, train + test, data.cache,
                                                                  (len(train), len(test)))])
    index = {name: c for c, name in enumerate(source.class_names)}
    per_class = pd.DataFrame([
        {"layer": r["config"]["layer"], "layer_index": backbone.layer_index(r["config"]["layer"]),
         "step": r["config"]["step"], "class": name, "group": groups[index[name]], "iou": iou}
        for r in records for name, iou in r["result"]["per_class"].items()]).astype({"step": "Int64"})
    table = group_means(per_class)
    atomic_write(out / "grid_per_class.csv", lambda p: per_class.to_csv(p, index=False))
    atomic_write(out / "grid.csv", lambda p: table.to_csv(p, index=False))
    class_table = pd.DataFrame([{"class": source.class_names[c], "label": c, "mean_area": areas[c], "group": g}
                                for c, g in groups.items()])
    atomic_write(out / "class_groups.csv", lambda p: class_table.to_csv(p, index=False))
    vmin, vmax = table["miou"].min(), table["miou"].max()
    for group in ("all", "small", "large"):
        plots.grid_heatmap(table, out / f"grid_{group}.png", group=group, layer_title=backbone.layer_title,
                           title=f"mIoU of a probe per {backbone.layer_title} and step: {group} classes",
                           vmin=vmin, vmax=vmax)
    plots.grid_lines(table, out / "grid_lines.png", group="all", layer_title=backbone.layer_title)
    best = table[table.group == "all"].sort_values("miou").iloc[-1]
    write_json(out / "grid.json", {
        "dataset": source.name, "seed": seed, "options": {**asdict(options), "backbone": options.backbone.to_dict()},
        "layers": backbone.layers, "steps": backbone.steps, "size_threshold": cut, "features": backbone.identity,
        "best": {"layer": best.layer, "step": None if pd.isna(best.step) else int(best.step),
                 "miou": float(best.miou)},
        "cells": len(cells), "threads": sorted({r["threads"] for r in records}),
        "seconds": round(time.time() - started, 1),
        "train_images": [im.stem for im in train], "test_images": [im.stem for im in test],
    })
    finish_sweep(out, ["grid_per_class.csv", "grid.csv", "class_groups.csv", "grid_all.png", "grid_small.png",
                       "grid_large.png", "grid_lines.png", "grid.json"])
    return table
