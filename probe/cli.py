"""The `probe` command: parses options, calls one function per command, prints. No logic lives here."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from probe.errors import ProbeError

app = typer.Typer(
    help="Look inside diffusion models: per-layer/per-step probes (grid), k-means (kmeans) and the few-shot "
         "segmenter (segment) of Baranchuk et al., ICLR 2022, on a DDPM or the paper's baselines (--backbone ddpm, "
         "random, pixels, mae, swav, swav_w2). With no data options every command runs on the embedded default: a "
         "synthetic face-parts domain and a small DDPM shipped with the package.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode="rich",
)
ddpm_app = typer.Typer(help="Train and sample the guided-diffusion-compatible DDPMs the toolkit probes.", no_args_is_help=True)
mae_app = typer.Typer(help="Train an MAE (the paper's MAE baseline) whose weights load with --backbone mae.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: write the embedded default domain.", no_args_is_help=True)
cache_app = typer.Typer(help="The cache: activations per backbone, the default domain, downloaded datasets and "
                                 "checkpoints ($PROBE_CACHE, default ~/.cache/probe).", no_args_is_help=True)
app.add_typer(ddpm_app, name="ddpm")
app.add_typer(mae_app, name="mae")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
console = Console(stderr=True)


@app.callback()
def startup(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    """Runs before every command, whichever way probe was started (the `probe` script or `python -m probe`)."""
    from probe.runtime import tune_process

    if version:
        from probe import __version__

        typer.echo(f"probe {__version__}")
        raise typer.Exit()
    logging.basicConfig(level=logging.INFO, format="probe: %(message)s", stream=sys.stderr)
    tune_process()


def user_errors(command=None, *, resumable: bool = False):
    """Print a ProbeError as one line on stderr and exit 2, without a traceback; on Ctrl-C say in one line what
    was kept and exit 130. `resumable`: the command writes --out as it goes and resumes with --resume."""
    if command is None:
        return functools.partial(user_errors, resumable=resumable)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ProbeError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print(f"[bold yellow]interrupted:[/] {escape(_interrupt_note(kwargs.get('out'), resumable))}",
                          highlight=False, soft_wrap=True)
            sys.exit(130)
    return wrapper


def _interrupt_note(out: Path | None, resumable: bool) -> str:
    """What an interrupted command kept: --out untouched (or its checkpoints, or a sweep's finished cells) and the
    activations it cached."""
    from probe.outputs import read_marker
    from probe.store import ActivationStore

    notes = []
    if out is not None and resumable:
        notes.append(f"{out} keeps the checkpoints saved so far; rerun with --resume to continue")
    elif out is not None and (read_marker(out) or {}).get("mode") == "working":
        cells = len(list((Path(out) / "cells").glob("*.json")))
        notes.append(f"{out} keeps the {cells} cells finished so far; rerun the same command to compute the rest")
    elif out is not None:
        notes.append(f"nothing was written to {out}")
    if ActivationStore.written:
        notes.append(f"the {ActivationStore.written} activation files extracted so far stay in the cache and a rerun "
                     "reuses them")
    return "; ".join(notes) or "nothing was kept"


def _check_out(out: Path, overwrite: bool, *inputs: Optional[Path]) -> None:
    """Refuse a bad --out before anything is loaded (probe.outputs.check_out)."""
    from probe.outputs import check_out

    check_out(out, overwrite=overwrite, inputs=inputs)


# Options shared by the commands that read a dataset and a backbone.
Dataset = typer.Option(None, "--dataset", help="A paper dataset: bedroom28, ffhq34, cat15, horse21, celeba19, ade_bedroom30; downloaded into the cache on first use, with its paper checkpoint.")
DataRoot = typer.Option(None, "--data-root", help="Your copy of the paper datasets (<data-root>/horse_21/real/train ...) instead of the cached one.")
Data = typer.Option(None, "--data", help="Any dataset folder in the authors' layout (train/ and test/ with .npy label maps). Without --checkpoint the embedded default DDPM is used (images resized to 32x32).")
Backbone = typer.Option("ddpm", "--backbone", help="ddpm (a guided-diffusion UNet; default: the shipped DDPM), random (the same UNet, seeded random weights), pixels (3x3 RGB), mae (an MAE ViT; default: the shipped MAE), swav or swav_w2 (a SwAV ResNet), diffusers (a diffusers UNet2DModel folder, e.g. google/ddpm-ema-bedroom-256), sd (a Stable Diffusion pipeline folder); diffusers and sd need pip install -e \".\\[diffusers]\".")
Checkpoint = typer.Option(None, "--checkpoint", help="The backbone's checkpoint (default with --dataset: the paper's, downloaded on first use): guided-diffusion .pt, MAE {'model': ...} or SwAV {'state_dict': ...}; diffusers/sd: a hub name (google/ddpm-ema-bedroom-256) or the model / pipeline folder.")
Revision = typer.Option(None, "--revision", help="diffusers/sd with a hub name: the branch, tag or commit (default main).")
Prompt = typer.Option(None, "--prompt", help="sd only: the text prompt the UNet is conditioned on (default: empty), encoded once with the pipeline's text encoder.")
ModelFlagsOpt = typer.Option(None, "--model-flags", help="ddpm/random: guided-diffusion flags string or JSON file (flags left out are inferred from the checkpoint); mae: \"--num_heads N\".")
Blocks = typer.Option(None, "--blocks", help="Layers: indices (5,6,7,8,12), ranges (0-17), names (block5, layer2.0) or all. ddpm: decoder blocks (output_blocks); diffusers/sd: the layers of up_blocks in order, block b = up{i}.{j} (the j-th resnet of up_blocks[i] with its attention, and its upsampler on the last; with 3 layers per up block, as google/ddpm-ema and SD 1.x/2.x, block b = up{b//3}.{b%3}; up{i}.{j} names work too); mae: encoder blocks; swav: ResNet sublayers in order.")
Steps = typer.Option(None, "--steps", help="Diffusion steps t, e.g. 50,150,250 (ddpm, random, diffusers, sd; of the scheduler's num_train_timesteps for diffusers/sd).")
Noise = typer.Option(None, "--noise", help="ddpm/random/diffusers/sd: shared (default: one seeded noise for all images and steps, as the authors), per-image, mean-of-K, or ddim-inversion[-K] (x_t by deterministic DDIM inversion in K steps; ddpm/random only).")
InputActivations = typer.Option(False, "--input-activations", help="ddpm/random: take each block's input instead of its output.")
ImageSize = typer.Option(None, "--image-size", help="pixels/swav: the input size (default: the dataset's; 256 for the paper's datasets). The others take their model's size.")
Seed = typer.Option(0, "--seed", help="Seed of every random choice (noise, random weights, initialisation, shuffles).")
Device = typer.Option("cpu", "--device", help="cpu or cuda.")
Out = typer.Option(..., "--out", help="Output folder: new or empty, or a previous result with --overwrite.")
Overwrite = typer.Option(False, "--overwrite", help="Replace --out when it holds a previous result of probe (never a folder of other files).")
Cache = typer.Option(None, "--cache", help="Activation store folder (default $PROBE_CACHE/activations, ~/.cache/probe).")
Quiet = typer.Option(False, "--quiet", help="No progress bars.")
EarlyBatchSize = typer.Option(None, "--early-batch-size", help="The ensemble's pixels per step in the epochs early stopping does not check (0..3), Adam's lr scaled by it / 64; the checked epochs keep the authors' 64. Default 128: within the authors' rule's seed spread over 3 seeds on the default and at the paper's shape (about 0.4 mIoU points lower paired there), training 1.3-1.5x faster; 64: the authors' rule throughout, their numbers; 256 or 512: faster still, about 0.6-1 point less at the paper's shape (analysis/training_rule.sh).")
TorchThreads = typer.Option(None, "--threads", help="Torch threads (default: all cores). On a shared machine keep threads x processes <= cores; recorded in metrics.json.")


def _early_batch(size: int | None) -> int:
    """--early-batch-size, checked before any work; None: EARLY_BATCH_SIZE."""
    from probe.ensemble import EARLY_BATCH_SIZE

    if size is not None and size < 2:
        raise ProbeError(f"--early-batch-size {size}: batch normalisation needs at least 2 pixels per batch (64 is "
                         "the authors' rule)")
    return EARLY_BATCH_SIZE if size is None else size


def _torch_threads(threads: Optional[int]) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ProbeError(f"--threads {threads}: give 1 or more")
    import torch

    torch.set_num_threads(threads)


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ProbeError(f"--{what} {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _spec(backbone: str, checkpoint: Optional[Path], model_flags: Optional[str], blocks: Optional[str],
          steps: Optional[str], noise: Optional[str], input_activations: bool, image_size: Optional[int], seed: int,
          device: str, prompt: Optional[str] = None, revision: Optional[str] = None):
    """The backbone options as a BackboneSpec; the syntax of --blocks / --steps is checked before anything loads."""
    from probe.backbones import BackboneSpec, check_cell_syntax

    check_cell_syntax(blocks, "blocks")
    check_cell_syntax(steps, "steps")
    return BackboneSpec(kind=backbone, checkpoint=checkpoint, model_flags=model_flags, layers=blocks, steps=steps,
                        noise=noise, seed=seed, input_activations=input_activations, image_size=image_size,
                        device=device, prompt=prompt, revision=revision)


def _sweep_start(command: str, out: Path, dataset: Optional[str], data_root: Optional[Path], data: Optional[Path],
                 cache: Optional[Path], checkpoint: Optional[Path], ray: Optional[str], threads: Optional[int],
                 gpus_per_cell: float, *inputs: Optional[Path], progress: bool = True):
    """Check a sweep's folder and runner options before anything loads; the sweep's data options, a paper dataset
    fetched into the cache when no --data-root is given. `inputs`: other folders the sweep reads."""
    from probe.data.fetch import dataset_root
    from probe.data.registry import lookup
    from probe.experiments import SweepData
    from probe.outputs import check_out

    check_out(out, inputs=[data, data_root, checkpoint, cache, *inputs], command=command)
    if threads is not None and threads < 1:
        raise ProbeError(f"--threads {threads}: give 1 or more")
    if gpus_per_cell < 0:
        raise ProbeError(f"--gpus-per-cell {gpus_per_cell}: give 0 or more")
    if dataset and data is None and data_root is None:
        data_root = dataset_root(lookup(dataset), progress=progress)

    def absolute(path: Optional[Path]) -> Optional[str]:  # as a Ray worker, whose folder differs, must see it
        return str(Path(path).expanduser().absolute()) if path else None

    return SweepData(dataset, absolute(data_root), absolute(data), absolute(cache))


Ray = typer.Option(None, "--ray", help="Run the cells on Ray: local (a cluster on this machine's cores), auto (the running cluster) or its address. Default: in this process.")
Threads = typer.Option(None, "--threads", help="Torch threads per cell (default: all cores in this process, 1 per Ray task). Recorded per cell; the mIoU depends slightly on it.")
GpusPerCell = typer.Option(0.0, "--gpus-per-cell", help="GPUs each Ray task reserves (with --device cuda).")
BackboneList = typer.Option("ddpm,random,pixels", "--backbones", help="Backbones, comma-separated; a checkpoint after = (ddpm=lsun_horse.pt,mae=mae.pth).")


@app.command()
@user_errors
def features(
    images: Path = typer.Option(..., "--images", help="Folder of images (or one image file)."),
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers (default: ddpm all decoder blocks; mae the last 12 encoder blocks; swav every other sublayer). Indices, ranges, names or all. diffusers/sd: block b is the b-th layer of up_blocks, up{b//3}.{b%3} with 3 layers per up block (google/ddpm-ema, SD 1.x/2.x); up{i}.{j} names work too."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (ddpm/random; default 50,150,250)."),
    seed: int = Seed, input_activations: bool = InputActivations, noise: Optional[str] = Noise,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="pixels/swav: the input size (default: the images' own)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float16."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward."),
    device: str = Device,
    out: Path = Out, overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """Export a backbone's feature maps: OUT/<stem>.npz with one (C, h, w) array per cell at native resolution,
    named t{t}_block{b} (ddpm), block{b} (mae) or layer{L}.{j} (swav).

    Examples: probe features --checkpoint lsun_horse.pt --model-flags "--image_size 256 ..." --images imgs/
    --steps 50,150,250 --blocks 5,6,7,8,12 --out feats/   |
    probe features --backbone mae --checkpoint mae.pth --model-flags "--num_heads 16" --images imgs/ --out feats/
    """
    from probe.backbones import build_backbone
    from probe.data.layout import load_images, native_size
    from probe.extract import export_features
    from probe.sources import backbone_spec

    _check_out(out, overwrite, images, checkpoint)
    _torch_threads(threads)
    spec = backbone_spec(None, _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations,
                                     image_size, seed, device, prompt=prompt, revision=revision), progress=not quiet)
    chosen = build_backbone(spec, "features", native_size(images))
    written = export_features(chosen, load_images(images, chosen.image_size), out, dtype, batch_size, not quiet,
                              overwrite=overwrite, inputs=[images, checkpoint])
    console.print(f"wrote {len(written)} files with {len(chosen.names)} arrays each to {out}")


@app.command()
@user_errors
def segment(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Train on the train split of this dataset folder (e.g. the output of probe synthesize) instead of the data's own; the test split stays the data's. Its classes must be the data's."),
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers (default: ddpm blocks 5,6,7,8,12 of 18, scaled to the model's depth; mae the last 12 encoder blocks; swav every other sublayer). Indices, ranges, names or all. diffusers/sd: block b is the b-th layer of up_blocks, up{b//3}.{b%3} with 3 layers per up block (google/ddpm-ema, SD 1.x/2.x); up{i}.{j} names work too."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (ddpm/random; default 50,150,250 of T = 1000, scaled to T)."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Test images, the first N by name (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs in the ensemble."),
    sequential: bool = typer.Option(False, "--sequential", help="Train members one by one as the authors (default: batched, same algorithm)."),
    precision: str = typer.Option("auto", "--precision", help="Products of the ensemble's first layer: float32, bfloat16 (batched only; float32 master weights) or auto (bfloat16 where the hardware multiplies it natively)."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    seed: int = Seed,
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Repeat the whole fit per seed (e.g. 0,1,2) and report mean ± std. Several seeds are a resumable sweep: --out gets seed_<s>/ as each finishes, and a rerun resumes."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    ray: Optional[str] = typer.Option(None, "--ray", help="With several --seeds: run the seeds on Ray: local, auto or an address (on a cluster, --out and the cache must be on a shared filesystem)."),
    gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/segment"), "--out", help="Output folder: new or empty, or a previous result with --overwrite (one seed); the sweep folder (several seeds)."),
    overwrite: bool = Overwrite,
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: all cores; with several --seeds on Ray, 1 per seed). On a shared machine keep threads x processes <= cores; recorded in metrics.json."),
    quiet: bool = Quiet,
):
    """Few-shot segmentation: a backbone's pixel features (the paper's: UNet decoder blocks {5,6,7,8,12} at
    t {50,150,250}), an ensemble of 10 MLPs, majority vote, mIoU (%) as the authors compute it.

    Examples: probe segment   |   probe segment --seeds 0,1,2 --backbone mae   |
    probe segment --seeds 0,1,2 --ray local --threads 1   |
    probe segment --early-batch-size 64 (the authors' training rule throughout, their numbers)   |
    probe segment --data my_dataset/ --out runs/mine (the embedded default model)   |
    probe segment --train-data runs/synth --out runs/on_synthetic (train on probe synthesize's images)   |
    probe segment --dataset horse21 --data-root datasets/ --checkpoint lsun_horse.pt --out runs/horse
    """
    from probe.ensemble import resolve_precision
    from probe.segment import SegmentOptions, run_segment
    from probe.sources import backbone_spec, open_source

    early = _early_batch(early_batch_size)
    seed_list = _ints(seeds, "seeds") or [seed]
    sweep = len(seed_list) > 1
    if not sweep and (ray is not None or gpus_per_cell):
        raise ProbeError("--ray / --gpus-per-cell run the seeds of --seeds as a sweep: give several seeds, "
                         "e.g. --seeds 0,1,2")
    if sweep and overwrite:
        raise ProbeError(f"--overwrite: with several --seeds, --out {out} is a sweep folder that a rerun resumes; "
                         "to start over, delete it or choose another folder")
    if sweep:
        sweep_data = _sweep_start("segment", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                  gpus_per_cell, train_data, progress=not quiet)
    else:
        _check_out(out, overwrite, data, data_root, checkpoint, cache, train_data)
        _torch_threads(threads)
    resolve_precision(precision, device, not sequential)  # a wrong choice fails now, not after extraction
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision)
    source = sweep_data.source() if sweep else open_source(dataset, data_root, data, progress=not quiet)
    if train_data is not None:
        source.check_training_data(train_data)
    options = SegmentOptions(backbone=spec, train_number=train_number, test_number=test_number, members=members,
                             batched=not sequential, precision=precision, early_batch_size=early,
                             train_data=str(train_data.expanduser().absolute()) if train_data else None)
    if sweep:
        from probe.experiments.seeds import run_seeds

        result = run_seeds(sweep_data, options, seed_list, out, ray=ray, threads=threads,
                           gpus_per_cell=gpus_per_cell, progress=not quiet)
    else:
        options.backbone = backbone_spec(source, spec, progress=not quiet)
        result = run_segment(source, options, seed_list[0], out, cache, not quiet, overwrite=overwrite)
    spread = f" ± {result['miou_std']:.2f} over seeds {result['seeds']}" if sweep else ""
    typer.echo(f"mIoU {result['miou']:.2f}%{spread}  ({source.name}, backbone {backbone})  -> {out}")


@app.command()
@user_errors
def grid(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers (default: all of the backbone's). diffusers/sd: block b is the b-th layer of up_blocks, up{b//3}.{b%3} with 3 layers per up block (google/ddpm-ema, SD 1.x/2.x); up{i}.{j} names work too."),
    steps: Optional[str] = typer.Option(None, "--steps", help="ddpm/random steps (default 0,50,100,200,300,400,600,800,999, scaled to the model's T)."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images per probe (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Held-out images that score each probe (default: up to 20)."),
    members: int = typer.Option(1, "--members", help="MLPs per probe (each trained with the authors' rule: batches of 64, float32 products)."),
    size_threshold: Optional[float] = typer.Option(None, "--size-threshold", help="Mean-area fraction below which a class is small (default: the median)."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = typer.Option(Path("runs/grid"), "--out", help="Sweep folder: cells/ as each probe finishes, then grid.csv, grid_per_class.csv, the heatmaps. A rerun resumes."),
    quiet: bool = Quiet,
):
    """mIoU of an MLP probe for every (layer, step) of a backbone, one column for mae, swav and pixels: heatmaps
    for all, small and large classes and the per-step line plot (the paper's Fig. 2 and 3). Each probe is a cell
    of a resumable sweep, in this process or on Ray.

    Examples: probe grid   |   probe grid --backbone random --out runs/grid_random   |   probe grid --backbone mae   |
    probe grid --ray local --threads 1   |
    probe grid --dataset horse21 --data-root datasets/ --checkpoint lsun_horse.pt --steps 50,250,500,750 --ray auto
    """
    import pandas as pd

    from probe.grid import GridOptions, run_grid
    from probe.sources import backbone_spec

    sweep_data = _sweep_start("grid", out, dataset, data_root, data, cache, checkpoint, ray, threads, gpus_per_cell,
                              progress=not quiet)
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision)
    options = GridOptions(backbone=backbone_spec(sweep_data.source(), spec, progress=not quiet), train_number=train_number,
                          test_number=test_number, members=members, size_threshold=size_threshold)
    table = run_grid(sweep_data, options, seed, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                     progress=not quiet)
    best = table[table.group == "all"].sort_values("miou").iloc[-1]
    at = "" if pd.isna(best.step) else f" at t={int(best.step)}"
    typer.echo(f"best cell: {best.layer}{at}, mIoU {best.miou:.2f}%  -> {out}")


@app.command()
@user_errors
def kmeans(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers, the rows of the figure (default: ddpm blocks 6,8,10,12 of 18, scaled; mae four blocks up to the last; swav the last sublayer of each stage). diffusers/sd: block b is the b-th layer of up_blocks, up{b//3}.{b%3} with 3 layers per up block (google/ddpm-ema, SD 1.x/2.x); up{i}.{j} names work too."),
    steps: Optional[str] = typer.Option(None, "--steps", help="ddpm/random steps, the columns (default 50,200,400,600,800 of T = 1000, scaled)."),
    k: int = typer.Option(5, "--k", help="Clusters."),
    images: Optional[str] = typer.Option(None, "--images", help="Comma-separated image files (default: the test split)."),
    n_images: int = typer.Option(2, "--n-images", help="How many test images when --images is not given."),
    fit_on: str = typer.Option("image", "--fit-on", help="image (centroids per image) or all (shared centroids)."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/kmeans"), "--out", help="Output folder: new or empty, or a previous result with --overwrite."),
    overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """faiss k-means over the pixel features of each cell: kmeans.png and clusters.npz (the paper's Fig. 4).

    Examples: probe kmeans --blocks 6,8,10,12   |   probe kmeans --images a.png,b.png --fit-on all --k 6   |
    probe kmeans --backbone mae
    """
    from probe.clusters import run_kmeans
    from probe.sources import backbone_spec, open_source

    image_files = [Path(p) for p in images.split(",") if p] if images else []
    _check_out(out, overwrite, data, data_root, checkpoint, cache, *image_files)
    _torch_threads(threads)
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision)
    source = open_source(dataset, data_root, data, progress=not quiet)
    maps = run_kmeans(source, backbone_spec(source, spec, progress=not quiet), k, seed, fit_on, out, image_files=image_files,
                      n_images=n_images, cache=cache, progress=not quiet, overwrite=overwrite)
    count = len({stem for stem, _, _ in maps})
    typer.echo(f"clustered {count} images into {k} clusters per cell -> {out}/kmeans.png")


@app.command()
@user_errors
def predict(
    ensemble: Path = typer.Option(..., "--ensemble", help="An ensemble folder written by probe segment (OUT/ensemble), or a DeepLabV3 written by probe deeplab (OUT/model)."),
    images: Path = typer.Option(..., "--images", help="Folder of images (or one image file)."),
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = Out, overwrite: bool = Overwrite, threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """Segment new images with a saved ensemble: OUT/predictions/<stem>.npy, visualizations, uncertainty.csv (or
    with a DeepLabV3 from probe deeplab: predictions and visualizations).

    Examples: probe predict --ensemble runs/segment/ensemble --images new_images/ --out runs/predicted   |
    probe predict --ensemble runs/deeplab/model --images new_images/ --out runs/predicted_deeplab
    """
    import json

    from probe.data.layout import load_images
    from probe.deeplab import is_deeplab, predict_deeplab
    from probe.segment import run_predict

    _check_out(out, overwrite, ensemble, images, cache)
    _torch_threads(threads)
    manifest = ensemble / "manifest.json"
    if not manifest.is_file():
        raise ProbeError(f"{manifest} not found: pass --ensemble with the ensemble/ folder that probe segment wrote")
    resolution = json.loads(manifest.read_text())["resolution"]
    if is_deeplab(ensemble):
        stems = predict_deeplab(ensemble, load_images(images, resolution), out, device, not quiet,
                                overwrite=overwrite, inputs=[images])
        return typer.echo(f"segmented {len(stems)} images with DeepLabV3 -> {out}")
    table = run_predict(ensemble, load_images(images, resolution), out, cache, device, not quiet,
                        overwrite=overwrite, inputs=[images])
    typer.echo(f"segmented {len(table)} images, mean uncertainty {table['uncertainty'].mean():.4f} -> {out}")


@app.command()
@user_errors
def efficiency(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    train_numbers: str = typer.Option("1,2,5,10,20", "--train-numbers", help="Numbers of labelled training images (each subset drawn per seed from the train split)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: each draws its subsets, noise and initialisation."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/efficiency"), "--out", help="Sweep folder: cells/ as they finish, then efficiency.csv, table.md, efficiency.png. A rerun resumes."),
    quiet: bool = Quiet,
):
    """mIoU against the number of labelled training images per backbone (the paper's Table 4): a resumable sweep
    of `probe segment` fits, in this process or on Ray.

    Examples: probe efficiency --train-numbers 1,5,20 --seeds 0,1   |   probe efficiency --ray local --threads 1   |
    probe efficiency --dataset horse21 --data-root datasets/ --backbones ddpm=lsun_horse.pt,pixels
    """
    early = _early_batch(early_batch_size)
    from probe.experiments.efficiency import backbone_list, run_efficiency

    sweep_data = _sweep_start("efficiency", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet)
    base = _spec("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    numbers, seed_list = _ints(train_numbers, "train-numbers"), _ints(seeds, "seeds")
    if not numbers or not seed_list:
        raise ProbeError("--train-numbers and --seeds need at least one value each")
    table = run_efficiency(sweep_data, backbone_list(backbones, base), numbers, seed_list, out, members=members,
                           early_batch_size=early, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet)
    summary = table.groupby(["backbone", "train_number"], sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{b} {n}: {m}" for (b, n), m in summary.items()) + f"  -> {out}/table.md")


@app.command()
@user_errors
def variants(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbone: str = typer.Option("ddpm", "--backbone", help="A diffusion backbone: ddpm or random."),
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    blocks: Optional[str] = Blocks, steps: Optional[str] = Steps,
    draws: int = typer.Option(4, "--draws", help="K of the mean-of-K variant (activations averaged over K noise draws)."),
    inversion_steps: int = typer.Option(25, "--inversion-steps", help="DDIM steps from 0 to t of the inversion variant."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: noise, initialisation and shuffles."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/variants"), "--out", help="Sweep folder: cells/ as they finish, then variants.csv, table.md, variants.png. A rerun resumes."),
    quiet: bool = Quiet,
):
    """The extraction variants side by side (the paper's Table 5, extended): shared noise (the authors'), noise per
    image, the mean over K draws, and x_t reached by deterministic DDIM inversion of x0; mean ± std over seeds.

    Examples: probe variants   |   probe variants --seeds 0,1 --draws 8 --inversion-steps 50 --ray local --threads 1
    """
    early = _early_batch(early_batch_size)
    from probe.experiments.variants import run_variants, variant_names

    sweep_data = _sweep_start("variants", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet)
    if draws < 1 or inversion_steps < 1:
        raise ProbeError(f"--draws {draws} / --inversion-steps {inversion_steps}: give 1 or more")
    seed_list = _ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, None, False, None, 0, device)
    table = run_variants(sweep_data, spec, variant_names(draws, inversion_steps), seed_list, out,
                         train_number=train_number, members=members, early_batch_size=early, ray=ray,
                         threads=threads, gpus_per_cell=gpus_per_cell, progress=not quiet)
    summary = table.groupby("variant", sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{v}: {m}" for v, m in summary.items()) + f"  -> {out}/table.md")


@app.command()
@user_errors
def robustness(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    corruptions: str = typer.Option("all", "--corruptions", help="ImageNet-C corruptions: all (the 19 of imagecorruptions) or a comma list, e.g. gaussian_noise,fog,jpeg_compression."),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Corruption severities in 1..5: all or a comma list."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: each fits its ensemble (noise, initialisation) and corrupts its test images."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images, clean (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Test images, the first N by name, each scored clean and corrupted (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/robustness"), "--out", help="Sweep folder: cells/ as they finish, then robustness.csv, table.md, robustness.png. A rerun resumes."),
    quiet: bool = Quiet,
):
    """Robustness to image corruptions (the paper's Fig. 6): per backbone and seed one ensemble fit on clean
    images (as `probe segment`), scored on the clean test images and on each ImageNet-C corruption at each
    severity; the mIoU drop relative to clean per severity, averaged over corruptions, mean ± std over seeds.
    Images must be at least 32x32. Corrupted activations go to the cache like any image's.

    Examples: probe robustness --corruptions gaussian_noise,fog --severities 1,3,5 --seeds 0   |
    probe robustness --ray local --threads 1   |
    probe robustness --dataset horse21 --data-root datasets/ --backbones ddpm=lsun_horse.pt,pixels
    """
    early = _early_batch(early_batch_size)
    from probe.corruptions import parse_corruptions, parse_severities
    from probe.experiments.efficiency import backbone_list
    from probe.experiments.robustness import run_robustness

    sweep_data = _sweep_start("robustness", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet)
    names, levels, seed_list = parse_corruptions(corruptions), parse_severities(severities), _ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    base = _spec("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    table = run_robustness(sweep_data, backbone_list(backbones, base), names, levels, seed_list, out,
                           train_number=train_number, test_number=test_number, members=members,
                           early_batch_size=early, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet)
    clean = table.drop_duplicates(["backbone", "seed"]).groupby("backbone", sort=False)["clean_miou"].mean()
    drop = table.groupby(["backbone", "severity"], sort=False)["drop"].mean().round(1)
    typer.echo(" | ".join(f"{b}: clean {clean[b]:.1f}, drop " + ", ".join(f"s{s} {d}" for s, d in drop[b].items())
                          for b in clean.index) + f"  -> {out}/table.md")


@app.command()
@user_errors
def synthesize(
    ensemble: Path = typer.Option(Path("runs/segment/ensemble"), "--ensemble", help="An ensemble folder written by probe segment with a diffusion backbone (ddpm): its DDPM draws the images, its features and MLPs label them."),
    n: int = typer.Option(1000, "--n", help="Images to draw."),
    sampler: str = typer.Option("ddpm", "--sampler", help="ddpm (ancestral, every step of the model's schedule, as the authors) or ddim:K (K deterministic DDIM steps, e.g. ddim:50: faster)."),
    seed: int = typer.Option(0, "--seed", help="Image i draws all of its noise from a generator seeded by (seed, i): the same seed gives the same files."),
    drop_uncertain: float = typer.Option(0.1, "--drop-uncertain", help="Share of the most uncertain images moved to OUT/dropped/ (the authors leave out 0.1); 0 keeps all."),
    chunk_size: int = typer.Option(32, "--chunk-size", help="Images sampled as one batch: one resumable cell of the runner."),
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device,
    out: Path = typer.Option(Path("runs/synthesize"), "--out", help="Run folder: train/<i>.png + <i>.npy as chunks finish, then dropped/, uncertainty.csv, classes.txt, palette.json, preview.png. A rerun resumes."),
    quiet: bool = Quiet,
):
    """Synthesize a labelled dataset (the authors' DatasetDDPM data): images drawn from the ensemble's DDPM, labelled
    pixel by pixel by the ensemble's majority vote with each image's Jensen-Shannon uncertainty (as probe predict),
    written in the toolkit's layout. Chunks stream to disk (memory does not grow with --n) and are cells of the
    sweep runner: a killed run resumes at the first unfinished chunk, --ray spreads them over a cluster's GPUs
    (--out and the ensemble on a shared filesystem).

    Examples: probe segment && probe synthesize --n 64 --out runs/synth   |
    probe synthesize --ensemble runs/horse21/ensemble --n 10000 --sampler ddim:100 --out runs/horse_synth   |
    probe synthesize --ensemble runs/horse21/ensemble --n 10000 --ray auto --gpus-per-cell 1 --device cuda
    """
    from probe.synthesize import SynthesizeOptions, run_synthesize

    if threads is not None and threads < 1:
        raise ProbeError(f"--threads {threads}: give 1 or more")
    if gpus_per_cell < 0:
        raise ProbeError(f"--gpus-per-cell {gpus_per_cell}: give 0 or more")
    options = SynthesizeOptions(n=n, sampler=sampler, seed=seed, drop_uncertain=drop_uncertain, chunk_size=chunk_size,
                                device=device)
    table = run_synthesize(ensemble, options, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet)
    typer.echo(f"{len(table)} images, {int(table['kept'].sum())} kept in {out}/train, mean uncertainty "
               f"{table['uncertainty'].mean():.4f}  -> {out}")


@app.command()
@user_errors(resumable=True)
def deeplab(
    train_data: Path = typer.Option(..., "--train-data", help="A dataset folder whose train/ split trains the network (e.g. the output of probe synthesize); its classes must be the test data's."),
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    arch: str = typer.Option("resnet101", "--arch", help="resnet101 (the authors') or resnet50 (faster)."),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    val_number: Optional[int] = typer.Option(None, "--val-number", help="Real training images that pick the best epoch (default: all of them, as the authors)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Real test images, the first N by name (default: up to 20)."),
    seed: int = Seed, device: str = Device,
    out: Path = typer.Option(Path("runs/deeplab"), "--out", help="Run folder: checkpoint.pt per epoch, best.pt, history.csv/png, then model/ (for probe predict), metrics.json, per_class.csv."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt (the last finished epoch)."),
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """DatasetDDPM: a DeepLabV3 (random init, no auxiliary head; Adam, cross-entropy, the authors' recipe) trained
    on --train-data; the epoch with the best mIoU on the real training images is kept and scored on the real test
    split (the data options, default: the embedded default) with the authors' mIoU. probe predict --ensemble
    OUT/model segments new images with it.

    Examples: probe deeplab --train-data runs/synth --arch resnet50 --out runs/deeplab   |
    probe deeplab --train-data runs/horse_synth --dataset horse21 --data-root datasets/ --device cuda --out runs/dl
    """
    from probe.deeplab import DeepLabOptions, run_deeplab
    from probe.sources import open_source

    _torch_threads(threads)
    options = DeepLabOptions(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                             val_number=val_number, test_number=test_number)
    metrics = run_deeplab(train_data, open_source(dataset, data_root, data, progress=not quiet), options, out, resume=resume,
                          progress=not quiet)
    typer.echo(f"mIoU {metrics['miou']:.2f}% (best epoch {metrics['best_epoch']}, validation mIoU "
               f"{metrics['val_miou']:.2f}%)  -> {out}")


@app.command()
@user_errors
def download(
    names: Optional[list[str]] = typer.Argument(None, help="Paper datasets (horse21, ffhq34, ...) or hub models (owner/name)."),
    what: str = typer.Option("data,checkpoints", "--what", help="For paper datasets: data, checkpoints, synthetic (comma-separated) or all."),
    backbones: str = typer.Option("ddpm,mae,swav,swav_w2", "--backbones", help="Whose paper checkpoints --what checkpoints fetches."),
    backbone: str = typer.Option("diffusers", "--backbone", help="For a hub model: diffusers or sd (the files that backbone reads)."),
    revision: Optional[str] = Revision,
    list_items: bool = typer.Option(False, "--list", help="List every known item: cached where, downloaded or not, its size once known."),
    verify: bool = typer.Option(False, "--verify", help="Hash every downloaded file again against its first download and check the unpacked datasets; a file that differs is deleted."),
    quiet: bool = Quiet,
):
    """Fetch the paper's datasets, checkpoints and synthetic datasets, or hub models, into the cache ahead of use
    (for a cluster's shared cache, or a machine that will go offline). Commands given --dataset fetch what they
    need by themselves; $PROBE_MIRROR replaces the authors' storage root.

    Examples:
      probe download horse21 ffhq34
      probe download horse21 --what all
      probe download bedroom28 --what checkpoints --backbones ddpm,swav
      probe download google/ddpm-ema-bedroom-256
      probe download stable-diffusion-v1-5/stable-diffusion-v1-5 --backbone sd
      probe download --list
    """
    from probe.data import fetch
    from probe.data.hub import hub_snapshot, is_repo_id
    from probe.data.registry import CHECKPOINT_FOLDERS, lookup, published_items

    if list_items or verify:
        return _list_downloads(fetch, published_items()) if list_items else _verify_downloads(fetch)
    if not names:
        raise ProbeError("name what to download (e.g. probe download horse21), or pass --list or --verify")
    parts = {"data", "checkpoints", "synthetic"} if what == "all" else {w.strip() for w in what.split(",") if w.strip()}
    kinds = [b.strip() for b in backbones.split(",") if b.strip()]
    for value, allowed, option in ((parts, {"data", "checkpoints", "synthetic"}, "--what"),
                                   (set(kinds), set(CHECKPOINT_FOLDERS), "--backbones")):
        if not value or value - allowed:
            raise ProbeError(f"{option} {what if option == '--what' else backbones!r}: choose from "
                             f"{', '.join(sorted(allowed))}{' or all' if option == '--what' else ''}")
    if backbone not in ("diffusers", "sd"):
        raise ProbeError(f"--backbone {backbone!r}: a hub model is fetched for diffusers or sd")
    datasets = [lookup(name) for name in names if not is_repo_id(name)]  # an unknown name fails before any download
    for name in names:
        if is_repo_id(name):
            typer.echo(f"{name}: {hub_snapshot(name, backbone, revision=revision, progress=not quiet)}")
    for info in datasets:
        if "data" in parts:
            typer.echo(f"{info.name}: {fetch.dataset_root(info, progress=not quiet) / info.name}")
        for kind in kinds if "checkpoints" in parts else []:
            typer.echo(f"{info.name} {kind}: {fetch.paper_checkpoint(kind, info, progress=not quiet)}")
        if "synthetic" in parts and info.synthetic:
            typer.echo(f"{info.name} synthetic: {fetch.synthetic_dataset(info, progress=not quiet)}")


def _list_downloads(fetch, items) -> None:
    from rich.table import Table

    table = Table(title=f"published under {fetch.storage_root()}")
    for column in ("item", "state", "size", "cached at"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for item in items:
        row = fetch.item_status(item)
        table.add_row(row["item"], row["state"], _size(row["bytes"]) if row["bytes"] else "?", row["path"])
    Console().print(table)


def _verify_downloads(fetch) -> None:
    rows = fetch.verify_downloads()
    for row in rows:
        typer.echo(f"{row['item']}: {row['problem'] or 'ok'}")
    bad = [row for row in rows if row["problem"]]
    typer.echo(f"{len(rows)} items checked, {len(bad)} with problems")
    if bad:
        raise typer.Exit(1)


@data_app.command("default")
@user_errors
def data_default(
    out: Path = Out, overwrite: bool = Overwrite,
    size: int = typer.Option(32, "--size", help="Image size."),
    pool: int = typer.Option(5000, "--pool", help="Unlabelled images for DDPM training."),
    seed: int = Seed, quiet: bool = Quiet,
):
    """Write the embedded default domain (synthetic face portraits with 10 part labels) in the authors' layout.

    Example: probe data default --out data/faces
    """
    from probe.data.default_domain import write_default_domain

    write_default_domain(out, size=size, pool=pool, seed=seed, progress=not quiet, overwrite=overwrite)
    typer.echo(f"wrote the default domain to {out}")


@ddpm_app.command("train")
@user_errors(resumable=True)
def ddpm_train(
    images: Path = typer.Option(..., "--images", help="Folder of training images at the model's size."),
    model_flags: str = typer.Option(..., "--model-flags", help="guided-diffusion flags string or JSON file."),
    out: Path = typer.Option(..., "--out", help="Run folder (new, or this command's earlier run with --resume): checkpoint.pt, ema.pt, samples_*.png, loss.csv."),
    steps: int = typer.Option(20000, "--steps", help="Total training steps."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr"),
    ema_rate: float = typer.Option(0.999, "--ema-rate"),
    save_every: int = typer.Option(500, "--save-every", help="Steps between checkpoints (and sample grids)."),
    seed: int = Seed, device: str = Device,
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    quiet: bool = Quiet,
):
    """Train a DDPM (noise-prediction loss, EMA) whose ema.pt loads like the paper's checkpoints.

    Example: probe ddpm train --images data/faces/pool --model-flags probe/weights/default_ddpm.json --out runs/ddpm
    """
    from probe.models.flags import ModelFlags, parse_flags
    from probe.train import TrainConfig, train_ddpm

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_rate=ema_rate, save_every=save_every, seed=seed)
    path = train_ddpm(images, ModelFlags(**parse_flags(model_flags)), out, config, resume, device, not quiet)
    typer.echo(f"EMA weights: {path}")


@mae_app.command("train")
@user_errors(resumable=True)
def mae_train(
    images: Path = typer.Option(..., "--images", help="Folder of training images at --image-size."),
    out: Path = typer.Option(..., "--out", help="Run folder (new, or this command's earlier run with --resume): checkpoint.pt, mae.pt, loss.csv."),
    image_size: int = typer.Option(32, "--image-size"),
    patch_size: int = typer.Option(4, "--patch-size"),
    embed_dim: int = typer.Option(128, "--embed-dim"),
    depth: int = typer.Option(12, "--depth"),
    num_heads: Optional[int] = typer.Option(None, "--num-heads", help="Default: embed-dim / 64, what --backbone mae assumes."),
    decoder_embed_dim: int = typer.Option(128, "--decoder-embed-dim"),
    decoder_depth: int = typer.Option(2, "--decoder-depth"),
    steps: int = typer.Option(2000, "--steps", help="Total training steps."),
    batch_size: int = typer.Option(256, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default: 1.5e-4 x batch / 256, the MAE recipe (the shipped MAE: 1e-3, then 2.5e-4 from step 1700 by a resumed run)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up (the shipped MAE: 200)."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"),
    save_every: int = typer.Option(100, "--save-every", help="Steps between checkpoints."),
    seed: int = Seed, device: str = Device,
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    quiet: bool = Quiet,
):
    """Train an MAE (masked-patch reconstruction: mask ratio 0.75, normalised-pixel loss, AdamW 0.9/0.95, weight
    decay 0.05) on a folder of images; OUT/mae.pt loads with --backbone mae --checkpoint OUT/mae.pt. The defaults
    are the shipped default MAE's (probe/weights/default_mae.json).

    Example: probe data default --out data/faces --pool 10000 && probe mae train --images data/faces/pool --out runs/mae
    """
    from probe.mae_train import MAETrainConfig, train_mae
    from probe.models.vit import MAEConfig, default_heads

    if not 0 < mask_ratio < 1:
        raise ProbeError(f"--mask-ratio {mask_ratio}: give a fraction between 0 and 1, e.g. 0.75")
    heads = num_heads or default_heads(embed_dim)
    model = MAEConfig(img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=heads,
                      decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                      decoder_num_heads=default_heads(decoder_embed_dim))
    config = MAETrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, mask_ratio=mask_ratio,
                            save_every=save_every, seed=seed)
    path = train_mae(images, model, out, config, resume, device, not quiet)
    typer.echo(f"MAE weights: {path}")


@ddpm_app.command("sample")
@user_errors
def ddpm_sample(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Default: the shipped default DDPM."),
    model_flags: Optional[str] = ModelFlagsOpt,
    n: int = typer.Option(32, "--n", help="Number of samples."),
    sampling_steps: int = typer.Option(50, "--sampling-steps", help="DDIM steps."),
    seed: int = Seed, device: str = Device,
    out: Path = typer.Option(Path("runs/samples"), "--out", help="Output folder: samples.png (a contact sheet) and samples.npy (uint8 N x H x W x 3)."),
    overwrite: bool = Overwrite,
):
    """Draw DDIM samples from a checkpoint: a PNG contact sheet and the images as an array.

    Example: probe ddpm sample --n 32 --out runs/samples
    """
    from probe.backbones import default_model_files
    from probe.train import sample_checkpoint

    _check_out(out, overwrite, checkpoint)
    if checkpoint is None:
        checkpoint, model_flags = default_model_files()
    sample_checkpoint(checkpoint, model_flags, n, seed, sampling_steps, out, device, overwrite=overwrite)
    typer.echo(f"wrote {n} samples to {out}/samples.png")


@cache_app.command("info")
@user_errors
def cache_info():
    """What the cache holds: one row per backbone identity (activations), default-domain folder, downloaded dataset
    and downloaded file.

    Example: probe cache info
    """
    from rich.table import Table

    from probe.cache import cache_entries, cache_root

    entries = cache_entries()
    table = Table(title=f"{cache_root()}")
    for column in ("kind", "name", "backbone", "images", "files", "size", "last used"):
        table.add_column(column, justify="right" if column in ("images", "files", "size") else "left")
    for row in entries.itertuples():
        table.add_row(row.kind, row.name, row.backbone, str(row.images), str(row.files), _size(row.bytes),
                      _age(row.last_used))
    Console().print(table)
    typer.echo(f"{len(entries)} entries, {_size(entries['bytes'].sum())} in all")


@cache_app.command("clear")
@user_errors
def cache_clear(
    older_than: Optional[float] = typer.Option(None, "--older-than", help="Only entries unused for more than DAYS days."),
):
    """Delete cached activations, default-domain folders and downloads (all, or those unused for --older-than days),
    and files left by killed runs. Everything deleted is recomputed or downloaded again when needed.

    Examples: probe cache clear   |   probe cache clear --older-than 30
    """
    from probe.cache import clear_cache

    if older_than is not None and older_than < 0:
        raise ProbeError(f"--older-than {older_than}: give a number of days >= 0")
    removed = clear_cache(older_than_days=older_than)
    typer.echo(f"removed {len(removed)} entries, {_size(removed['bytes'].sum())}")


def _size(nbytes: float) -> str:
    """Bytes in B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def _age(timestamp: float) -> str:
    import time

    days = (time.time() - timestamp) / 86400
    return f"{days:.1f} days ago" if days >= 1 else f"{days * 24:.1f} hours ago"


def main() -> None:
    app(prog_name="probe")
