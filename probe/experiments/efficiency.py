"""`probe efficiency` (the paper's Table 4): mIoU against the number of labelled training images, per backbone,
each training subset drawn per seed from the train split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.layout import find_split_dir, list_images
from probe.data.sources import Source, backbone_spec
from probe.ensemble import EARLY_BATCH_SIZE
from probe.errors import ProbeError
from probe.experiments.cells import mean_std_table, segment_config, segment_extractions, segment_work
from probe.sweeps.data import SweepData
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.utils.outputs import atomic_write

TRAIN_NUMBERS = (1, 2, 5, 10, 20)


def default_train_numbers(source: Source) -> list[int]:
    """The numbers of training images when --train-numbers is not given: TRAIN_NUMBERS, and on a paper dataset
    those below its training split (Table 1) and the split's number itself, the largest (1, 2, 5, 10, 20, 30 on
    Horse-21; 1, 2, 5, 10, 20, 50 on ADE-Bedroom-30)."""
    if source.info is None:
        return list(TRAIN_NUMBERS)
    largest = source.info.split_number("train")
    return [n for n in TRAIN_NUMBERS if n < largest] + [largest]


def efficiency_cells(data: SweepData, specs: list[BackboneSpec], train_numbers: list[int] | None, seeds: list[int],
                     members: int = 10, early_batch_size: int = EARLY_BATCH_SIZE) -> list[SweepCell]:
    """One cell per (backbone, number of training images, seed); `train_numbers` None: default_train_numbers.
    Every backbone is built once first, so a bad option or checkpoint fails before the sweep starts."""
    source = data.source()
    train_numbers = train_numbers or default_train_numbers(source)
    for spec in specs:
        build_backbone(backbone_spec(source, spec), "segment", source.native_size)
    available = len(list_images(find_split_dir(source.root, "train")))
    too_many = [n for n in train_numbers if not 1 <= n <= available]
    if too_many:
        raise ProbeError(f"--train-numbers {too_many[0]}: the train split holds {available} images; "
                         f"give numbers in 1..{available}")
    return [SweepCell(segment_config(data, spec, train_number=n, members=members, train_draw=True,
                                early_batch_size=early_batch_size), seed, title=f"{spec.kind} n={n}")
            for spec in specs for n in train_numbers for seed in seeds]


def run_efficiency(data: SweepData, specs: list[BackboneSpec], train_numbers: list[int] | None, seeds: list[int],
                   out: Path, *, members: int = 10, early_batch_size: int = EARLY_BATCH_SIZE, ray: str | None = None,
                   threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
                   sweep_options: dict | None = None, dry_run: bool = False,
                   downloads: Sequence[str] = ()) -> pd.DataFrame:
    """Run (or resume) the sweep in `out`; write efficiency.csv (tidy), table.md and efficiency.png.
    `train_numbers` None: default_train_numbers; `sweep_options`: the command's result-determining options, which a rerun must repeat (`run_sweep`);
    `downloads`: what the command downloaded first, named on the plan."""
    cells = efficiency_cells(data, specs, train_numbers, seeds, members, early_batch_size)
    records = run_sweep(cells, segment_work, out, command="efficiency", ray=ray, threads=threads,
                        gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options,
                        extractions=segment_extractions, dry_run=dry_run, downloads=downloads)
    table = pd.DataFrame([{"backbone": r["config"]["backbone"]["kind"], "train_number": r["config"]["train_number"],
                           "seed": r["config"]["seed"], "miou": r["result"]["miou"], "threads": r["threads"]}
                          for r in records])
    atomic_write(out / "efficiency.csv", lambda p: table.to_csv(p, index=False))
    markdown = mean_std_table(table, "backbone", "train_number")
    atomic_write(out / "table.md", lambda p: p.write_text(markdown))
    plots.efficiency_lines(table, out / "efficiency.png")
    finish_sweep(out, ["efficiency.csv", "table.md", "efficiency.png"])
    return table
