"""`probe similarity`: how similar the representations of cells are, within a backbone (layer x layer, t x t) and
across backbones (one's layers against another's at relative depth), by the metrics of probe.similarity (CKA biased
and debiased, mutual k-NN, CKNNA, SVCCA). No labels are used.

Rows. Every representation is an N x D matrix over the same N inputs, so rows pair across cells and backbones:
- pixels (the default): N pixel positions drawn once, by a generator seeded with --seed, without replacement from
  the test images on a common R x R grid (R: --resolution, default the data's image size); each cell's maps are
  upsampled to R x R by the pixel sampler (bilinear, align_corners=False) at those positions only, whatever the
  backbone's native map size or input size;
- mean (`--pool mean`): one row per test image, the mean of the cell's map over its native h x w.

Features come from the activation store (probe.features.store), filled for the test images as `probe grid` fills it
(the same backbone identity, the same images): a grid already run extracts nothing here.

Work unit. A backbone's cells (step-major: every layer at its first step, then at the next) are cut into chunks whose
features (N x the sum of their widths D, float32) stay under CHUNK_BYTES, whole steps together when they fit. A runner
cell is one metric on one pair of chunks (a chunk with itself included): it reads both chunks' features, computes the
metric for every pair of their cells and returns the matrix, so a killed sweep resumes at the next (chunk pair,
metric), and at most two chunks' features are held at once (plus their float64 copies inside the metric). A chunk's
key does not depend on the other backbones named, nor on their order, so a rerun with fewer or reordered backbones or
steps reuses the cells it shares.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe import plots
from probe.backbones import Backbone, BackboneSpec, build_backbone
from probe.data.sources import backbone_spec
from probe.errors import ProbeError, counting_files
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore, Extracted
from probe.plots.similarity import SIMILARITY_COLUMNS
from probe.similarity import METRICS, check_metrics, cka_matrix, cknna, nearest_neighbours, neighbour_overlap, svcca
from probe.sweeps.data import SweepData
from probe.sweeps.plan import Extraction, cell_shapes
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.grid import grid_splits
from probe.tasks.segment import resolved_spec
from probe.utils.outputs import atomic_write, write_json

log = logging.getLogger("probe")

DEFAULT_METRICS = ("cka", "mutual_knn")
DEFAULT_PIXELS = 2048
CHUNK_BYTES = 128 * 2 ** 20  # the float32 features of one chunk of cells (N x sum of D x 4 bytes)
POOLS = ("pixels", "mean")
NEIGHBOUR_METRICS = ("mutual_knn", "cknna")  # take k
SYMMETRIC = ("cka", "cka_debiased", "mutual_knn", "svcca")  # cknna's neighbour-masked kernels are not symmetric


@dataclass
class SimilarityOptions:
    """How rows are formed and what is computed (see the module docstring)."""

    metrics: Sequence[str] = DEFAULT_METRICS
    k: int = 10  # neighbours of mutual_knn and cknna
    dims: int = 10  # SVCCA's singular directions per representation (at most each one's width)
    pool: str = "pixels"
    pixels: int = DEFAULT_PIXELS  # N with pool "pixels"
    resolution: int | None = None  # the common grid's side (None: the data's image size)
    test_number: int | None = None  # None: up to SPLIT_NUMBER test images


@dataclass
class Compared:
    """One backbone of the sweep: its label, the backbone (all its chosen cells), its spec as the cells carry it
    (seed left out) and its chunks ((steps, layers) each)."""

    label: str
    backbone: Backbone
    spec: dict
    chunks: list[tuple[list, list[str]]]

    @property
    def diffusion(self) -> bool:
        return self.backbone.steps != [None]

    def depth(self, layer: str) -> float:
        """layer_index / (number of the network's layers - 1), as `probe layers`."""
        total = len(self.backbone.all_layers)
        return self.backbone.layer_index(layer) / (total - 1) if total > 1 else 0.0

    def cell_names(self, step=None) -> list[str]:
        """Its cells step-major (at `step` only, when given)."""
        steps = self.backbone.steps if step is None else [step]
        return [self.backbone.cell_name(layer, t) for t in steps for layer in self.backbone.layers]

    def chunk_config(self, chunk: tuple[list, list[str]]) -> dict:
        steps, layers = chunk
        stepped = [t for t in steps if t is not None]
        return {**self.spec, "layers": ",".join(layers), "steps": ",".join(map(str, stepped)) or None}


def check_rows(options: SimilarityOptions, rows: int) -> None:
    """Refuse, in one line, options the N rows cannot serve: k neighbours need k < N, debiased estimators N >= 4."""
    metrics = options.metrics
    if any(m in NEIGHBOUR_METRICS for m in metrics) and not 1 <= options.k < rows:
        raise ProbeError(f"--k {options.k}: give 1 to {rows - 1} neighbours (the rows are {describe_rows(options, rows)})")
    least = 4 if {"cka_debiased", "cknna"} & set(metrics) else 2
    if rows < least:
        raise ProbeError(f"{rows} rows ({describe_rows(options, rows)}): the metrics need at least {least}; use more "
                         "test images or --pool pixels")
    if "svcca" in metrics and options.dims < 1:
        raise ProbeError(f"--dims {options.dims}: give 1 or more singular directions")


def describe_rows(options: SimilarityOptions, rows: int, images: int | None = None, resolution: int | None = None) -> str:
    """The rows in words, e.g. `2048 pixels sampled at 32x32 from 20 test images (seeded)`."""
    of = f" from {images} test images" if images is not None else ""
    if options.pool == "mean":
        return f"{rows} images{of}, each cell's map averaged over its native h x w"
    at = f" at {resolution}x{resolution}" if resolution else ""
    return f"{rows} pixels sampled{at}{of} (seeded by --seed)"


def sample_rows(images: int, resolution: int, number: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index, y, x) of `number` distinct pixels of `images` images on a resolution x resolution grid, drawn by a
    generator seeded with `seed`, in raster order."""
    total = images * resolution * resolution
    if not 1 <= number <= total:
        raise ProbeError(f"--pixels {number}: give 1 to {total} ({images} test images x {resolution}x{resolution})")
    flat = np.sort(np.random.default_rng(seed).choice(total, size=number, replace=False))
    image, rest = np.divmod(flat, resolution * resolution)
    ys, xs = np.divmod(rest, resolution)
    return image, ys, xs


def feature_chunks(backbone: Backbone, widths: dict[str, int], rows: int,
                   budget: int = CHUNK_BYTES) -> list[tuple[list, list[str]]]:
    """The backbone's cells cut into (steps, layers) chunks of at most `budget` bytes of float32 features (rows x the
    sum of the cells' widths x 4): runs of whole steps when one step fits, else each step's layers in runs."""
    layers = backbone.layers
    step_bytes = 4 * rows * sum(widths[layer] for layer in layers)
    steps = backbone.steps
    if step_bytes <= budget:
        per = max(1, budget // step_bytes)
        count = math.ceil(len(steps) / per)
        cuts = np.linspace(0, len(steps), count + 1).round().astype(int)
        return [(steps[a:b], list(layers)) for a, b in zip(cuts[:-1], cuts[1:])]
    chunks = []
    for t in steps:
        run, size = [], 0
        for layer in layers:
            width = 4 * rows * widths[layer]
            if run and size + width > budget:
                chunks.append(([t], run))
                run, size = [], 0
            run.append(layer)
            size += width
        chunks.append(([t], run))
    return chunks


def chunk_features(data: SweepData, chunk: dict, rows: dict, seed: int) -> tuple[list[str], list[np.ndarray], Extracted]:
    """The N x D float32 features of every cell of a chunk (step-major), extracting what the store lacks, and what
    that extraction computed."""
    source = data.source()
    backbone = build_backbone(BackboneSpec.from_dict(chunk, seed=seed), "grid", source.native_size)
    _, test = grid_splits(data.dataset, data.data_root, data.data, backbone.image_size, None, rows["test_number"],
                          data.fit)
    store = ActivationStore(backbone, data.cache)
    with counting_files(lambda: store.written):
        extracted = store.fill(test, progress=False)
    names = [backbone.cell_name(layer, t) for t in backbone.steps for layer in backbone.layers]
    if rows["pool"] == "mean":
        features = [np.stack([np.asarray(store.read(image, name), dtype=np.float32).mean(axis=(1, 2))
                              for image in test]) for name in names]
    else:
        image, ys, xs = sample_rows(len(test), rows["resolution"], rows["number"], seed)
        features = [PixelSampler.from_store(store, test, [name], size=rows["resolution"]).gather(image, ys, xs).numpy()
                    for name in names]
    return names, features, extracted


def metric_matrix(metric: str, left: list[np.ndarray], right: list[np.ndarray] | None, k: int | None,
                  dims: int | None, names: tuple[list[str], list[str]]) -> np.ndarray:
    """M[i, j] = metric(left[i], right[j]) (right None: left against itself), by probe.similarity; a ProbeError
    names the two cells."""
    other = left if right is None else right

    def each(function) -> np.ndarray:
        matrix = np.empty((len(left), len(other)))
        for i, X in enumerate(left):
            for j, Y in enumerate(other):
                if right is None and metric in SYMMETRIC and j < i:
                    matrix[i, j] = matrix[j, i]
                    continue
                try:
                    matrix[i, j] = function(X, Y)
                except ProbeError as error:
                    raise ProbeError(f"{metric} of {names[0][i]} and {names[1][j]}: {error}") from None
        return matrix

    if metric in ("cka", "cka_debiased"):
        return cka_matrix(left, right, debiased=metric == "cka_debiased")
    if metric == "mutual_knn":
        near_left = [nearest_neighbours(X, k) for X in left]
        near_right = near_left if right is None else [nearest_neighbours(Y, k) for Y in right]
        return np.array([[neighbour_overlap(a, b) for b in near_right] for a in near_left])
    if metric == "cknna":
        return each(lambda X, Y: cknna(X, Y, k))
    if metric == "svcca":
        return each(lambda X, Y: svcca(X, Y, min(dims, X.shape[1], Y.shape[1], X.shape[0] - 1)))
    raise ProbeError(f"--metrics {metric!r}: choose among {', '.join(METRICS)}")


def compare_work(spec: dict, threads: int) -> dict:
    """One runner cell: `spec["metric"]` between every cell of chunk a and every cell of chunk b (b may be a), with
    numpy's BLAS at the cell's thread budget. Returns the cells' names, the matrix (and, for a metric that is not
    symmetric and two chunks, the matrix of b against a) and what the extraction computed."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency: numpy's BLAS threads

    data = SweepData(**spec["data"])
    with threadpool_limits(limits=threads, user_api="blas"):
        names_a, left, done_a = chunk_features(data, spec["a"], spec["rows"], spec["seed"])
        same = spec["a"] == spec["b"]
        names_b, right, done_b = (names_a, None, Extracted()) if same else chunk_features(data, spec["b"], spec["rows"],
                                                                                        spec["seed"])
        metric, k, dims = spec["metric"], spec.get("k"), spec.get("dims")
        values = metric_matrix(metric, left, right, k, dims, (names_a, names_b))
        reverse = None
        if not same and metric not in SYMMETRIC:
            reverse = metric_matrix(metric, right, left, k, dims, (names_b, names_a)).T
    extraction = Extracted(done_a.image_steps + done_b.image_steps, done_a.seconds + done_b.seconds,
                           done_a.files + done_b.files)
    return {"cells_a": names_a, "cells_b": names_b, "values": values.tolist(),
            "reverse": None if reverse is None else reverse.tolist(), "extraction": asdict(extraction)}


def slug(label: str) -> str:
    """A backbone label as part of a file name."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def run_similarity(data: SweepData, entries: list[tuple[str, BackboneSpec]], options: SimilarityOptions, seed: int,
                   out: Path, *, ray: str | None = None, threads: int | None = None, gpus_per_cell: float = 0,
                   progress: bool = True, sweep_options: dict | None = None, dry_run: bool = False,
                   downloads: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume) the similarity sweep of the backbones `entries` ((label, spec) pairs) in the sweep folder
    `out`; write similarity.csv, similarity_cells.csv, alignment.csv (two or more backbones), the heatmaps, the
    alignment plot and similarity.json; return (similarity.csv's table, alignment.csv's table, empty for one
    backbone). `sweep_options`: the command's result-determining options (`run_sweep`); `downloads`: what the command
    downloaded first, named on the plan."""
    started = time.time()
    source = data.source()
    metrics = check_metrics(",".join(options.metrics))
    options = replace(options, metrics=metrics)
    if options.pool not in POOLS:
        raise ProbeError(f"--pool {options.pool!r}: use pixels (sampled pixels, the default) or mean (one row per image)")
    compared = []
    for label, spec in entries:  # every backbone is built first: a bad option fails before any work
        spec = backbone_spec(source, spec, progress=progress)
        backbone = build_backbone(replace(spec, seed=seed), "grid", source.native_size)
        cells_spec = resolved_spec(spec, backbone).to_dict()
        cells_spec.pop("seed")
        compared.append(Compared(label, backbone, cells_spec, []))
    specs = [json.dumps(c.spec, sort_keys=True) for c in compared]
    if len(set(specs)) != len(specs):
        raise ProbeError("--backbones names the same backbone twice (same kind, checkpoint and options)")
    images = len(grid_splits(data.dataset, data.data_root, data.data, compared[0].backbone.image_size, None,
                             options.test_number, data.fit)[1])
    if options.resolution is not None and options.resolution < 1:
        raise ProbeError(f"--resolution {options.resolution}: give 1 or more pixels")
    resolution = options.resolution or source.native_size
    rows = images if options.pool == "mean" else options.pixels
    if options.pool == "pixels":
        sample_rows(images, resolution, rows, seed)  # checks the number
    check_rows(options, rows)
    rows_config = {"pool": options.pool, "number": rows, "resolution": resolution if options.pool == "pixels" else None,
                   "test_number": options.test_number}
    for entry in compared:
        shapes = cell_shapes(entry.backbone)
        widths = {cell.layer: shapes[cell.name][0] for cell in entry.backbone.cells}
        entry.chunks = feature_chunks(entry.backbone, widths, rows)
    chunks = [(entry, chunk, entry.chunk_config(chunk)) for entry in compared for chunk in entry.chunks]
    cells, owners = [], {}
    for i, first in enumerate(chunks):
        for second in chunks[i:]:
            a, b = sorted([first, second], key=lambda c: json.dumps(c[2], sort_keys=True))  # a key of no list order
            for metric in metrics:
                config = {"metric": metric, "data": data.config(), "rows": rows_config, "a": a[2], "b": b[2]}
                if metric in NEIGHBOUR_METRICS:
                    config["k"] = options.k
                if metric == "svcca":
                    config["dims"] = options.dims
                cell = SweepCell(config, seed, title=f"{metric}: {chunk_title(a)} x {chunk_title(b)}")
                cells.append(cell)
                owners[cell.key] = (a, b)

    def extractions(todo: list) -> list:
        steps: dict[int, set] = {}
        for cell in todo:
            for entry, (chunk_steps, _), _ in owners[cell.key]:
                steps.setdefault(id(entry), set()).update(chunk_steps)
        chosen = []
        for entry in compared:
            if id(entry) in steps:
                test = grid_splits(data.dataset, data.data_root, data.data, entry.backbone.image_size, None,
                                   options.test_number, data.fit)[1]
                chosen.append(Extraction(entry.backbone, test, data.cache,
                                         steps=[t for t in entry.backbone.steps if t in steps[id(entry)]]))
        return chosen

    rows_text = describe_rows(options, rows, images, resolution)
    if progress or dry_run:
        log.info(f"rows: {rows_text}; metrics {', '.join(metrics)}")
    records = run_sweep(cells, compare_work, out, command="similarity", ray=ray, threads=threads,
                        gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options,
                        extractions=extractions, dry_run=dry_run, downloads=downloads)
    table = similarity_table(records, owners, metrics)
    cell_table = pd.DataFrame([
        {"backbone": entry.label, "kind": entry.backbone.kind, "cell": cell.name, "layer": cell.layer,
         "layer_index": entry.backbone.layer_index(cell.layer), "layers": len(entry.backbone.all_layers),
         "relative_depth": entry.depth(cell.layer), "step": cell.step,
         "dim": cell_shapes(entry.backbone)[cell.name][0]}
        for entry in compared for cell in sorted(entry.backbone.cells, key=lambda c: (
            entry.backbone.steps.index(c.step), entry.backbone.layer_index(c.layer)))]).astype({"step": "Int64"})
    alignment = alignment_table(table, compared, metrics)
    files = ["similarity.csv", "similarity_cells.csv", "similarity.json"]
    atomic_write(out / "similarity.csv", lambda p: table.to_csv(p, index=False))
    atomic_write(out / "similarity_cells.csv", lambda p: cell_table.to_csv(p, index=False))
    if not alignment.empty:
        atomic_write(out / "alignment.csv", lambda p: alignment.to_csv(p, index=False))
        files.append("alignment.csv")
    files += draw_figures(table, alignment, compared, metrics, out, rows_text)
    write_json(out / "similarity.json", {
        "dataset": source.name, "seed": seed, "metrics": {m: METRICS[m] for m in metrics}, "k": options.k,
        "dims": options.dims,
        "rows": {**rows_config, "images": images, "text": rows_text},
        "backbones": [{"label": e.label, "kind": e.backbone.kind, "identity": e.backbone.identity,
                       "layers": e.backbone.layers, "steps": e.backbone.steps, "figure_step": e.backbone.steps[0],
                       "chunks": len(e.chunks)} for e in compared],
        "alignment": alignment_summary(alignment),
        "cells": len(records), "threads": sorted({r["threads"] for r in records}),
        "seconds": round(time.time() - started, 1),
    })
    finish_sweep(out, files)
    return table, alignment


def chunk_title(chunk: tuple) -> str:
    entry, (steps, layers), _ = chunk
    stepped = [t for t in steps if t is not None]
    at = "" if not stepped else f" t={stepped[0]}" if len(stepped) == 1 else f" t={stepped[0]}..{stepped[-1]}"
    part = "" if layers == entry.backbone.layers else f" {layers[0]}..{layers[-1]}"
    return f"{entry.label}{at}{part}"


def similarity_table(records: list[dict], owners: dict, metrics: list[str]) -> pd.DataFrame:
    """similarity.csv from the cell records: every ordered pair of cells once per metric, a cell with itself
    included (columns backbone_a, cell_a, backbone_b, cell_b, metric, value)."""
    rows = []
    for record in records:
        (a, _, _), (b, _, _) = owners[record["key"]]
        result, metric = record["result"], record["config"]["metric"]
        same = record["config"]["a"] == record["config"]["b"]
        reverse = result["reverse"]
        for i, cell_a in enumerate(result["cells_a"]):
            for j, cell_b in enumerate(result["cells_b"]):
                value = result["values"][i][j]
                rows.append((a.label, cell_a, b.label, cell_b, metric, value))
                if not same:
                    rows.append((b.label, cell_b, a.label, cell_a, metric, value if reverse is None else reverse[i][j]))
    table = pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)
    order = {m: i for i, m in enumerate(metrics)}
    return table.sort_values("metric", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def alignment_table(table: pd.DataFrame, compared: list[Compared], metrics: list[str]) -> pd.DataFrame:
    """For backbone A (the first diffusion backbone, else the first) against each other backbone B, per metric: each
    layer of A at its first step, the layer of B (at its first step) most similar to it, and that value."""
    columns = ["metric", "backbone_a", "layer_a", "step_a", "relative_depth_a", "backbone_b", "layer_b", "step_b",
               "relative_depth_b", "value"]
    if len(compared) < 2:
        return pd.DataFrame(columns=columns)
    first = next((e for e in compared if e.diffusion), compared[0])
    rows = []
    for metric in metrics:
        for other in compared:
            if other is first:
                continue
            matrix = plots.similarity_matrix(table, metric, first.label, other.label,
                                             first.cell_names(first.backbone.steps[0]),
                                             other.cell_names(other.backbone.steps[0]))
            for layer, cell in zip(first.backbone.layers, matrix.index):
                best = int(np.argmax(matrix.loc[cell].to_numpy()))
                best_layer = other.backbone.layers[best]
                rows.append({"metric": metric, "backbone_a": first.label, "layer_a": layer,
                             "step_a": first.backbone.steps[0], "relative_depth_a": first.depth(layer),
                             "backbone_b": other.label, "layer_b": best_layer, "step_b": other.backbone.steps[0],
                             "relative_depth_b": other.depth(best_layer),
                             "value": float(matrix.loc[cell].iloc[best])})
    return pd.DataFrame(rows, columns=columns).astype({"step_a": "Int64", "step_b": "Int64"})


def alignment_summary(alignment: pd.DataFrame) -> list[dict]:
    """Per (metric, backbone B): A's layer with the highest best-match value, its match in B and the value."""
    summary = []
    for (metric, other), rows in alignment.groupby(["metric", "backbone_b"], sort=False):
        top = rows.sort_values("value", ascending=False, kind="stable").iloc[0]
        summary.append({"metric": metric, "backbone_a": top.backbone_a, "backbone_b": other, "layer_a": top.layer_a,
                        "layer_b": top.layer_b, "value": float(top.value)})
    return summary


def draw_figures(table: pd.DataFrame, alignment: pd.DataFrame, compared: list[Compared], metrics: list[str],
                 out: Path, rows_text: str) -> list[str]:
    """The heatmaps and alignment plots (names in the docs' table); their file names."""
    files = []

    def draw(name: str, panels, **labels) -> None:
        plots.similarity_heatmap(panels, out / name, **labels)
        files.append(name)

    for metric in metrics:
        scale = {"metric": metric, "vmin": min(0.0, float(table[table.metric == metric].value.min())), "vmax": 1.0}
        for entry in compared:
            cells = entry.cell_names()
            if len(cells) > 1:
                draw(f"within_{slug(entry.label)}_{metric}.png",
                     plots.similarity_matrix(table, metric, entry.label, entry.label, cells, cells),
                     title=f"{metric} between the cells of {entry.label}; rows: {rows_text}", **scale)
            if entry.diffusion and len(entry.backbone.steps) > 1:
                layers = entry.backbone.layers
                spread = list(dict.fromkeys(layers[round(i * (len(layers) - 1) / 3)] for i in range(4)))
                panels = {}
                for layer in spread:
                    names = [entry.backbone.cell_name(layer, t) for t in entry.backbone.steps]
                    matrix = plots.similarity_matrix(table, metric, entry.label, entry.label, names, names)
                    steps = [str(t) for t in entry.backbone.steps]
                    panels[layer] = matrix.set_axis(steps, axis=0).set_axis(steps, axis=1)
                draw(f"steps_{slug(entry.label)}_{metric}.png", panels, xlabel="diffusion step t",
                     ylabel="diffusion step t", title=f"{metric} of {entry.label} between steps, at fixed layers",
                     **scale)
        for i, first in enumerate(compared):
            for other in compared[i + 1:]:
                matrix = plots.similarity_matrix(table, metric, first.label, other.label,
                                                 first.cell_names(first.backbone.steps[0]),
                                                 other.cell_names(other.backbone.steps[0]))
                matrix = matrix.set_axis([f"{layer} ({first.depth(layer):.2f})" for layer in first.backbone.layers],
                                         axis=0)
                matrix = matrix.set_axis([f"{layer} ({other.depth(layer):.2f})" for layer in other.backbone.layers],
                                         axis=1)
                draw(f"across_{slug(first.label)}_{slug(other.label)}_{metric}.png", matrix, metric=metric,
                     xlabel=f"{other.label}{step_words(other)}: layer (relative depth)",
                     ylabel=f"{first.label}{step_words(first)}: layer (relative depth)",
                     title=f"{metric}: the layers of {first.label} against those of {other.label}")
        rows = alignment[alignment.metric == metric]
        if not rows.empty:
            name = f"alignment_{metric}.png"
            first = rows.backbone_a.iloc[0]
            plots.alignment_lines(rows, out / name, metric=metric,
                                  title=f"per layer of {first}{step_words(next(e for e in compared if e.label == first))}"
                                        f", the most similar layer of each other backbone ({metric})")
            files.append(name)
    return files


def step_words(entry: Compared) -> str:
    return "" if not entry.diffusion else f" at t={entry.backbone.steps[0]}"
