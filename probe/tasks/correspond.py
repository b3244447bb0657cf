"""`probe correspond`: zero-shot semantic correspondence by DIFT's protocol (Tang et al., NeurIPS 2023), per cell
(layer, step) of a backbone, over pairs in SPair-71k's layout (probe.data.pairs).

For each pair and cell:
- both images' maps come from the activation store, extracted from the images stretched to the backbone's square
  input (as DIFT resizes to 768 x 768);
- each map is upsampled bilinearly (align_corners=False) to its image's own size, by the pixel sampler, band by band
  of rows: no upsampled map is ever held whole;
- a source keypoint's feature is the upsampled source map at its nearest pixel; its match is the pixel of the whole
  target map of highest cosine similarity (the first one on a tie, in raster order), or with `soft_argmax` the
  softmax-weighted mean position (temperature SOFT_ARGMAX_TEMPERATURE) over the window of that size around it;
- the match is correct at alpha when its distance to the target keypoint, sqrt(dx^2 + dy^2) in the target's own
  pixels, is at most alpha x the threshold's base: the target bounding box's longer side ("bbox", DIFT's and SPair's
  rule) or the target image's longer side ("image") (probe.metrics.pck_correct).

PCK per point pools every keypoint; PCK per image is the mean over pairs of each pair's fraction; both in percent
(probe.metrics.pck).

Each cell of the sweep is one (layer, step) and returns its predictions; the thresholds and alphas are applied to
them afterwards, so a rerun with other ones reuses every cell. The maps of a pair go through `matching_maps` before
the cosine matching: the one place where a channel filter belongs.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from probe import plots
from probe.backbones import Backbone, BackboneSpec, build_backbone
from probe.data.pairs import (
    Pair,
    PairImages,
    check_per_category,
    open_picture,
    pair_images,
    read_pairs,
    select_pairs,
)
from probe.errors import counting_files
from probe.features.massive import MASSIVE_RATIO, drop_channels, massive_channels
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore, image_key
from probe.metrics import PCK_ALPHAS, PCK_BASES, alpha_key, check_pck, pck, pck_correct, reference_alpha
from probe.plots.correspondence import MatchPanel
from probe.sweeps.plan import Extraction
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.segment import resolved_spec
from probe.utils.outputs import atomic_write, write_json

FREE_INPUT_SIZE = 256  # the input side of the backbones whose input size is free (pixels, swav) without --image-size
SOFT_ARGMAX_TEMPERATURE = 0.04  # on cosine similarities
BAND_BYTES = 32 * 2 ** 20  # the upsampled target features of one band of rows, float32
FIGURE_PAIRS = 4  # pairs drawn in matches.png
MASSIVE_IMAGES = 32  # --drop-massive: the images (first by store key) whose maps the channels are found over
KEYPOINT_COLUMNS = ["block", "step", "pair", "category", "viewpoint", "keypoint", "src_x", "src_y", "trg_x", "trg_y",
                    "pred_x", "pred_y", "bbox_size"]


@dataclass
class CorrespondOptions:
    """The protocol's choices (the module docstring)."""

    alphas: Sequence[float] = PCK_ALPHAS
    threshold: str = "bbox"  # the base size: a key of probe.metrics.PCK_BASES
    soft_argmax: int | None = None  # the window's side in target pixels (odd); None: the nearest neighbour
    pairs: int | None = None  # at most this many pairs per category, first by name; None: all
    drop_massive: bool = False  # drop each cell's massive-activation channels (probe.features.massive) first


def check_options(options: CorrespondOptions) -> None:
    """Refuse, in one line, an option value the protocol cannot take."""
    check_pck(options.alphas, options.threshold, options.soft_argmax)
    check_per_category(options.pairs)


@functools.lru_cache(maxsize=2)
def chosen_pairs(folder: str, per_category: int | None) -> tuple[Pair, ...]:
    """The pairs of `folder` (read once per process), at most `per_category` per category, first by name."""
    return tuple(select_pairs(read_pairs(folder), per_category))


@functools.lru_cache(maxsize=2)
def pair_inputs(folder: str, per_category: int | None, size: int) -> tuple[PairImages, dict[Path, str]]:
    """The pairs' images at the backbone's input `size` and each one's activation-store key, found once per process."""
    images = PairImages(pair_images(chosen_pairs(folder, per_category)), size)
    return images, {path: image_key(image) for path, image in zip(images.paths, images)}


def matching_maps(source: np.ndarray, target: np.ndarray, dropped: Sequence[int] = ()) -> torch.Tensor:
    """The (C, h, w) maps of a pair's source and target as the matching compares them: (2, C', h, w) float32, the
    channels `dropped` left out (massive activations, which would dominate the cosine similarity)."""
    maps = torch.from_numpy(np.stack([np.asarray(source, dtype=np.float32), np.asarray(target, dtype=np.float32)]))
    return drop_channels(maps, dropped) if dropped else maps


def match_pair(maps: torch.Tensor, source_size: tuple[int, int], target_size: tuple[int, int], points: np.ndarray,
               window: int | None = None) -> np.ndarray:
    """The (K, 2) predicted (x, y) in the target's pixels of the source keypoints `points` ((K, 2) x, y): `maps`
    (matching_maps) upsampled to the images' (width, height) sizes, nearest neighbour by cosine similarity over the
    whole target map (with `window`: the soft-argmax around it)."""
    (source_width, source_height), (width, height) = source_size, target_size
    sampler = PixelSampler([maps], [(source_height, source_width), (height, width)])
    xs = np.clip(np.rint(points[:, 0]), 0, source_width - 1).astype(np.int64)
    ys = np.clip(np.rint(points[:, 1]), 0, source_height - 1).astype(np.int64)
    queries = F.normalize(sampler.gather(np.zeros(len(points), dtype=np.int64), ys, xs), dim=1)  # (K, C)
    rows = max(1, BAND_BYTES // (4 * width * maps.shape[1]))
    best = torch.full((len(points),), -math.inf)
    where = torch.zeros(len(points), dtype=torch.long)
    for start in range(0, height, rows):
        similarity = similarities(sampler, queries, start, min(height, start + rows))  # (n * width, K)
        value, index = similarity.max(dim=0)
        better = value > best  # strictly: on a tie the earlier band keeps its pixel
        best[better], where[better] = value[better], index[better] + start * width
    found_y, found_x = np.divmod(where.numpy(), width)
    if window is None:
        return np.stack([found_x, found_y], axis=1)
    return np.stack([soft_argmax(sampler, queries[k:k + 1], int(found_x[k]), int(found_y[k]), window, width, height)
                     for k in range(len(points))])


def similarities(sampler: PixelSampler, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Cosine similarity of each upsampled target pixel of rows start..stop-1 (raster order) with each query."""
    return F.normalize(sampler.image_features(1, slice(start, stop)), dim=1) @ queries.T


def soft_argmax(sampler: PixelSampler, query: torch.Tensor, x: int, y: int, window: int, width: int,
                height: int) -> np.ndarray:
    """(x, y): the mean position over the window x window pixels around (x, y) (cut at the image's edges), each
    weighted by softmax(cosine similarity / SOFT_ARGMAX_TEMPERATURE)."""
    half = window // 2
    top, bottom, left, right = max(0, y - half), min(height, y + half + 1), max(0, x - half), min(width, x + half + 1)
    values = similarities(sampler, query, top, bottom).view(bottom - top, width)[:, left:right]
    weights = torch.softmax(values.reshape(-1).double() / SOFT_ARGMAX_TEMPERATURE, dim=0).view_as(values)
    grid_y, grid_x = torch.meshgrid(torch.arange(top, bottom, dtype=torch.float64),
                                    torch.arange(left, right, dtype=torch.float64), indexing="ij")
    return np.array([float((weights * grid_x).sum()), float((weights * grid_y).sum())])


def match_cell(store: ActivationStore, pairs: Sequence[Pair], keys: dict[Path, str], name: str,
               window: int | None = None, drop_massive: bool = False) -> tuple[dict[str, list], list[int]]:
    """({pair name: [[pred_x, pred_y], ...]}, the channels dropped) of the cell `name` for every pair, from the store
    (filled). With `drop_massive`, the cell's massive-activation channels are found over the maps of up to
    MASSIVE_IMAGES of the pairs' images (the same for every pair, so both sides drop the same ones) and left out."""
    dropped = []
    if drop_massive:
        chosen = sorted(set(keys.values()))[:MASSIVE_IMAGES]
        dropped = massive_channels([np.load(store.path(key, name), mmap_mode="r") for key in chosen])
    predictions = {}
    for pair in pairs:
        maps = matching_maps(*(np.load(store.path(keys[path], name), mmap_mode="r") for path in pair.images), dropped)
        predicted = match_pair(maps, pair.source_size, pair.target_size, pair.source_points, window)
        predictions[pair.name] = predicted.tolist()
    return predictions, dropped


def correspond_work(spec: dict, threads: int) -> dict:
    """One cell of the sweep: every pair matched with the maps of one (layer, step); its predictions and what it
    extracted. Every cell builds the same backbone, so the first cell of a step extracts it for all layers."""
    data = spec["data"]
    pairs = chosen_pairs(data["folder"], data["pairs"])
    backbone = build_backbone(BackboneSpec.from_dict(spec["backbone"], seed=spec["seed"]), "grid", FREE_INPUT_SIZE)
    images, keys = pair_inputs(data["folder"], data["pairs"], backbone.image_size)
    store = ActivationStore(backbone, data["cache"])
    with counting_files(lambda: store.written):
        extracted = store.fill(images, progress=False, steps=[spec["step"]])
    predictions, dropped = match_cell(store, pairs, keys, backbone.cell_name(spec["layer"], spec["step"]),
                                      spec["soft_argmax"], spec["drop_massive"])
    return {"predictions": predictions, "massive_channels": dropped, "extraction": asdict(extracted)}


def keypoint_table(pairs: Sequence[Pair], cells: Sequence[tuple[str, int | None, dict]], threshold: str
                   ) -> pd.DataFrame:
    """keypoints.csv: a row per keypoint of each pair per cell; `cells` are (layer, step, predictions) with
    predictions as match_cell gives them; bbox_size is the threshold's base in the target's pixels."""
    parts = []
    for layer, step, predictions in cells:
        for pair in pairs:
            predicted = np.asarray(predictions[pair.name])
            count = len(pair.source_points)
            if threshold == "bbox":
                x1, y1, x2, y2 = pair.target_box
                base = max(x2 - x1, y2 - y1)
            else:
                base = float(max(pair.target_size))
            parts.append(pd.DataFrame({
                "block": layer, "step": step, "pair": pair.name, "category": pair.category,
                "viewpoint": pair.viewpoint, "keypoint": np.arange(count),
                "src_x": pair.source_points[:, 0], "src_y": pair.source_points[:, 1],
                "trg_x": pair.target_points[:, 0], "trg_y": pair.target_points[:, 1],
                "pred_x": predicted[:, 0], "pred_y": predicted[:, 1], "bbox_size": base}))
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"step": "Int64", "viewpoint": "Int64"})[KEYPOINT_COLUMNS]


def summary(table: pd.DataFrame, alphas: Sequence[float]) -> dict:
    """The PCKs of one cell's keypoints overall, per category and, where the pairs have it, per viewpoint
    variation."""
    scores = pck(table, alphas)
    scores["per_category"] = {category: pck(rows, alphas) for category, rows in table.groupby("category")}
    known = table[table.viewpoint.notna()]
    scores["per_viewpoint"] = {str(int(v)): pck(rows, alphas) for v, rows in known.groupby("viewpoint")}
    return scores


def grid_table(keypoints: pd.DataFrame, alphas: Sequence[float], layer_index) -> pd.DataFrame:
    """grid.csv: PCK per point and per image (%) per cell and alpha (columns block, layer_index, step, alpha,
    pck_point, pck_image); `layer_index(layer)` orders the layers."""
    rows = []
    for (layer, step), cell in keypoints.groupby(["block", "step"], sort=False, dropna=False):
        scores = pck(cell, alphas)
        rows += [{"block": layer, "layer_index": layer_index(layer), "step": step, "alpha": alpha,
                  "pck_point": scores["pck_point"][alpha_key(alpha)], "pck_image": scores["pck_image"][alpha_key(alpha)]}
                 for alpha in alphas]
    return pd.DataFrame(rows).astype({"step": "Int64"})


def same_position(pairs: Sequence[Pair], keypoints: pd.DataFrame, alphas: Sequence[float]) -> dict:
    """The PCKs of a matcher that knows no features: each source keypoint's position scaled to the target's size.
    What a cell scores from position alone (e.g. aligned faces), the floor a layer must beat."""
    layer, step = keypoints.block.iloc[0], keypoints.step.iloc[0]
    rows = cell_rows(keypoints, layer, None if pd.isna(step) else int(step)).copy()
    scale = {pair.name: (pair.target_size[0] / pair.source_size[0], pair.target_size[1] / pair.source_size[1])
             for pair in pairs}
    rows["pred_x"] = rows.src_x * rows.pair.map(lambda name: scale[name][0])
    rows["pred_y"] = rows.src_y * rows.pair.map(lambda name: scale[name][1])
    return pck(rows, alphas)


def best_cell(grid: pd.DataFrame, alphas: Sequence[float]) -> tuple[str, int | None]:
    """The (layer, step) of the highest PCK per image at the reference alpha (the first in the table on a tie)."""
    rows = grid[grid.alpha == reference_alpha(alphas)]
    top = rows.iloc[int(np.argmax(rows.pck_image.to_numpy()))]
    return top.block, None if pd.isna(top.step) else int(top.step)


def match_panels(pairs: Sequence[Pair], keypoints: pd.DataFrame, alpha: float) -> list[MatchPanel]:
    """The figure's panels: the first FIGURE_PAIRS pairs with one cell's predictions, coloured at `alpha`."""
    panels = []
    for pair in pairs[:FIGURE_PAIRS]:
        rows = keypoints[keypoints.pair == pair.name]
        panels.append(MatchPanel(np.asarray(open_picture(pair.source)), np.asarray(open_picture(pair.target)),
                                 pair.source_points, rows[["pred_x", "pred_y"]].to_numpy(dtype=float),
                                 rows[["trg_x", "trg_y"]].to_numpy(dtype=float), pck_correct(rows, alpha).to_numpy(),
                                 f"{pair.name} ({pair.category})"))
    return panels


def protocol(options: CorrespondOptions, backbone: Backbone) -> dict:
    """Every choice of the protocol, for metrics.json."""
    return {
        "input": f"each image stretched to {backbone.image_size}x{backbone.image_size} (bilinear), as DIFT resizes",
        "upsampling": "each map bilinearly (align_corners=False) to its image's own size",
        "source_feature": "the upsampled source map at the keypoint's nearest pixel",
        "matching": "cosine similarity against every pixel of the upsampled target map; the maximum (first on a tie)"
                    if options.soft_argmax is None else
                    f"soft-argmax over a {options.soft_argmax}x{options.soft_argmax} window around the maximum of the "
                    f"cosine similarity, softmax temperature {SOFT_ARGMAX_TEMPERATURE}",
        "soft_argmax": options.soft_argmax,
        "distance": "sqrt((pred_x - trg_x)^2 + (pred_y - trg_y)^2) in the target's own pixels",
        "correct": "distance <= alpha * bbox_size",
        "threshold": options.threshold, "bbox_size": PCK_BASES[options.threshold],
        "alphas": [alpha_key(a) for a in options.alphas],
        "pck_point": "100 * correct keypoints / keypoints, all pairs pooled",
        "pck_image": "100 * the mean over pairs of each pair's fraction of correct keypoints",
        "best_cell": f"the highest pck_image at alpha {alpha_key(reference_alpha(options.alphas))}",
        "pairs_per_category": options.pairs,
        "massive_channels": f"dropped per cell: max |activation| >= {MASSIVE_RATIO:g} x the median nonzero "
                            f"|activation| over the maps of up to {MASSIVE_IMAGES} images (metrics.json's "
                            "massive_channels)" if options.drop_massive else "kept",
        "noise": backbone.identity.get("noise"),
    }


@dataclass
class Correspondence:
    """What a correspondence run found: `keypoints` (keypoints.csv: a row per keypoint per cell), `grid` (grid.csv:
    PCK per point and per image per cell and alpha), `metrics` (metrics.json: the best cell's PCKs overall, per
    category and per viewpoint, every cell's, and the protocol)."""

    keypoints: pd.DataFrame
    grid: pd.DataFrame
    metrics: dict = field(default_factory=dict)
    layer_title: str = "layer"
    layer_count: int = 1  # the backbone's layers (Backbone.all_layers), of which layer_index counts

    def heatmap(self, path: str | Path | None = None):
        """PCK per image at the reference alpha (probe.metrics.reference_alpha) per layer and step, drawn as `probe
        grid`'s heatmap; `path`: the PNG written (None: none). Returns the Figure."""
        alphas = sorted(set(self.grid.alpha))
        alpha, threshold = reference_alpha(alphas), self.metrics["protocol"]["threshold"]
        table = self.grid[self.grid.alpha == alpha].rename(columns={"block": "layer"})
        return plots.grid_heatmap(table, path, group=None, value="pck_image",
                                  value_label=f"PCK per image @{alpha_key(alpha)}, %", layer_title=self.layer_title,
                                  title=f"PCK per image at alpha {alpha_key(alpha)} ({threshold}) per "
                                        f"{self.layer_title} and step")


def results(pairs: Sequence[Pair], cells: Sequence[tuple[str, int | None, dict]], backbone: Backbone,
            options: CorrespondOptions, massive: dict[str, list[int]] | None = None) -> Correspondence:
    """The tables and metrics of the cells' predictions ((layer, step, predictions) each); `massive`: the channels
    each cell dropped (by cell name), with options.drop_massive."""
    keypoints = keypoint_table(pairs, cells, options.threshold)
    grid = grid_table(keypoints, options.alphas, backbone.layer_index)
    layer, step = best_cell(grid, options.alphas)
    metrics = {"protocol": protocol(options, backbone), "layers": backbone.layers, "steps": backbone.steps,
               "best": {"block": layer, "step": step}, **summary(cell_rows(keypoints, layer, step), options.alphas),
               "categories": sorted({pair.category for pair in pairs}),
               "same_position": same_position(pairs, keypoints, options.alphas),
               "cells": [{"block": block, "step": None if pd.isna(t) else int(t),
                          "pck_point": {alpha_key(r.alpha): r.pck_point for r in rows.itertuples()},
                          "pck_image": {alpha_key(r.alpha): r.pck_image for r in rows.itertuples()}}
                         for (block, t), rows in grid.groupby(["block", "step"], sort=False, dropna=False)]}
    if options.drop_massive:
        metrics["massive_channels"] = massive
    return Correspondence(keypoints, grid, metrics, backbone.layer_title, len(backbone.all_layers))


def cell_rows(keypoints: pd.DataFrame, layer: str, step: int | None) -> pd.DataFrame:
    """The keypoints.csv rows of one cell."""
    same_step = keypoints.step.isna() if step is None else keypoints.step == step
    return keypoints[(keypoints.block == layer) & same_step.fillna(False).astype(bool)]


def draw_figures(found: Correspondence, pairs: Sequence[Pair], backbone: Backbone, options: CorrespondOptions,
                 out: Path) -> list[str]:
    """matches.png (the best cell) and, with several cells, grid.png (PCK per image over layer x step); their names."""
    alpha = reference_alpha(options.alphas)
    best = found.metrics["best"]
    rows = cell_rows(found.keypoints, best["block"], best["step"])
    at = "" if best["step"] is None else f" t={best['step']}"
    plots.correspondence_figure(match_panels(pairs, rows, alpha), out / "matches.png",
                                title=f"{backbone.kind} {best['block']}{at}: nearest neighbours, green within "
                                      f"{alpha_key(alpha)} x {options.threshold} size")
    if len(found.metrics["cells"]) == 1:
        return ["matches.png"]
    found.heatmap(out / "grid.png")
    return ["matches.png", "grid.png"]


def run_correspond(folder: Path, spec: BackboneSpec, options: CorrespondOptions, seed: int, out: Path, *,
                   cache: str | Path | None = None, threads: int | None = None, progress: bool = True,
                   sweep_options: dict | None = None, dry_run: bool = False) -> Correspondence:
    """Match the pairs of `folder` with every (layer, step) of the backbone `spec` (its checkpoint a local path), each
    a cell of a resumable sweep in the sweep folder `out`; write metrics.json, keypoints.csv, matches.png and, with
    several cells, grid.csv and grid.png. `sweep_options`: the command's result-determining options (`run_sweep`);
    `dry_run`: print the plan only (probe.errors.DryRun)."""
    started = time.time()
    check_options(options)
    folder = str(Path(folder).expanduser().absolute())
    pairs = chosen_pairs(folder, options.pairs)
    backbone = build_backbone(replace(spec, seed=seed), "grid", FREE_INPUT_SIZE)
    cells_spec = resolved_spec(spec, backbone).to_dict()
    cells_spec.pop("seed")
    data = {"folder": folder, "pairs": options.pairs, "cache": str(Path(cache).expanduser().absolute()) if cache
            else None}
    cells = [SweepCell({"data": data, "backbone": cells_spec, "layer": layer, "step": t,
                        "soft_argmax": options.soft_argmax, "drop_massive": options.drop_massive}, seed, title=layer if t is None else f"{layer} t={t}")
             for layer in backbone.layers for t in backbone.steps]

    def extractions(todo: list[SweepCell]) -> list[Extraction]:
        steps = {cell.config["step"] for cell in todo}
        images = PairImages(pair_images(pairs), backbone.image_size)
        return [Extraction(backbone, images, cache, steps=[t for t in backbone.steps if t in steps])]

    records = run_sweep(cells, correspond_work, out, command="correspond", threads=threads, progress=progress,
                        options=sweep_options, extractions=extractions, dry_run=dry_run)
    found = results(pairs, [(r["config"]["layer"], r["config"]["step"], r["result"]["predictions"]) for r in records],
                    backbone, options, {backbone.cell_name(r["config"]["layer"], r["config"]["step"]):
                                        r["result"]["massive_channels"] for r in records})
    atomic_write(out / "keypoints.csv", lambda p: found.keypoints.to_csv(p, index=False))
    files = ["metrics.json", "keypoints.csv"]
    if len(cells) > 1:
        atomic_write(out / "grid.csv", lambda p: found.grid.to_csv(p, index=False))
        files.append("grid.csv")
    files += draw_figures(found, pairs, backbone, options, out)
    found.metrics = {"dataset": Path(folder).name, "data": folder, "seed": seed,
                     "options": {**asdict(options), "backbone": spec.to_dict()}, "features": backbone.identity,
                     **found.metrics, "threads": sorted({r["threads"] for r in records}),
                     "seconds": round(time.time() - started, 1)}
    write_json(out / "metrics.json", found.metrics)
    finish_sweep(out, files)
    return found
