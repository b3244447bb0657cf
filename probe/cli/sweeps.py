"""The paper's analyses: grid, layers and kmeans (per-cell probes and clusters), efficiency, variants and
robustness (sweeps of probe segment fits)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from probe.cli.options import (
    Backbone,
    BackboneList,
    Blocks,
    Cache,
    Checkpoint,
    ClassLabel,
    Data,
    DataRoot,
    Dataset,
    DefaultOut,
    Device,
    DryRunOpt,
    EarlyBatchSize,
    Fit,
    GpusPerCell,
    GridSteps,
    ImageSize,
    InputActivations,
    Members,
    ModelDtype,
    ModelFlagsOpt,
    Noise,
    Offload,
    Overwrite,
    ProbeMembers,
    ProbeTestNumber,
    ProbeTrainNumber,
    Prompt,
    Quiet,
    QuietPlan,
    Ray,
    Revision,
    Seed,
    Steps,
    SweepOut,
    TestNumber,
    Threads,
    Tokens,
    TorchThreads,
    TrainNumber,
    check_early_batch,
    check_out_folder,
    check_threads,
    early_batch_or_default,
    parse_ints,
    parse_kinds,
    recorded_sweep_options,
    spec_from_options,
    start_sweep,
    start_work,
    user_errors,
)
from probe.errors import ProbeError


@user_errors
def grid(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    offload: Optional[str] = Offload, tokens: str = Tokens,
    blocks: Optional[str] = Blocks,
    steps: Optional[str] = GridSteps,
    train_number: Optional[int] = ProbeTrainNumber,
    test_number: Optional[int] = ProbeTestNumber,
    members: int = ProbeMembers,
    size_threshold: Optional[float] = typer.Option(None, "--size-threshold", help="Area fraction below which a class is small."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = SweepOut("grid"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """mIoU of an MLP probe for every (layer, step) of a backbone, one column for mae, swav and pixels: heatmaps
    for all, small and large classes and the per-step line plot (the paper's Fig. 2 and 3). Each probe is a cell
    of a resumable sweep, in this process or on Ray.

    Examples:

    \b
      probe grid
      probe grid --backbone random --out runs/grid_random
      probe grid --ray local --threads 1
      probe grid --dataset horse21 --steps 50,250,500,750 --ray auto
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    from probe.data.sources import backbone_spec

    spec = spec_from_options(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label, offload=offload,
                 tokens=tokens)
    sweep_data, downloads = start_sweep("grid", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, parameters=parameters, progress=not quiet, fit=fit,
                                        dry_run=dry_run, backbones=parse_kinds(backbone, checkpoint),
                                        numbers=(train_number, test_number), paper_split=False)
    import pandas as pd

    from probe.tasks.grid import GridOptions, run_grid

    options = GridOptions(backbone=backbone_spec(sweep_data.source(), spec, progress=not quiet), train_number=train_number,
                          test_number=test_number, members=members, size_threshold=size_threshold)
    table = run_grid(sweep_data, options, seed, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                     sweep_options=recorded_sweep_options("grid", parameters),
                     progress=not quiet, dry_run=dry_run, downloads=downloads)
    best = table[table.group == "all"].sort_values("miou").iloc[-1]
    at = "" if pd.isna(best.step) else f" at t={int(best.step)}"
    typer.echo(f"best cell: {best.layer}{at}, mIoU {best.miou:.2f}%  -> {out}")


def at_step(step) -> str:
    """", t=50" for a layers.csv row's step, "" for a backbone without steps (None or pandas' NA)."""
    return "" if step is None or str(step) == "<NA>" else f", t={step}"


def correspondence_layers(parameters: dict, base, given: list[Path]) -> None:
    """`probe layers --task correspondence` with the command's `parameters` (by name)."""
    from probe.backbones.spec import backbone_entries
    from probe.cli.correspond import check_pairs_source, pairs_folder
    from probe.data.pairs import check_per_category
    from probe.sweeps.runner import check_options as check_sweep_options
    from probe.utils.outputs import check_out

    p = SimpleNamespace(**parameters)
    segmentation_only = {"--data-root": p.data_root, "--train-number": p.train_number,
                         "--test-number": p.test_number, "--depths": p.depths, "--ray": p.ray}
    named = [name for name, value in segmentation_only.items() if value is not None]
    if named:
        raise ProbeError(f"{', '.join(named)}: for --task segmentation; correspondence takes --dataset spair71k or "
                         "pfpascal, --data or neither (the embedded faces)")
    check_pairs_source(p.dataset, p.data)
    check_per_category(p.pairs)
    check_out(p.out, inputs=[p.data, p.checkpoint, p.cache, *given], command="layers")
    check_threads(p.threads)
    sweep_options = recorded_sweep_options("layers", parameters)
    check_sweep_options(p.out, command="layers", options=sweep_options)
    folder = pairs_folder(p.dataset, p.data, progress=not p.quiet)
    start_work()
    from probe.data.sources import backbone_spec
    from probe.tasks.correspond import CorrespondOptions
    from probe.tasks.layers import run_correspondence_layers

    entries = [(label, backbone_spec(None, spec, progress=not p.quiet)) for label, spec in
               backbone_entries(p.backbones, base, p.steps, p.model_dtype, p.image_size, p.offload)]
    table = run_correspondence_layers(folder, entries, CorrespondOptions(pairs=p.pairs), p.seed, p.out,
                                      cache=p.cache, threads=p.threads, progress=not p.quiet,
                                      sweep_options=sweep_options, dry_run=p.dry_run)
    best = table.sort_values("pck_image", ascending=False, kind="stable").drop_duplicates("backbone")
    typer.echo(" | ".join(f"{row.backbone}: best {row.layer} (depth {row.relative_depth:.2f}"
                          f"{at_step(row.step)}) PCK@0.1 {row.pck_image:.1f}"
                          for row in best.itertuples()) + f"  -> {p.out}/layers.png")


@user_errors
def layers(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbones: str = typer.Option("ddpm,mae", "--backbones", help="Backbones, comma-separated; kind=weights for a checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="ddpm's weights when --backbones names ddpm without =."),
    model_flags: Optional[str] = ModelFlagsOpt,
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t of the diffusion backbones (default: probe grid's)."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Only the layers nearest these relative depths, e.g. 0,0.5,1 (default: all)."),
    model_dtype: Optional[str] = ModelDtype, image_size: Optional[int] = ImageSize,
    offload: Optional[str] = Offload,
    train_number: Optional[int] = ProbeTrainNumber,
    test_number: Optional[int] = ProbeTestNumber,
    members: int = ProbeMembers,
    task: str = typer.Option("segmentation", "--task", help="segmentation (probe grid's probe) or correspondence (probe correspond's PCK)."),
    pairs: Optional[int] = typer.Option(None, "--pairs", help="correspondence: at most N pairs per category."),
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = SweepOut("layers"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """One figure across models: probe grid's per-layer probe for each backbone in one resumable sweep, then mIoU
    per layer against relative depth (layer index / (layers - 1)), one line per backbone; a diffusion backbone's
    point is its best step t at that layer. --image-size goes to transformers, dit, pixart, sd3 and flux;
    --model-dtype and --offload to the backbones that take them. --task correspondence runs probe correspond per
    backbone instead (--dataset spair71k or pfpascal, or --data, default the embedded faces) and plots PCK per image
    at alpha 0.1.

    Examples:

    \b
      probe layers --backbones ddpm,mae --steps 0,50,200
      probe layers --backbones ddpm,mae,transformers=facebook/dinov2-small
      probe layers --dataset horse21 --backbones ddpm,mae,swav --ray local
      probe layers --task correspondence --backbones ddpm,mae
      probe layers --task correspondence --dataset spair71k \\
          --pairs 20 --backbones sd=stabilityai/stable-diffusion-2-1,mae
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    from probe.backbones.spec import backbone_entries, check_cell_syntax

    check_cell_syntax(steps, "steps")
    given = [Path(part.partition("=")[2].strip()) for part in backbones.split(",") if "=" in part]
    base = spec_from_options("ddpm", checkpoint, model_flags, None, None, None, False, None, seed, device, model_dtype=model_dtype)
    if task not in ("segmentation", "correspondence"):
        raise ProbeError(f"--task {task!r}: use segmentation or correspondence")
    if task == "correspondence":
        return correspondence_layers(parameters, base, given)
    if pairs is not None:
        raise ProbeError("--pairs is for --task correspondence")
    sweep_data, downloads = start_sweep("layers", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, *given, parameters=parameters, progress=not quiet,
                                        dry_run=dry_run, backbones=parse_kinds(backbones, checkpoint, "--backbones"),
                                        numbers=(train_number, test_number), paper_split=False)
    from probe.tasks.layers import parse_depths, run_layers

    chosen_depths = parse_depths(depths)
    entries = backbone_entries(backbones, base, steps, model_dtype, image_size, offload)
    table = run_layers(sweep_data, entries, seed, out, train_number=train_number, test_number=test_number,
                       sweep_options=recorded_sweep_options("layers", parameters), depths=chosen_depths,
                       members=members, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell, progress=not quiet,
                       dry_run=dry_run, downloads=downloads)
    best = table.sort_values("miou", ascending=False, kind="stable").drop_duplicates("backbone")
    typer.echo(" | ".join(f"{row.backbone}: best {row.layer} (depth {row.relative_depth:.2f}"
                          f"{at_step(row.step)}) "
                          f"mIoU {row.miou:.1f}" for row in best.itertuples()) + f"  -> {out}/layers.png")


@user_errors
def kmeans(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    offload: Optional[str] = Offload, tokens: str = Tokens,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers, the figure's rows (default: four spread ones)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps, the columns (default 50,200,...,800)."),
    k: int = typer.Option(5, "--k", help="Clusters."),
    images: Optional[str] = typer.Option(None, "--images", help="Comma-separated image files (default: the test split)."),
    n_images: int = typer.Option(2, "--n-images", help="How many test images when --images is not given."),
    fit_on: str = typer.Option("image", "--fit-on", help="image (centroids per image) or all (shared centroids)."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    out: Path = DefaultOut("kmeans"),
    overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """faiss k-means over the pixel features of each cell: kmeans.png and clusters.npz (the paper's Fig. 4).

    Examples:

    \b
      probe kmeans --blocks 6,8,10,12
      probe kmeans --images a.png,b.png --fit-on all --k 6
      probe kmeans --backbone mae
    """
    from probe.data.sources import backbone_spec, open_source

    image_files = [Path(p) for p in images.split(",") if p] if images else []
    check_out_folder(out, overwrite, data, data_root, checkpoint, cache, *image_files)
    check_threads(threads)
    spec = spec_from_options(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label, offload=offload,
                 tokens=tokens)
    source = open_source(dataset, data_root, data, progress=not quiet, fit=fit)
    start_work(threads)
    from probe.tasks.kmeans import run_kmeans

    maps = run_kmeans(source, backbone_spec(source, spec, progress=not quiet), k, seed, fit_on, out, image_files=image_files,
                      n_images=n_images, cache=cache, progress=not quiet, overwrite=overwrite)
    count = len({stem for stem, _, _ in maps})
    typer.echo(f"clustered {count} images into {k} clusters per cell -> {out}/kmeans.png")


@user_errors
def efficiency(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    train_numbers: Optional[str] = typer.Option(None, "--train-numbers", help="Training image counts (default: 1,2,5,10,20, up to a paper dataset's split)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: each draws its subsets, noise and initialisation."),
    members: int = Members,
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = SweepOut("efficiency"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """mIoU against the number of labelled training images per backbone (the paper's Table 4): a resumable sweep
    of `probe segment` fits, in this process or on Ray.

    Examples:

    \b
      probe efficiency --train-numbers 1,5,20 --seeds 0,1
      probe efficiency --ray local --threads 1
      probe efficiency --dataset horse21 --backbones ddpm,mae,pixels
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    check_early_batch(early_batch_size)
    base = spec_from_options("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    numbers, seed_list = parse_ints(train_numbers, "train-numbers"), parse_ints(seeds, "seeds")
    if numbers == [] or not seed_list:
        raise ProbeError("--train-numbers and --seeds need at least one value each")
    sweep_data, downloads = start_sweep("efficiency", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, parameters=parameters, progress=not quiet, fit=fit,
                                        dry_run=dry_run, backbones=parse_kinds(backbones, checkpoint, "--backbones"))
    from probe.backbones.spec import backbone_entries
    from probe.experiments.efficiency import run_efficiency

    specs = [spec for _, spec in backbone_entries(backbones, base)]
    table = run_efficiency(sweep_data, specs, numbers, seed_list, out, members=members,
                           sweep_options=recorded_sweep_options("efficiency", parameters),
                           early_batch_size=early_batch_or_default(early_batch_size), ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run, downloads=downloads)
    summary = table.groupby(["backbone", "train_number"], sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{b} {n}: {m}" for (b, n), m in summary.items()) + f"  -> {out}/table.md")


@user_errors
def variants(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbone: str = typer.Option("ddpm", "--backbone", help="A diffusion backbone: ddpm or random."),
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    blocks: Optional[str] = Blocks, steps: Optional[str] = Steps,
    draws: int = typer.Option(4, "--draws", help="K of the mean-of-K variant."),
    inversion_steps: int = typer.Option(25, "--inversion-steps", help="DDIM steps from 0 to t of the inversion variant."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: noise, initialisation and shuffles."),
    train_number: Optional[int] = TrainNumber,
    members: int = Members,
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = SweepOut("variants"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """The extraction variants side by side (the paper's Table 5, extended): shared noise (the authors'), noise per
    image, the mean over K draws, and x_t reached by deterministic DDIM inversion of x0; mean ± std over seeds.

    Examples:

    \b
      probe variants
      probe variants --seeds 0,1 --draws 8 --inversion-steps 50
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    check_early_batch(early_batch_size)
    if draws < 1 or inversion_steps < 1:
        raise ProbeError(f"--draws {draws} / --inversion-steps {inversion_steps}: give 1 or more")
    seed_list = parse_ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    spec = spec_from_options(backbone, checkpoint, model_flags, blocks, steps, None, False, None, 0, device)
    sweep_data, downloads = start_sweep("variants", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, parameters=parameters, progress=not quiet, fit=fit,
                                        dry_run=dry_run, backbones=parse_kinds(backbone, checkpoint),
                                        numbers=(train_number, None))
    from probe.experiments.variants import run_variants, variant_names

    table = run_variants(sweep_data, spec, variant_names(draws, inversion_steps), seed_list, out,
                         sweep_options=recorded_sweep_options("variants", parameters),
                         train_number=train_number, members=members, early_batch_size=early_batch_or_default(early_batch_size), ray=ray,
                         threads=threads, gpus_per_cell=gpus_per_cell, progress=not quiet, dry_run=dry_run,
                         downloads=downloads)
    summary = table.groupby("variant", sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{v}: {m}" for v, m in summary.items()) + f"  -> {out}/table.md")


@user_errors
def robustness(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    corruptions: str = typer.Option("all", "--corruptions", help="all (ImageNet-C's 19) or a list, e.g. fog,gaussian_noise."),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Corruption severities in 1..5: all or a comma list."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds, e.g. 0,1,2."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images, clean (default: the paper's split, else up to 20)."),
    test_number: Optional[int] = TestNumber,
    members: int = Members,
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = SweepOut("robustness"),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """Robustness to image corruptions (the paper's Fig. 6): per backbone and seed one ensemble fit on clean
    images (as `probe segment`), scored on the clean test images and on each ImageNet-C corruption at each
    severity; the mIoU drop relative to clean per severity, averaged over corruptions, mean ± std over seeds.
    Images must be at least 32x32. Corrupted copies' activations are deleted as scored.

    Examples:

    \b
      probe robustness --corruptions fog,gaussian_noise --severities 1,3,5
      probe robustness --ray local --threads 1
      probe robustness --dataset horse21 --backbones ddpm,pixels
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    from probe.data.corruptions import parse_corruptions, parse_severities

    check_early_batch(early_batch_size)
    names, levels, seed_list = parse_corruptions(corruptions), parse_severities(severities), parse_ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    base = spec_from_options("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    sweep_data, downloads = start_sweep("robustness", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                        gpus_per_cell, parameters=parameters, progress=not quiet, fit=fit,
                                        dry_run=dry_run, backbones=parse_kinds(backbones, checkpoint, "--backbones"),
                                        numbers=(train_number, test_number))
    from probe.backbones.spec import backbone_entries
    from probe.experiments.robustness import run_robustness

    specs = [spec for _, spec in backbone_entries(backbones, base)]
    table = run_robustness(sweep_data, specs, names, levels, seed_list, out,
                           sweep_options=recorded_sweep_options("robustness", parameters),
                           train_number=train_number, test_number=test_number, members=members,
                           early_batch_size=early_batch_or_default(early_batch_size), ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run, downloads=downloads)
    clean = table.drop_duplicates(["backbone", "seed"]).groupby("backbone", sort=False)["clean_miou"].mean()
    drop = table.groupby(["backbone", "severity"], sort=False)["drop"].mean().round(1)
    typer.echo(" | ".join(f"{b}: clean {clean[b]:.1f}, drop " + ", ".join(f"s{s} {d}" for s, d in drop[b].items())
                          for b in clean.index) + f"  -> {out}/table.md")
