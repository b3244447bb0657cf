"""`probe correspond`: zero-shot semantic correspondence (DIFT's protocol) for every (layer, step) of a backbone,
over pairs in SPair-71k's layout, a resumable sweep (probe.tasks.correspond)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.options import (
    Backbone,
    Blocks,
    Cache,
    Checkpoint,
    ClassLabel,
    Data,
    Device,
    DryRunOpt,
    GridSteps,
    ImageSize,
    ModelDtype,
    ModelFlagsOpt,
    Noise,
    Offload,
    Prompt,
    QuietPlan,
    Revision,
    Seed,
    SweepOut,
    Threads,
    Tokens,
    check_threads,
    recorded_sweep_options,
    spec_from_options,
    start_work,
    user_errors,
)
from probe.errors import ProbeError


def check_pairs_source(dataset: Optional[str], data: Optional[Path]) -> None:
    """Refuse --dataset and --data together, before anything loads."""
    if dataset is not None and data is not None:
        raise ProbeError("give --dataset or --data, not both")


def pairs_folder(dataset: Optional[str], data: Optional[Path], progress: bool) -> Path:
    """(After check_pairs_source.) The folder of pairs in SPair-71k's layout to match: --dataset's benchmark (downloaded on first use), --data, or
    the embedded default's faces (drawn into the cache on first use); its annotations read, so that a bad one or a
    missing image is one line before anything loads."""
    from probe.data.pairs import read_pairs

    if dataset is not None:
        from probe.data.fetch import pairs_dataset
        from probe.data.registry import lookup_pairs

        data = pairs_dataset(lookup_pairs(dataset), progress=progress)
    if data is None:
        from probe.data.default_pairs import default_pairs_folder

        data = default_pairs_folder(progress=progress)
    read_pairs(data)
    return data


@user_errors
def correspond(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="spair71k or pfpascal, fetched on first use."),
    data: Optional[Path] = Data,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    offload: Optional[str] = Offload, tokens: str = Tokens,
    blocks: Optional[str] = Blocks,
    steps: Optional[str] = GridSteps,
    noise: Optional[str] = Noise, image_size: Optional[int] = ImageSize,
    alpha: str = typer.Option("0.05,0.1,0.15", "--alpha", help="PCK thresholds, fractions of the base size."),
    threshold: str = typer.Option("bbox", "--threshold", help="Base size: bbox (target box's longer side) or image."),
    soft_argmax: Optional[int] = typer.Option(None, "--soft-argmax", help="Soft-argmax window side in pixels (odd)."),
    pairs: Optional[int] = typer.Option(None, "--pairs", help="At most N pairs per category, first by name."),
    drop_massive: bool = typer.Option(False, "--drop-massive", help="Drop each cell's massive-activation channels."),
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    threads: Optional[int] = Threads,
    out: Path = SweepOut("correspond"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """Zero-shot semantic correspondence for every (layer, step): each source keypoint's nearest neighbour by cosine
    similarity over the target map, both maps upsampled to their images' own sizes (DIFT's protocol); PCK per point
    and per image, per category and viewpoint. --data is a folder in SPair-71k's layout (default: the embedded
    default's faces). metrics.json, keypoints.csv, matches.png, and for several cells grid.csv and grid.png. A
    resumable sweep.

    Examples:

    \b
      probe correspond
      probe correspond --data SPair-71k --blocks 6,8,12 --steps 50,150
      probe correspond --data SPair-71k --pairs 20 --threshold image
      probe correspond --dataset spair71k --soft-argmax 15 --alpha 0.1
      probe correspond --backbone dit --tokens modulated --drop-massive
      probe correspond --data SPair-71k --backbone sd \\
          --checkpoint stabilityai/stable-diffusion-2-1 --blocks up1.2 \\
          --steps 261 --noise mean-of-8
    """
    parameters = {**locals(), "ray": None}  # the command's parameters by name, for recorded_sweep_options (no Ray)
    from probe.data.pairs import check_per_category
    from probe.metrics import alpha_key, check_pck, parse_alphas

    check_pairs_source(dataset, data)
    alphas = parse_alphas(alpha)
    check_pck(alphas, threshold, soft_argmax)
    check_per_category(pairs)
    spec = spec_from_options(backbone, checkpoint, model_flags, blocks, steps, noise, False, image_size, seed, device,
                             prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label,
                             offload=offload, tokens=tokens)
    from probe.sweeps.runner import check_options as check_sweep_options
    from probe.utils.outputs import check_out

    check_out(out, inputs=[data, checkpoint, cache], command="correspond")
    check_threads(threads)
    check_sweep_options(out, command="correspond", options=recorded_sweep_options("correspond", parameters))
    data = pairs_folder(dataset, data, progress=not quiet)
    start_work()
    from probe.data.sources import backbone_spec
    from probe.tasks.correspond import CorrespondOptions, run_correspond

    options = CorrespondOptions(alphas=alphas, threshold=threshold, soft_argmax=soft_argmax, pairs=pairs,
                                drop_massive=drop_massive)
    found = run_correspond(data, backbone_spec(None, spec, progress=not quiet), options, seed, out, cache=cache,
                           threads=threads, progress=not quiet, dry_run=dry_run,
                           sweep_options=recorded_sweep_options("correspond", parameters))
    metrics, best = found.metrics, found.metrics["best"]
    at = "" if best["step"] is None else f" at t={best['step']}"
    scores = ", ".join(f"@{key} {metrics['pck_image'][key]:.1f}" for key in map(alpha_key, options.alphas))
    typer.echo(f"best cell: {best['block']}{at}, PCK per image {scores} ({metrics['pairs']} pairs)  -> {out}")
