"""`probe layers`: one figure across models. The per-layer probe of `probe grid` (one MLP per layer and step, fit on
the train images and scored on the test images) for several backbones in one resumable sweep, then per-layer mIoU
against relative depth, one line per backbone; a diffusion backbone's point is its best step at that layer.

The cells are `probe grid`'s own (probe.tasks.grid.grid_cells, run by grid_work), so a backbone's rows here are what
`probe grid` with the same options gives, and its cells/ files have the same keys. Relative depth is
layer_index / (number of the network's layers - 1): 0 for its first layer, 1 for its last (0 for a one-layer
backbone such as pixels). A UNet's layers are its decoder blocks, from the deepest (0) to the output (1); a ViT's
are its encoder layers, from the input (0) to the last (1); a diffusion transformer's (dit, pixart, sd3, flux) are its
blocks, from the first (0) to the last (1; FLUX: the double-stream blocks, then the single-stream ones).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.sources import backbone_spec
from probe.errors import ProbeError
from probe.metrics import alpha_key, reference_alpha
from probe.sweeps.data import SweepData
from probe.sweeps.runner import finish_sweep, run_sweep
from probe.tasks.correspond import CorrespondOptions, run_correspond
from probe.tasks.grid import GridOptions, grid_cells, grid_extraction, grid_splits, grid_work
from probe.utils.outputs import atomic_write, working_dir, write_json

CELL_COLUMNS = ["backbone", "kind", "layer", "layer_index", "layers", "relative_depth", "step", "miou"]
CORRESPONDENCE_COLUMNS = [*CELL_COLUMNS[:-1], "alpha", "pck_image", "pck_point"]


def parse_depths(text: str | None) -> list[float] | None:
    """--depths `0,0.5,1`: relative depths in [0, 1] (None: every layer)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        depths = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ProbeError(f"--depths {text!r}: give relative depths between 0 and 1, e.g. 0,0.5,1") from None
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise ProbeError(f"--depths {text!r}: give relative depths between 0 and 1, e.g. 0,0.5,1")
    return depths


def at_depths(spec: BackboneSpec, depths: list[float] | None, seed: int, native_size: int | None) -> BackboneSpec:
    """`spec` with --blocks set to the layers nearest to `depths` (index round(depth x (layers - 1)))."""
    if depths is None:
        return spec
    total = len(build_backbone(replace(spec, seed=seed), "grid", native_size).all_layers)
    return replace(spec, layers=",".join(str(i) for i in sorted({round(d * (total - 1)) for d in depths})))


def relative_depth(index, layers: int):
    """layer_index / (layers - 1): 0 for a network's first layer, 1 for its last (0 for a one-layer backbone)."""
    return index / (layers - 1) if layers > 1 else 0.0


def best_steps(cells: pd.DataFrame, value: str = "miou") -> pd.DataFrame:
    """One row per (backbone, layer): the step with the highest `value` (the smallest such step on a tie)."""
    ordered = cells.assign(_order=range(len(cells))).sort_values([value, "step"], ascending=[False, True],
                                                                   na_position="first", kind="stable")
    best = ordered.drop_duplicates(["backbone", "layer"]).sort_values("_order")
    return best.drop(columns="_order").reset_index(drop=True)


def run_layers(data: SweepData, entries: list[tuple[str, BackboneSpec]], seed: int, out: Path, *,
               train_number: int | None = None, test_number: int | None = None, members: int = 1,
               depths: list[float] | None = None, ray: str | None = None, threads: int | None = None,
               gpus_per_cell: float = 0, progress: bool = True, sweep_options: dict | None = None,
               dry_run: bool = False, downloads: Sequence[str] = ()) -> pd.DataFrame:
    """Run (or resume) every backbone's grid cells in the sweep folder `out`; write layers_cells.csv (every cell),
    layers.csv (per backbone and layer: the best step and its mIoU), layers.png and layers.json; return
    layers.csv's table. `sweep_options`: the command's result-determining options, which a rerun must repeat
    (`run_sweep`). `depths`: probe only the layers nearest to these relative depths (None: every layer).
    `downloads`: what the command downloaded first, named on the plan."""
    started = time.time()
    source = data.source()
    grids = []
    for label, spec in entries:  # every backbone is built first: a bad option fails before any probe is fit
        spec = at_depths(backbone_spec(source, spec, progress=progress), depths, seed, source.native_size)
        options = GridOptions(backbone=spec, train_number=train_number, test_number=test_number, members=members)
        backbone, cells = grid_cells(data, options, seed)
        grids.append((label, backbone, [replace(cell, title=f"{label} {cell.title}") for cell in cells]))
    keys = [cell.key for _, _, cells in grids for cell in cells]
    if len(set(keys)) != len(keys):
        raise ProbeError("--backbones names the same backbone twice (same kind, checkpoint and options)")
    def extractions(todo: list) -> list:
        keys = {cell.key for cell in todo}
        chosen = []
        for _, backbone, cells in grids:
            mine = [cell for cell in cells if cell.key in keys]
            if mine:
                train, test = grid_splits(data.dataset, data.data_root, data.data, backbone.image_size,
                                          train_number, test_number, data.fit)
                chosen.append(grid_extraction(backbone, mine, train + test, data.cache, (len(train), len(test))))
        return chosen

    records = run_sweep([cell for _, _, cells in grids for cell in cells], grid_work, out, command="layers", ray=ray,
                        threads=threads, gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options,
                        extractions=extractions, dry_run=dry_run, downloads=downloads)
    by_key = {record["key"]: record for record in records}
    per_class = []
    for label, backbone, cells in grids:
        depth = len(backbone.all_layers)
        for cell in cells:
            layer, index = cell.config["layer"], backbone.layer_index(cell.config["layer"])
            for name, iou in by_key[cell.key]["result"]["per_class"].items():
                per_class.append({"backbone": label, "kind": backbone.kind, "layer": layer, "layer_index": index,
                                  "layers": depth, "relative_depth": relative_depth(index, depth),
                                  "step": cell.config["step"], "class": name, "iou": iou})
    table = pd.DataFrame(per_class).astype({"step": "Int64"})
    keys = [c for c in CELL_COLUMNS if c != "miou"]
    # as grid.csv's "all" rows: the mean of the per-class IoU of each cell
    cells_table = table.groupby(keys, as_index=False, dropna=False, sort=False)["iou"].mean().rename(
        columns={"iou": "miou"})[CELL_COLUMNS]
    best = best_steps(cells_table)
    atomic_write(out / "layers_cells.csv", lambda p: cells_table.to_csv(p, index=False))
    atomic_write(out / "layers.csv", lambda p: best.to_csv(p, index=False))
    plots.layer_depth_lines(best, out / "layers.png",
                            title=f"per-layer probe on {source.name} (diffusion backbones: their best t)")
    write_json(out / "layers.json", {
        "dataset": source.name, "seed": seed, "train_number": train_number, "test_number": test_number,
        "members": members, "relative_depth": "layer_index / (layers - 1)",
        "backbones": [{"label": label, "kind": backbone.kind, "identity": backbone.identity,
                       "layers": backbone.layers, "steps": backbone.steps,
                       "best": _best(best[best.backbone == label])} for label, backbone, _ in grids],
        "cells": len(records), "threads": sorted({r["threads"] for r in records}),
        "seconds": round(time.time() - started, 1),
    })
    finish_sweep(out, ["layers_cells.csv", "layers.csv", "layers.png", "layers.json"])
    return best


def _best(rows: pd.DataFrame, value: str = "miou") -> dict:
    top = rows.sort_values(value, ascending=False, kind="stable").iloc[0]
    return {"layer": top.layer, "relative_depth": float(top.relative_depth),
            "step": None if pd.isna(top.step) else int(top.step), value: float(top[value])}


def run_correspondence_layers(folder: Path, entries: list[tuple[str, BackboneSpec]], options: CorrespondOptions,
                              seed: int, out: Path, *, cache: str | Path | None = None, threads: int | None = None,
                              progress: bool = True, sweep_options: dict | None = None,
                              dry_run: bool = False) -> pd.DataFrame:
    """`probe layers --task correspondence`: `probe correspond` for each backbone over the pairs of `folder`, each a
    resumable sweep in out/<label>/ with all of its outputs; then PCK per image (and per point) at the reference alpha
    per layer against relative depth, a diffusion backbone's point its best step by PCK per image: layers_cells.csv,
    layers.csv, layers.png and layers.json in `out`; returns layers.csv's table."""
    started = time.time()
    alpha = reference_alpha(options.alphas)
    parts = []
    runs = {}
    if not dry_run:
        working_dir(out, command="layers")
    for label, spec in entries:
        found = run_correspond(folder, spec, options, seed, out / label, cache=cache, threads=threads,
                               progress=progress, sweep_options=sweep_options, dry_run=dry_run)
        depth = found.layer_count
        rows = found.grid[found.grid.alpha == alpha].rename(columns={"block": "layer"})
        parts.append(rows.assign(backbone=label, kind=spec.kind, layers=depth,
                                 relative_depth=relative_depth(rows.layer_index, depth)))
        runs[label] = {"kind": spec.kind, "best": found.metrics["best"],
                       "pck_image": found.metrics["pck_image"], "same_position": found.metrics["same_position"]}
    cells_table = pd.concat(parts, ignore_index=True)[CORRESPONDENCE_COLUMNS]
    best = best_steps(cells_table, "pck_image")
    atomic_write(out / "layers_cells.csv", lambda p: cells_table.to_csv(p, index=False))
    atomic_write(out / "layers.csv", lambda p: best.to_csv(p, index=False))
    plots.layer_depth_lines(best, out / "layers.png", value="pck_image",
                            value_label=f"PCK per image @{alpha_key(alpha)} ({options.threshold}), %",
                            title=f"correspondence per layer on {Path(folder).name} (diffusion backbones: their best t)")
    write_json(out / "layers.json", {
        "task": "correspondence", "dataset": Path(folder).name, "data": str(folder), "seed": seed, "alpha": alpha,
        "options": asdict(options), "relative_depth": "layer_index / (layers - 1)",
        "backbones": [{"label": label, **run, "best_layer": _best(best[best.backbone == label], "pck_image")}
                      for label, run in runs.items()],
        "seconds": round(time.time() - started, 1),
    })
    finish_sweep(out, ["layers_cells.csv", "layers.csv", "layers.png", "layers.json", *runs])
    return best
