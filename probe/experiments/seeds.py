"""`probe segment --seeds`: the whole `probe segment` run once per seed, each seed a cell of the sweep runner
(in this process or on Ray), each writing its complete result to `seed_<s>/` as it finishes; then the summary
(mean ± std of mIoU over seeds, as the paper reports) at the top of the sweep folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from probe.ensemble.settings import training_rule
from probe.errors import counting_files
from probe.experiments.cells import evaluate_cell, segment_config, segment_extractions
from probe.metrics import mean_std
from probe.sweeps.data import SweepData
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.segment import SegmentOptions, write_evaluation
from probe.utils.outputs import atomic_write, output_dir, write_json


def seed_work(spec: dict, threads: int) -> dict:
    """One seed: fit and score as `probe segment` does, write its result folder `spec["folder"]` (replacing what a
    killed run may have left there), return the mIoU, per-class IoU and what it extracted (run_sweep's
    `extraction`)."""
    evaluation, source, _ = evaluate_cell(spec)
    with counting_files(lambda: evaluation.extraction.files), \
            output_dir(Path(spec["folder"]), command="segment", overwrite=True) as tmp:
        write_evaluation(evaluation, source, tmp)
    return {**{key: evaluation.metrics[key] for key in ("miou", "per_class", "seconds", "train_images", "test_images")},
            "extraction": asdict(evaluation.extraction)}


def run_seeds(data: SweepData, options: SegmentOptions, seeds: list[int], out: Path, *, ray: str | None = None,
              threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
              sweep_options: dict | None = None, dry_run: bool = False, downloads: Sequence[str] = ()) -> dict:
    """Run (or resume) one cell per seed in `out`; write seeds.csv and the summary metrics.json; return it.
    `sweep_options`: the command's result-determining options, which a rerun must repeat (`run_sweep`);
    `downloads`: what the command downloaded first, named on the plan."""
    out = Path(out).expanduser().absolute()  # a cell's folder, as a Ray worker on another machine sees it
    cells = [SweepCell(segment_config(data, options.backbone, train_number=options.train_number,
                                      test_number=options.test_number, members=options.members,
                                      precision=options.precision, train_draw=options.train_draw,
                                      batched=options.batched, train_data=options.train_data,
                                      early_batch_size=options.early_batch_size),
                       seed, title=options.backbone.kind, outputs={"folder": str(out / f"seed_{seed}")})
             for seed in seeds]
    records = run_sweep(cells, seed_work, out, command="segment", ray=ray, threads=threads,
                        gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options,
                        extractions=segment_extractions, dry_run=dry_run, downloads=downloads)
    scores = [r["result"]["miou"] for r in records]
    table = pd.DataFrame({"seed": seeds, "miou": scores, "backbone": options.backbone.kind,
                          "threads": [r["threads"] for r in records]})
    atomic_write(out / "seeds.csv", lambda p: table.to_csv(p, index=False))
    mean, std = mean_std(scores)
    summary = {"miou": mean, "miou_std": std, "seeds": seeds, "miou_per_seed": scores,
               "dataset": data.source().name, "trained_on": options.train_data or data.source().name,
               "options": options.to_dict(), "training_rule": training_rule(options.early_batch_size)}
    write_json(out / "metrics.json", summary)
    finish_sweep(out, ["seeds.csv", "metrics.json", *(f"seed_{seed}" for seed in seeds)])
    return summary
