"""`probe variants` (the paper's Table 5, extended): the extraction variants side by side on one backbone: shared
noise (the authors' default), per-image noise, the mean of K draws, and x_t reached by DDIM inversion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.sources import backbone_spec
from probe.ensemble import EARLY_BATCH_SIZE
from probe.experiments.cells import mean_std_table, segment_config, segment_extractions, segment_work
from probe.sweeps.data import SweepData
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.utils.outputs import atomic_write


def variant_names(draws: int, inversion_steps: int | None) -> list[str]:
    """The --noise values compared: shared, per-image, mean-of-K, ddim-inversion[-S]."""
    inversion = f"ddim-inversion-{inversion_steps}" if inversion_steps else "ddim-inversion"
    return ["shared", "per-image", f"mean-of-{draws}", inversion]


def run_variants(data: SweepData, spec: BackboneSpec, variants: list[str], seeds: list[int], out: Path, *,
                 train_number: int | None = None, members: int = 10, early_batch_size: int = EARLY_BATCH_SIZE,
                 ray: str | None = None, threads: int | None = None, gpus_per_cell: float = 0,
                 progress: bool = True, sweep_options: dict | None = None, dry_run: bool = False,
                 downloads: Sequence[str] = ()) -> pd.DataFrame:
    """Run (or resume) one cell per (variant, seed) in `out`; write variants.csv, table.md and variants.png.
    `sweep_options`: the command's result-determining options, which a rerun must repeat (`run_sweep`);
    `downloads`: what the command downloaded first, named on the plan."""
    source = data.source()
    specs = [replace(spec, noise=variant) for variant in variants]
    for variant_spec in specs:  # a bad variant or checkpoint fails before the sweep starts
        build_backbone(backbone_spec(source, variant_spec), "segment", source.native_size)
    cells = [SweepCell(segment_config(data, variant_spec, train_number=train_number, members=members,
                                 early_batch_size=early_batch_size), seed,
                  title=f"{variant_spec.kind} {variant_spec.noise}")
             for variant_spec in specs for seed in seeds]
    records = run_sweep(cells, segment_work, out, command="variants", ray=ray, threads=threads,
                        gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options,
                        extractions=segment_extractions, dry_run=dry_run, downloads=downloads)
    table = pd.DataFrame([{"variant": r["config"]["backbone"]["noise"], "seed": r["config"]["seed"],
                           "miou": r["result"]["miou"], "threads": r["threads"]} for r in records])
    atomic_write(out / "variants.csv", lambda p: table.to_csv(p, index=False))
    markdown = mean_std_table(table.assign(metric="mIoU, %"), "variant", "metric")
    atomic_write(out / "table.md", lambda p: p.write_text(markdown))
    plots.seed_bars(table, out / "variants.png", title=f"Extraction variants ({spec.kind}, {len(seeds)} seeds)",
                    group="variant")
    finish_sweep(out, ["variants.csv", "table.md", "variants.png"])
    return table
