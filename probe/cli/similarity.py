"""`probe similarity`: representation similarity (CKA, mutual k-NN, CKNNA, SVCCA) between the cells of one or more
backbones, a resumable sweep (probe.tasks.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.options import (
    Blocks,
    Cache,
    Data,
    DataRoot,
    Dataset,
    Device,
    DryRunOpt,
    Fit,
    GpusPerCell,
    ImageSize,
    ModelDtype,
    ModelFlagsOpt,
    Offload,
    QuietPlan,
    Ray,
    Seed,
    SmallTestNumber,
    SweepOut,
    Threads,
    parse_kinds,
    recorded_sweep_options,
    spec_from_options,
    start_sweep,
    user_errors,
)
from probe.errors import ProbeError


def check_options(metrics: str, pool: str, pixels: int, k: int, dims: int, resolution: Optional[int]) -> list[str]:
    """The metrics named by --metrics, after the checks of --metrics, --pool, --pixels, --k, --dims and
    --resolution that need no data (before torch is imported)."""
    from probe.similarity import check_metrics

    chosen = check_metrics(metrics)
    if pool not in ("pixels", "mean"):
        raise ProbeError(f"--pool {pool!r}: use pixels (sampled pixels, the default) or mean (one row per image)")
    for name, value in (("--pixels", pixels), ("--k", k), ("--dims", dims), ("--resolution", resolution)):
        if value is not None and value < 1:
            raise ProbeError(f"{name} {value}: give 1 or more")
    return chosen


@user_errors
def similarity(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbones: str = typer.Option("ddpm,mae", "--backbones", "--backbone",
                                  help="Backbones, comma-separated; kind=weights for a checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="ddpm's weights (--backbones ddpm without =)."),
    model_flags: Optional[str] = ModelFlagsOpt,
    blocks: Optional[str] = Blocks,
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (default: probe grid's)."),
    metrics: str = typer.Option("cka,mutual_knn", "--metrics", help="cka, cka_debiased, mutual_knn, cknna, svcca."),
    k: int = typer.Option(10, "--k", help="mutual_knn, cknna: neighbours."),
    dims: int = typer.Option(10, "--dims", help="svcca: singular directions kept."),
    pool: str = typer.Option("pixels", "--pool", help="Rows: pixels (sampled pixels) or mean (one per image)."),
    pixels: int = typer.Option(2048, "--pixels", help="Pixels sampled (the rows)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Sampling grid side (default: the data's size)."),
    test_number: Optional[int] = SmallTestNumber,
    model_dtype: Optional[str] = ModelDtype, image_size: Optional[int] = ImageSize,
    offload: Optional[str] = Offload,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = SweepOut("similarity"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """How similar the cells' representations are, without labels: each metric between all pairs of cells, on
    pixels sampled from the test images (or one mean per image). Heatmaps within and across backbones, t x t, and
    per layer of the diffusion model the most similar layer of each other backbone. A resumable sweep.

    Examples:

    \b
      probe similarity
      probe similarity --backbone ddpm --steps 0,50,200 --blocks 4-17
      probe similarity --metrics cka_debiased,cknna --pixels 512 --k 10
      probe similarity --backbones ddpm,transformers=facebook/dinov2-small
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    from probe.backbones.spec import backbone_entries, check_cell_syntax

    chosen = check_options(metrics, pool, pixels, k, dims, resolution)
    check_cell_syntax(steps, "steps")
    given = [Path(part.partition("=")[2].strip()) for part in backbones.split(",") if "=" in part]
    base = spec_from_options("ddpm", checkpoint, model_flags, blocks, None, None, False, None, seed, device,
                             model_dtype=model_dtype)
    kinds = parse_kinds(backbones, checkpoint, "--backbones")
    sweep_data, downloads = start_sweep("similarity", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, *given, parameters=parameters, progress=not quiet, fit=fit,
                                        dry_run=dry_run, backbones=kinds)
    from probe.tasks.compare import SimilarityOptions, run_similarity

    entries = backbone_entries(backbones, base, steps, model_dtype, image_size, offload)
    options = SimilarityOptions(metrics=chosen, k=k, dims=dims, pool=pool, pixels=pixels, resolution=resolution,
                                test_number=test_number)
    table, alignment = run_similarity(sweep_data, entries, options, seed, out, ray=ray, threads=threads,
                                      gpus_per_cell=gpus_per_cell, progress=not quiet, dry_run=dry_run,
                                      sweep_options=recorded_sweep_options("similarity", parameters),
                                      downloads=downloads)
    best = alignment.loc[alignment.groupby(["metric", "backbone_b"], sort=False).value.idxmax()] if len(alignment) \
        else alignment  # per metric and other backbone, its best match
    summary = " | ".join(f"{row.metric}: {row.backbone_a} {row.layer_a} ~ {row.backbone_b} {row.layer_b} "
                         f"{row.value:.3f}" for row in best.itertuples())
    typer.echo(f"{len(table):,} values ({', '.join(chosen)}){'; best matches: ' + summary if summary else ''}"
               f"  -> {out}/similarity.csv")
