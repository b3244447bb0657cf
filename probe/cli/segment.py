"""probe segment (the few-shot segmenter) and probe predict (a saved ensemble on new images)."""

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
    DataRoot,
    Dataset,
    DefaultOut,
    Device,
    DryRunOpt,
    EarlyBatchSize,
    Fit,
    GpusPerCell,
    Images,
    ImageSize,
    InputActivations,
    Members,
    ModelDtype,
    ModelFlagsOpt,
    Noise,
    Offload,
    Out,
    Overwrite,
    Prompt,
    Quiet,
    QuietPlan,
    Revision,
    Seed,
    Steps,
    TestNumber,
    Tokens,
    TorchThreads,
    TrainNumber,
    check_early_batch,
    check_out_folder,
    check_threads,
    early_batch_or_default,
    parse_ints,
    parse_kinds,
    plan_downloads,
    recorded_sweep_options,
    spec_from_options,
    start_sweep,
    start_work,
    user_errors,
)
from probe.errors import ProbeError


@user_errors
def segment(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Train on this folder's train split instead."),
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    offload: Optional[str] = Offload, tokens: str = Tokens,
    blocks: Optional[str] = Blocks,
    steps: Optional[str] = Steps,
    train_number: Optional[int] = TrainNumber,
    test_number: Optional[int] = TestNumber,
    members: int = Members,
    sequential: bool = typer.Option(False, "--sequential", help="Train members one by one, as the authors."),
    precision: str = typer.Option("auto", "--precision", help="First-layer products: auto, float32, bfloat16."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    seed: int = Seed,
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Fit per seed, e.g. 0,1,2: a resumable sweep."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    ray: Optional[str] = typer.Option(None, "--ray", help="With --seeds: Ray (local, auto or an address)."),
    gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = DefaultOut("segment", "Output folder; with --seeds a sweep folder"),
    overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads,
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """Few-shot segmentation (the paper's Table 2): a backbone's pixel features, an ensemble of 10 MLPs, majority
    vote, mIoU as the authors compute it.

    Examples:

    \b
      probe segment
      probe segment --dataset horse21 --out runs/horse
      probe segment --seeds 0,1,2 --backbone mae --ray local --threads 1
      probe segment --data my_dataset/ --out runs/mine
      probe segment --train-data runs/synth --out runs/on_synthetic
    """
    parameters = dict(locals())  # the command's parameters by name, for recorded_sweep_options
    from probe.data.sources import backbone_spec, open_source
    from probe.ensemble.settings import check_precision

    check_early_batch(early_batch_size)
    check_precision(precision, not sequential)
    seed_list = parse_ints(seeds, "seeds") or [seed]
    sweep = len(seed_list) > 1
    if not sweep and (ray is not None or gpus_per_cell):
        raise ProbeError("--ray / --gpus-per-cell run the seeds of --seeds as a sweep: give several seeds, "
                         "e.g. --seeds 0,1,2")
    if sweep and overwrite:
        raise ProbeError(f"--overwrite: with several --seeds, --out {out} is a sweep folder that a rerun resumes; "
                         "to start over, delete it or choose another folder")
    spec = spec_from_options(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label, offload=offload,
                 tokens=tokens)
    if sweep:
        sweep_data, downloads = start_sweep("segment", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                            gpus_per_cell, train_data, parameters=parameters, progress=not quiet,
                                            fit=fit, dry_run=dry_run, backbones=parse_kinds(backbone, checkpoint),
                                            numbers=(train_number, test_number))
        source = sweep_data.source()
    else:
        check_out_folder(out, overwrite, data, data_root, checkpoint, cache, train_data)
        check_threads(threads)
        downloads = plan_downloads("segment", dataset, data_root, parse_kinds(backbone, checkpoint), dry_run,
                                   (train_number, test_number))
        source = open_source(dataset, data_root, data, progress=not quiet, fit=fit)
    if train_data is not None:
        source.check_training_data(train_data)
    if not sweep:  # a sweep's start has begun the work
        start_work(threads)
    from probe.ensemble import resolve_precision
    from probe.tasks.segment import SegmentOptions, run_segment

    resolve_precision(precision, device, not sequential)  # a wrong choice fails now, not after extraction
    options = SegmentOptions(backbone=spec, train_number=train_number, test_number=test_number, members=members,
                             batched=not sequential, precision=precision, early_batch_size=early_batch_or_default(early_batch_size),
                             train_data=str(train_data.expanduser().absolute()) if train_data else None)
    if sweep:
        from probe.experiments.seeds import run_seeds

        result = run_seeds(sweep_data, options, seed_list, out, ray=ray, threads=threads,
                           sweep_options=recorded_sweep_options("segment", parameters),
                           gpus_per_cell=gpus_per_cell, progress=not quiet, dry_run=dry_run, downloads=downloads)
    else:
        options.backbone = backbone_spec(source, spec, progress=not quiet)
        result = run_segment(source, options, seed_list[0], out, cache, not quiet, overwrite=overwrite,
                             dry_run=dry_run, downloads=downloads)
    spread = f" ± {result['miou_std']:.2f} over seeds {result['seeds']}" if sweep else ""
    typer.echo(f"mIoU {result['miou']:.2f}%{spread}  ({source.name}, backbone {backbone})  -> {out}")


@user_errors
def predict(
    ensemble: Path = typer.Option(..., "--ensemble", help="probe segment's OUT/ensemble or probe deeplab's OUT/model."),
    images: Path = Images,
    fit: Optional[str] = Fit,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = Out, overwrite: bool = Overwrite, threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """Segment new images with a saved ensemble: OUT/predictions/<stem>.npy, visualizations, uncertainty.csv (or
    with a DeepLabV3 from probe deeplab: predictions and visualizations).

    Examples:

    \b
      probe predict --ensemble runs/segment/ensemble --images imgs/ --out runs/p
      probe predict --ensemble runs/deeplab/model --images imgs/ --out runs/p2
    """
    import json

    from probe.data.layout import load_images

    check_out_folder(out, overwrite, ensemble, images, cache)
    check_threads(threads)
    manifest = ensemble / "manifest.json"
    if not manifest.is_file():
        raise ProbeError(f"{manifest} not found: pass --ensemble with the ensemble/ folder that probe segment wrote")
    start_work(threads)
    from probe.tasks.deeplab import is_deeplab, predict_deeplab
    from probe.tasks.segment import run_predict

    resolution = json.loads(manifest.read_text())["resolution"]
    if is_deeplab(ensemble):
        stems = predict_deeplab(ensemble, load_images(images, resolution, fit=fit), out, device, not quiet,
                                overwrite=overwrite, inputs=[images])
        return typer.echo(f"segmented {len(stems)} images with DeepLabV3 -> {out}")
    table = run_predict(ensemble, load_images(images, resolution, keep_size=True, fit=fit), out, cache, device,
                        not quiet,
                        overwrite=overwrite, inputs=[images])
    typer.echo(f"segmented {len(table)} images, mean uncertainty {table['uncertainty'].mean():.4f} -> {out}")
