"""DatasetDDPM: probe synthesize (a labelled dataset drawn from a DDPM) and probe deeplab (trained on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.options import (
    Data,
    DataRoot,
    Dataset,
    Device,
    DryRunOpt,
    GpusPerCell,
    Quiet,
    QuietPlan,
    Ray,
    RunOut,
    Seed,
    Threads,
    TorchThreads,
    check_threads,
    start_work,
    user_errors,
)


@user_errors
def synthesize(
    ensemble: Path = typer.Option(Path("runs/segment/ensemble"), "--ensemble", help="probe segment's OUT/ensemble (ddpm backbone)."),
    n: int = typer.Option(1000, "--n", help="Images to draw."),
    sampler: str = typer.Option("ddpm", "--sampler", help="ddpm (every step, as the authors) or ddim:K (faster)."),
    seed: int = typer.Option(0, "--seed", help="Seed: image i's noise comes from (seed, i)."),
    drop_uncertain: float = typer.Option(0.1, "--drop-uncertain", help="Share of most uncertain images set aside."),
    chunk_size: int = typer.Option(32, "--chunk-size", help="Images per batch (one resumable cell)."),
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device,
    out: Path = typer.Option(Path("runs/synthesize"), "--out", help="Run folder; a rerun resumes."),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """Synthesize a labelled dataset (the authors' DatasetDDPM data): images drawn from the ensemble's DDPM, labelled
    pixel by pixel by the ensemble's majority vote with each image's Jensen-Shannon uncertainty (as probe predict),
    written in the toolkit's layout. Chunks stream to disk (memory does not grow with --n) and are cells of the
    sweep runner: a killed run resumes at the first unfinished chunk, --ray spreads them over a cluster's GPUs
    (--out and the ensemble on a shared filesystem).

    Examples:

    \b
      probe segment && probe synthesize --n 64 --out runs/synth
      probe synthesize --ensemble runs/horse/ensemble --n 10000 --sampler ddim:100
      probe synthesize --ensemble runs/horse/ensemble --n 10000 --ray auto \\
        --gpus-per-cell 1 --device cuda
    """
    check_threads(threads, gpus_per_cell)
    start_work()
    from probe.tasks.synthesize import SynthesizeOptions, run_synthesize

    options = SynthesizeOptions(n=n, sampler=sampler, seed=seed, drop_uncertain=drop_uncertain, chunk_size=chunk_size,
                                device=device)
    table = run_synthesize(ensemble, options, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run)
    typer.echo(f"{len(table)} images, {int(table['kept'].sum())} kept in {out}/train, mean uncertainty "
               f"{table['uncertainty'].mean():.4f}  -> {out}")


@user_errors(resumable=True)
def deeplab(
    train_data: Path = typer.Option(..., "--train-data", help="A folder whose train/ split trains it (e.g. probe synthesize's)."),
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    arch: str = typer.Option("resnet101", "--arch", help="resnet101 (the authors') or resnet50 (faster)."),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    val_number: Optional[int] = typer.Option(None, "--val-number", help="Real training images picking the epoch (default: the paper's split, else all)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Real test images, the first by name (default: the paper's split, else up to 20)."),
    seed: int = Seed, device: str = Device,
    out: Path = RunOut(Path("runs/deeplab")),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt (the last finished epoch)."),
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """DatasetDDPM: a DeepLabV3 (random init, no auxiliary head; Adam, cross-entropy, the authors' recipe) trained
    on --train-data; the epoch with the best mIoU on the real training images is kept and scored on the real test
    split (the data options, default: the embedded default) with the authors' mIoU. probe predict --ensemble
    OUT/model segments new images with it.

    Examples:

    \b
      probe deeplab --train-data runs/synth --arch resnet50 --out runs/deeplab
      probe deeplab --train-data runs/synth --dataset horse21 --device cuda
    """
    from probe.data.sources import open_source

    check_threads(threads)
    source = open_source(dataset, data_root, data, progress=not quiet)
    start_work(threads)
    from probe.tasks.deeplab import DeepLabOptions, run_deeplab

    options = DeepLabOptions(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                             val_number=val_number, test_number=test_number)
    metrics = run_deeplab(train_data, source, options, out, resume=resume, progress=not quiet)
    typer.echo(f"mIoU {metrics['miou']:.2f}% (best epoch {metrics['best_epoch']}, validation mIoU "
               f"{metrics['val_miou']:.2f}%)  -> {out}")
