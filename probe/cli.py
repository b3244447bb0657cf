"""The `probe` command: parses options, calls one function per command, prints. No logic lives here."""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from probe.errors import DryRun, ProbeError

app = typer.Typer(
    help="Look inside diffusion models: per-layer/per-step probes (grid), k-means (kmeans) and the few-shot "
         "segmenter (segment) of Baranchuk et al., ICLR 2022, on a DDPM or the paper's baselines (--backbone ddpm, "
         "random, pixels, mae, swav, swav_w2). With no data options every command runs on the embedded default: a "
         "synthetic face-parts domain and a small DDPM shipped with the package.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
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


def _print_version(value: bool) -> None:
    if value:
        from probe import __version__

        typer.echo(f"probe {__version__}")
        raise typer.Exit()


@app.callback()
def startup(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Also print the libraries' own log lines (faiss, torch, pooch)."),
) -> None:
    """Runs before every command, whichever way probe was started (the `probe` script or `python -m probe`), and
    before the command's options are parsed: nothing here imports torch, so --help and option errors answer at once.
    probe's own lines go to stderr; the libraries' only when they warn, or with --verbose."""
    from probe.runtime import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("probe").setLevel(logging.INFO)  # also where the root logger was configured before (a notebook)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_lines)
    keep_freed_memory()


def _own_lines(record: logging.LogRecord) -> bool:
    """probe's own log lines, and the libraries' warnings and errors (their info lines only with --verbose)."""
    return record.name.split(".")[0] == "probe" or record.levelno >= logging.WARNING


def _begin(threads: Optional[int] = None) -> None:
    """Once a command's options are checked, before its work: the settings that only change speed (probe.runtime;
    they import torch), the torch threads, and at a terminal one line when other work already keeps the cores busy."""
    import torch

    from probe.runtime import busy_warning, flush_subnormals

    flush_subnormals()
    if threads is not None:
        torch.set_num_threads(threads)
    warning = busy_warning(torch.get_num_threads()) if sys.stderr.isatty() else None
    if warning:
        logging.getLogger("probe").warning(warning)


def user_errors(command=None, *, resumable: bool = False):
    """Print a ProbeError as one line on stderr and exit 2, without a traceback; on Ctrl-C say in one line what
    was kept and exit 130. `resumable`: the command writes --out as it goes and resumes with --resume."""
    if command is None:
        return functools.partial(user_errors, resumable=resumable)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        given = _PARAMETERS.set(kwargs)
        try:
            return command(*args, **kwargs)
        except ProbeError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except DryRun:  # the plan is printed; nothing computed or written
            sys.exit(0)
        except KeyboardInterrupt:
            console.print(f"[bold yellow]interrupted:[/] {escape(_interrupt_note(kwargs.get('out'), resumable))}",
                          highlight=False, soft_wrap=True)
            sys.exit(130)
        finally:
            _PARAMETERS.reset(given)
    return wrapper


# The running command's parameters by name, as typer passed them (user_errors sets it): a sweep records its own.
_PARAMETERS: contextvars.ContextVar[dict] = contextvars.ContextVar("parameters", default={})


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
Dataset = typer.Option(None, "--dataset", help="A paper dataset (horse21, ffhq34, ...), fetched on first use.")
DataRoot = typer.Option(None, "--data-root", help="Your copy of the paper datasets instead.")
Data = typer.Option(None, "--data", help="A dataset folder (README: data layout).")
Fit = typer.Option(None, "--fit", help="Non-square images: resize or pad (README).")
Backbone = typer.Option("ddpm", "--backbone", help="ddpm, mae, transformers, sd, flux, ... (README).")
Checkpoint = typer.Option(None, "--checkpoint", help="Weights: a file, folder or hub name.")
Revision = typer.Option(None, "--revision", help="A hub model's branch, tag or commit.")
Prompt = typer.Option(None, "--prompt", help="sd, pixart, sd3, flux: the text prompt.")
ClassLabel = typer.Option(None, "--class-label", help="dit: the class (default: the null class).")
ModelDtype = typer.Option(None, "--model-dtype", help="float32 (default), bfloat16 or float16.")
ModelFlagsOpt = typer.Option(None, "--model-flags", help="ADM flags or a JSON file; mae: --num_heads N.")
Blocks = typer.Option(None, "--blocks", help="Layers: 5,6,7 / 0-17 / names / all.")
Steps = typer.Option(None, "--steps", help="Diffusion steps t, e.g. 50,150,250. x_t: the scheduler's add_noise; sd3/flux (flow matching): x_t = (1 - s) x0 + s e with s = t / T, no shift.")
Noise = typer.Option(None, "--noise", help="shared, per-image, mean-of-K or ddim-inversion.")
InputActivations = typer.Option(False, "--input-activations", help="ddpm/random: each block's input, not its output.")
ImageSize = typer.Option(None, "--image-size", help="pixels, swav, transformers: the input size.")
Seed = typer.Option(0, "--seed", help="Seed of every random choice.")
Device = typer.Option("cpu", "--device", help="cpu or cuda.")
Out = typer.Option(..., "--out", help="Output folder (new, empty, or --overwrite).")
Overwrite = typer.Option(False, "--overwrite", help="Replace a previous result of probe in --out.")
Cache = typer.Option(None, "--cache", help="Activation store folder (default: the cache).")
Quiet = typer.Option(False, "--quiet", help="No progress bars.")
QuietPlan = typer.Option(False, "--quiet", help="No progress bars, no plan.")
EarlyBatchSize = typer.Option(None, "--early-batch-size", help="Batch of epochs 0-3: 64 (authors', default) or 128.")
TorchThreads = typer.Option(None, "--threads", help="Torch threads (default: all cores).")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the plan and exit.")


def _kinds(text: str, checkpoint: Optional[Path] = None, option: str = "--backbone") -> list[tuple[str, bool]]:
    """(kind, has its own checkpoint) of a --backbones list (kind=weights) or of one --backbone; an unknown kind
    is refused here, before anything loads or downloads."""
    from probe.spec import check_kind

    parts = [part.strip().partition("=") for part in text.split(",") if part.strip()]
    for kind, _, _ in parts:
        check_kind(kind.strip(), option)
    return [(kind.strip(), bool(given) or (kind.strip() == "ddpm" and checkpoint is not None))
            for kind, _, given in parts]


def _downloads(command: str, dataset: Optional[str], data_root: Optional[Path], backbones, dry_run: bool) -> None:
    """The plan's downloads (probe.plan.pending_downloads); a --dry-run that needs some stops here, downloading
    nothing."""
    from probe.plan import dry_run_before_downloads, note_downloads, pending_downloads

    items = pending_downloads(dataset, data_root, backbones)
    note_downloads(items)
    if dry_run and items:
        dry_run_before_downloads(command, items, dataset)


def _check_early_batch(size: int | None) -> None:
    if size is not None and size < 2:
        raise ProbeError(f"--early-batch-size {size}: batch normalisation needs at least 2 pixels per batch (64 is "
                         "the authors' rule)")


def _early_batch(size: int | None) -> int:
    """--early-batch-size (checked by _check_early_batch before any work); None: EARLY_BATCH_SIZE."""
    from probe.ensemble import EARLY_BATCH_SIZE

    return EARLY_BATCH_SIZE if size is None else size


def _check_threads(threads: Optional[int], gpus_per_cell: float = 0) -> None:
    if threads is not None and threads < 1:
        raise ProbeError(f"--threads {threads}: give 1 or more")
    if gpus_per_cell < 0:
        raise ProbeError(f"--gpus-per-cell {gpus_per_cell}: give 0 or more")


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ProbeError(f"--{what} {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _spec(backbone: str, checkpoint: Optional[Path], model_flags: Optional[str], blocks: Optional[str],
          steps: Optional[str], noise: Optional[str], input_activations: bool, image_size: Optional[int], seed: int,
          device: str, prompt: Optional[str] = None, revision: Optional[str] = None,
          model_dtype: Optional[str] = None, class_label: Optional[int] = None):
    """The backbone options as a BackboneSpec; the syntax of --blocks / --steps is checked before anything loads."""
    from probe.spec import BackboneSpec, check_cell_syntax

    check_cell_syntax(blocks, "blocks")
    check_cell_syntax(steps, "steps")
    if model_dtype is not None and model_dtype not in ("float32", "bfloat16", "float16"):
        raise ProbeError(f"--model-dtype {model_dtype!r}: use float32, bfloat16 or float16")
    return BackboneSpec(kind=backbone, checkpoint=checkpoint, model_flags=model_flags, layers=blocks, steps=steps,
                        noise=noise, seed=seed, input_activations=input_activations, image_size=image_size,
                        device=device, prompt=prompt, revision=revision, model_dtype=model_dtype,
                        class_label=class_label)


# The options of a sweep command that are not its result-determining options (probe.runner.check_options), so a
# rerun may change them: what the cells vary (a rerun may list more seeds, say), what only changes the tables drawn
# from the cells (--size-threshold), and what only changes speed or where things are kept. Every other option of a
# sweep command is recorded by its first run and must stay; --threads as the number each cell gets.
SWEEP_AXES = {"grid": ("blocks", "steps", "size_threshold"), "layers": ("backbones", "steps", "depths"),
              "efficiency": ("backbones", "train_numbers", "seeds"), "variants": ("seeds", "draws", "inversion_steps"),
              "robustness": ("backbones", "corruptions", "severities", "seeds"),
              "segment": ("seeds", "seed", "overwrite")}
SPEED_ONLY = ("out", "ray", "gpus_per_cell", "cache", "quiet", "threads", "dry_run")


def _sweep_options(command: str, threads: Optional[int], ray: Optional[str]) -> dict:
    """The sweep's result-determining options as this command line gives them, by their option names: the
    command's parameters except SWEEP_AXES and SPEED_ONLY (paths that exist made absolute), and the threads per cell."""
    from probe.runner import cell_threads

    def shown(value):
        if isinstance(value, Path):
            path = value.expanduser()
            return str(path.absolute()) if path.exists() else str(value)
        return value

    from probe.spec import AUTHORS_BATCH_SIZE

    skipped = {*SWEEP_AXES[command], *SPEED_ONLY}
    resolved = {"early_batch_size": AUTHORS_BATCH_SIZE}  # unset: the default in force, recorded as a number
    options = {f"--{name.replace('_', '-')}": shown(resolved.get(name) if value is None else value)
               for name, value in _PARAMETERS.get().items() if name not in skipped}
    return {**options, "--threads": cell_threads(threads, ray)}


def _sweep_start(command: str, out: Path, dataset: Optional[str], data_root: Optional[Path], data: Optional[Path],
                 cache: Optional[Path], checkpoint: Optional[Path], ray: Optional[str], threads: Optional[int],
                 gpus_per_cell: float, *inputs: Optional[Path], progress: bool = True, fit: Optional[str] = None,
                 dry_run: bool = False, backbones=()):
    """Check a sweep's folder, runner options and data options (a paper dataset fetched into the cache when no
    --data-root is given) before torch is loaded, then start the work; the sweep's data options. `inputs`: other
    folders the sweep reads. In-process sweeps set no thread count here: the runner gives each cell its budget.
    `backbones`: (kind, has a checkpoint) pairs, for the plan's downloads (a --dry-run that needs some stops)."""
    from probe.outputs import check_out
    from probe.sources import open_source

    from probe.runner import check_options

    check_out(out, inputs=[data, data_root, checkpoint, cache, *inputs], command=command)
    _check_threads(threads, gpus_per_cell)
    check_options(out, command=command, options=_sweep_options(command, threads, ray))
    _downloads(command, dataset, data_root, backbones, dry_run)
    source = open_source(dataset, data_root, data, progress=progress, fit=fit)
    if source.info is not None and data_root is None:
        data_root = source.root.parent
    _begin()
    from probe.experiments import SweepData

    def absolute(path: Optional[Path]) -> Optional[str]:  # as a Ray worker, whose folder differs, must see it
        return str(Path(path).expanduser().absolute()) if path else None

    return SweepData(dataset, absolute(data_root), absolute(data), absolute(cache), fit=fit)


Ray = typer.Option(None, "--ray", help="Run the cells on Ray: local, auto or an address.")
Threads = typer.Option(None, "--threads", help="Torch threads per cell (default: all cores here, 1 on Ray).")
GpusPerCell = typer.Option(0.0, "--gpus-per-cell", help="GPUs per Ray task.")
BackboneList = typer.Option("ddpm,random,pixels", "--backbones", help="Backbones, comma-separated; name=file for weights.")


@app.command()
@user_errors
def features(
    images: Path = typer.Option(..., "--images", help="Folder of images (or one image file)."),
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers: 5,6,7 / 0-17 / names / all."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (ddpm/random; default 50,150,250)."),
    seed: int = Seed, input_activations: bool = InputActivations, noise: Optional[str] = Noise,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="pixels/swav: the input size (default: the images' own); transformers: another input size than the model's."),
    dtype: str = typer.Option("float32", "--dtype", help="The exported arrays' dtype: float32 or float16 (transformers computes in --model-dtype)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward."),
    device: str = Device,
    out: Path = Out, overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """Export a backbone's feature maps: OUT/<stem>.npz with one (C, h, w) array per cell at native resolution,
    named t{t}_block{b} (ddpm), block{b} (mae) or layer{L}.{j} (swav).

    Examples:

    \b
      probe features --checkpoint lsun_horse.pt --images imgs/ --out feats/
      probe features --backbone mae --images imgs/ --blocks 9-11 --out feats/
      probe features --backbone diffusers --images imgs/ --out feats/ \\
        --checkpoint google/ddpm-ema-bedroom-256
    """
    from probe.data.layout import native_size
    from probe.sources import backbone_spec

    _check_out(out, overwrite, images, checkpoint)
    _check_threads(threads)
    spec = backbone_spec(None, _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations,
                                     image_size, seed, device, prompt=prompt, revision=revision,
                                     model_dtype=model_dtype, class_label=class_label), progress=not quiet)
    size = native_size(images)
    _begin(threads)
    from probe.backbones import build_backbone
    from probe.data.layout import load_images
    from probe.extract import export_features

    chosen = build_backbone(spec, "features", size)
    written = export_features(chosen, load_images(images, chosen.image_size), out, dtype, batch_size, not quiet,
                              overwrite=overwrite, inputs=[images, checkpoint])
    console.print(f"wrote {len(written)} files with {len(chosen.names)} arrays each to {out}")


@app.command()
@user_errors
def segment(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Train on this folder's train split instead."),
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers: 5,6,7 / 0-17 / names / all."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (default 50,150,250)."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Test images (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs in the ensemble."),
    sequential: bool = typer.Option(False, "--sequential", help="Train members one by one, as the authors."),
    precision: str = typer.Option("auto", "--precision", help="First-layer products: auto, float32, bfloat16."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    seed: int = Seed,
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Fit per seed, e.g. 0,1,2: a resumable sweep."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    ray: Optional[str] = typer.Option(None, "--ray", help="With --seeds: Ray (local, auto or an address)."),
    gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/segment"), "--out", help="Output folder (a sweep folder with --seeds)."),
    overwrite: bool = Overwrite,
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: all cores)."),
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
    from probe.sources import backbone_spec, open_source
    from probe.spec import check_precision

    _check_early_batch(early_batch_size)
    check_precision(precision, not sequential)
    seed_list = _ints(seeds, "seeds") or [seed]
    sweep = len(seed_list) > 1
    if not sweep and (ray is not None or gpus_per_cell):
        raise ProbeError("--ray / --gpus-per-cell run the seeds of --seeds as a sweep: give several seeds, "
                         "e.g. --seeds 0,1,2")
    if sweep and overwrite:
        raise ProbeError(f"--overwrite: with several --seeds, --out {out} is a sweep folder that a rerun resumes; "
                         "to start over, delete it or choose another folder")
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label)
    if sweep:
        sweep_data = _sweep_start("segment", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                                  gpus_per_cell, train_data, progress=not quiet, fit=fit, dry_run=dry_run,
                                  backbones=_kinds(backbone, checkpoint))
        source = sweep_data.source()
    else:
        _check_out(out, overwrite, data, data_root, checkpoint, cache, train_data)
        _check_threads(threads)
        _downloads("segment", dataset, data_root, _kinds(backbone, checkpoint), dry_run)
        source = open_source(dataset, data_root, data, progress=not quiet, fit=fit)
    if train_data is not None:
        source.check_training_data(train_data)
    if not sweep:  # a sweep's start has begun the work
        _begin(threads)
    from probe.ensemble import resolve_precision
    from probe.segment import SegmentOptions, run_segment

    resolve_precision(precision, device, not sequential)  # a wrong choice fails now, not after extraction
    options = SegmentOptions(backbone=spec, train_number=train_number, test_number=test_number, members=members,
                             batched=not sequential, precision=precision, early_batch_size=_early_batch(early_batch_size),
                             train_data=str(train_data.expanduser().absolute()) if train_data else None)
    if sweep:
        from probe.experiments.seeds import run_seeds

        result = run_seeds(sweep_data, options, seed_list, out, ray=ray, threads=threads,
                           sweep_options=_sweep_options("segment", threads, ray),
                           gpus_per_cell=gpus_per_cell, progress=not quiet, dry_run=dry_run)
    else:
        options.backbone = backbone_spec(source, spec, progress=not quiet)
        result = run_segment(source, options, seed_list[0], out, cache, not quiet, overwrite=overwrite,
                             dry_run=dry_run)
    spread = f" ± {result['miou_std']:.2f} over seeds {result['seeds']}" if sweep else ""
    typer.echo(f"mIoU {result['miou']:.2f}%{spread}  ({source.name}, backbone {backbone})  -> {out}")


@app.command()
@user_errors
def grid(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers: 5,6,7 / 0-17 / names / all."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps (default: 9 from 0 to 999)."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images per probe (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Held-out images that score each probe (default: up to 20)."),
    members: int = typer.Option(1, "--members", help="MLPs per probe."),
    size_threshold: Optional[float] = typer.Option(None, "--size-threshold", help="Area fraction below which a class is small."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = typer.Option(Path("runs/grid"), "--out", help="Sweep folder; a rerun resumes."),
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
    from probe.sources import backbone_spec

    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label)
    sweep_data = _sweep_start("grid", out, dataset, data_root, data, cache, checkpoint, ray, threads, gpus_per_cell,
                              progress=not quiet, fit=fit, dry_run=dry_run, backbones=_kinds(backbone, checkpoint))
    import pandas as pd

    from probe.grid import GridOptions, run_grid

    options = GridOptions(backbone=backbone_spec(sweep_data.source(), spec, progress=not quiet), train_number=train_number,
                          test_number=test_number, members=members, size_threshold=size_threshold)
    table = run_grid(sweep_data, options, seed, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                     sweep_options=_sweep_options("grid", threads, ray),
                     progress=not quiet, dry_run=dry_run)
    best = table[table.group == "all"].sort_values("miou").iloc[-1]
    at = "" if pd.isna(best.step) else f" at t={int(best.step)}"
    typer.echo(f"best cell: {best.layer}{at}, mIoU {best.miou:.2f}%  -> {out}")


@app.command()
@user_errors
def layers(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    backbones: str = typer.Option("ddpm,mae", "--backbones", help="Backbones, comma-separated; kind=weights for a checkpoint (a file, a folder or a hub name), e.g. ddpm,mae,transformers=facebook/dinov2-small."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="ddpm's weights when --backbones names ddpm without =."),
    model_flags: Optional[str] = ModelFlagsOpt,
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t of the diffusion backbones (default: probe grid's)."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Only the layers nearest to these relative depths, e.g. 0,0.25,0.5,0.75,1 (default: every layer)."),
    model_dtype: Optional[str] = ModelDtype, image_size: Optional[int] = ImageSize,
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images per probe (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Held-out images that score each probe (default: up to 20)."),
    members: int = typer.Option(1, "--members", help="MLPs per probe."),
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    out: Path = typer.Option(Path("runs/layers"), "--out", help="Sweep folder: cells/ as each probe finishes, then layers.csv, layers_cells.csv, layers.png. A rerun resumes."),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """One figure across models: probe grid's per-layer probe for each backbone in one resumable sweep, then mIoU
    per layer against relative depth (layer index / (layers - 1)), one line per backbone; a diffusion backbone's
    point is its best step t at that layer. --image-size and --model-dtype go to the transformers backbones.

    Examples:

    \b
      probe layers --backbones ddpm,mae --steps 0,50,200
      probe layers --backbones ddpm,mae,transformers=facebook/dinov2-small
      probe layers --dataset horse21 --backbones ddpm,mae,swav --ray local
    """
    from probe.spec import check_cell_syntax

    check_cell_syntax(steps, "steps")
    given = [Path(part.partition("=")[2].strip()) for part in backbones.split(",") if "=" in part]
    base = _spec("ddpm", checkpoint, model_flags, None, None, None, False, None, seed, device, model_dtype=model_dtype)
    sweep_data = _sweep_start("layers", out, dataset, data_root, data, cache, checkpoint, ray, threads, gpus_per_cell,
                              *given, progress=not quiet, dry_run=dry_run, backbones=_kinds(backbones, checkpoint, "--backbones"))
    from dataclasses import replace

    from probe.layers import backbone_entries, parse_depths, run_layers

    chosen_depths = parse_depths(depths)
    entries = [(label, replace(spec, image_size=image_size) if spec.kind == "transformers" else spec)
               for label, spec in backbone_entries(backbones, base, steps, model_dtype)]
    table = run_layers(sweep_data, entries, seed, out, train_number=train_number, test_number=test_number,
                       sweep_options=_sweep_options("layers", threads, ray), depths=chosen_depths,
                       members=members, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell, progress=not quiet,
                       dry_run=dry_run)
    best = table.sort_values("miou", ascending=False, kind="stable").drop_duplicates("backbone")
    typer.echo(" | ".join(f"{row.backbone}: best {row.layer} (depth {row.relative_depth:.2f}"
                          f"{'' if row.step is None or str(row.step) == '<NA>' else f', t={row.step}'}) "
                          f"mIoU {row.miou:.1f}" for row in best.itertuples()) + f"  -> {out}/layers.png")


@app.command()
@user_errors
def kmeans(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Layers, the figure's rows (default: four spread ones)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps, the columns (default 50,200,...,800)."),
    k: int = typer.Option(5, "--k", help="Clusters."),
    images: Optional[str] = typer.Option(None, "--images", help="Comma-separated image files (default: the test split)."),
    n_images: int = typer.Option(2, "--n-images", help="How many test images when --images is not given."),
    fit_on: str = typer.Option("image", "--fit-on", help="image (centroids per image) or all (shared centroids)."),
    noise: Optional[str] = Noise, input_activations: bool = InputActivations, image_size: Optional[int] = ImageSize,
    seed: int = Seed, device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/kmeans"), "--out", help="Output folder (new, empty, or --overwrite)."),
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
    from probe.sources import backbone_spec, open_source

    image_files = [Path(p) for p in images.split(",") if p] if images else []
    _check_out(out, overwrite, data, data_root, checkpoint, cache, *image_files)
    _check_threads(threads)
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations, image_size, seed, device,
                 prompt=prompt, revision=revision, model_dtype=model_dtype, class_label=class_label)
    source = open_source(dataset, data_root, data, progress=not quiet, fit=fit)
    _begin(threads)
    from probe.clusters import run_kmeans

    maps = run_kmeans(source, backbone_spec(source, spec, progress=not quiet), k, seed, fit_on, out, image_files=image_files,
                      n_images=n_images, cache=cache, progress=not quiet, overwrite=overwrite)
    count = len({stem for stem, _, _ in maps})
    typer.echo(f"clustered {count} images into {k} clusters per cell -> {out}/kmeans.png")


@app.command()
@user_errors
def predict(
    ensemble: Path = typer.Option(..., "--ensemble", help="probe segment's OUT/ensemble or probe deeplab's OUT/model."),
    images: Path = typer.Option(..., "--images", help="Folder of images (or one image file)."),
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

    _check_out(out, overwrite, ensemble, images, cache)
    _check_threads(threads)
    manifest = ensemble / "manifest.json"
    if not manifest.is_file():
        raise ProbeError(f"{manifest} not found: pass --ensemble with the ensemble/ folder that probe segment wrote")
    _begin(threads)
    from probe.deeplab import is_deeplab, predict_deeplab
    from probe.segment import run_predict

    resolution = json.loads(manifest.read_text())["resolution"]
    if is_deeplab(ensemble):
        stems = predict_deeplab(ensemble, load_images(images, resolution, fit=fit), out, device, not quiet,
                                overwrite=overwrite, inputs=[images])
        return typer.echo(f"segmented {len(stems)} images with DeepLabV3 -> {out}")
    table = run_predict(ensemble, load_images(images, resolution, keep_size=True, fit=fit), out, cache, device,
                        not quiet,
                        overwrite=overwrite, inputs=[images])
    typer.echo(f"segmented {len(table)} images, mean uncertainty {table['uncertainty'].mean():.4f} -> {out}")


@app.command()
@user_errors
def efficiency(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    train_numbers: str = typer.Option("1,2,5,10,20", "--train-numbers", help="Numbers of labelled training images."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds: each draws its subsets, noise and initialisation."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/efficiency"), "--out", help="Sweep folder; a rerun resumes."),
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
    _check_early_batch(early_batch_size)
    base = _spec("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    numbers, seed_list = _ints(train_numbers, "train-numbers"), _ints(seeds, "seeds")
    if not numbers or not seed_list:
        raise ProbeError("--train-numbers and --seeds need at least one value each")
    sweep_data = _sweep_start("efficiency", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet, fit=fit, dry_run=dry_run,
                              backbones=_kinds(backbones, checkpoint, "--backbones"))
    from probe.experiments.efficiency import backbone_list, run_efficiency

    table = run_efficiency(sweep_data, backbone_list(backbones, base), numbers, seed_list, out, members=members,
                           sweep_options=_sweep_options("efficiency", threads, ray),
                           early_batch_size=_early_batch(early_batch_size), ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run)
    summary = table.groupby(["backbone", "train_number"], sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{b} {n}: {m}" for (b, n), m in summary.items()) + f"  -> {out}/table.md")


@app.command()
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
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/variants"), "--out", help="Sweep folder; a rerun resumes."),
    quiet: bool = QuietPlan, dry_run: bool = DryRunOpt,
):
    """The extraction variants side by side (the paper's Table 5, extended): shared noise (the authors'), noise per
    image, the mean over K draws, and x_t reached by deterministic DDIM inversion of x0; mean ± std over seeds.

    Examples:

    \b
      probe variants
      probe variants --seeds 0,1 --draws 8 --inversion-steps 50
    """
    _check_early_batch(early_batch_size)
    if draws < 1 or inversion_steps < 1:
        raise ProbeError(f"--draws {draws} / --inversion-steps {inversion_steps}: give 1 or more")
    seed_list = _ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    spec = _spec(backbone, checkpoint, model_flags, blocks, steps, None, False, None, 0, device)
    sweep_data = _sweep_start("variants", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet, fit=fit, dry_run=dry_run,
                              backbones=_kinds(backbone, checkpoint))
    from probe.experiments.variants import run_variants, variant_names

    table = run_variants(sweep_data, spec, variant_names(draws, inversion_steps), seed_list, out,
                         sweep_options=_sweep_options("variants", threads, ray),
                         train_number=train_number, members=members, early_batch_size=_early_batch(early_batch_size), ray=ray,
                         threads=threads, gpus_per_cell=gpus_per_cell, progress=not quiet, dry_run=dry_run)
    summary = table.groupby("variant", sort=False)["miou"].mean().round(1)
    typer.echo(" | ".join(f"{v}: {m}" for v, m in summary.items()) + f"  -> {out}/table.md")


@app.command()
@user_errors
def robustness(
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    fit: Optional[str] = Fit,
    backbones: str = BackboneList,
    checkpoint: Optional[Path] = Checkpoint, model_flags: Optional[str] = ModelFlagsOpt,
    corruptions: str = typer.Option("all", "--corruptions", help="all (ImageNet-C's 19) or a list, e.g. fog,gaussian_noise."),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Corruption severities in 1..5: all or a comma list."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds, e.g. 0,1,2."),
    train_number: Optional[int] = typer.Option(None, "--train-number", help="Labelled training images, clean (default: up to 20)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Test images (default: up to 20)."),
    members: int = typer.Option(10, "--members", help="MLPs per ensemble."),
    early_batch_size: Optional[int] = EarlyBatchSize,
    ray: Optional[str] = Ray, threads: Optional[int] = Threads, gpus_per_cell: float = GpusPerCell,
    device: str = Device, cache: Optional[Path] = Cache,
    out: Path = typer.Option(Path("runs/robustness"), "--out", help="Sweep folder; a rerun resumes."),
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
    from probe.corruptions import parse_corruptions, parse_severities

    _check_early_batch(early_batch_size)
    names, levels, seed_list = parse_corruptions(corruptions), parse_severities(severities), _ints(seeds, "seeds")
    if not seed_list:
        raise ProbeError("--seeds needs at least one value, e.g. 0,1,2")
    base = _spec("ddpm", checkpoint, model_flags, None, None, None, False, None, 0, device)
    sweep_data = _sweep_start("robustness", out, dataset, data_root, data, cache, checkpoint, ray, threads,
                              gpus_per_cell, progress=not quiet, fit=fit, dry_run=dry_run,
                              backbones=_kinds(backbones, checkpoint, "--backbones"))
    from probe.experiments.efficiency import backbone_list
    from probe.experiments.robustness import run_robustness

    table = run_robustness(sweep_data, backbone_list(backbones, base), names, levels, seed_list, out,
                           sweep_options=_sweep_options("robustness", threads, ray),
                           train_number=train_number, test_number=test_number, members=members,
                           early_batch_size=_early_batch(early_batch_size), ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run)
    clean = table.drop_duplicates(["backbone", "seed"]).groupby("backbone", sort=False)["clean_miou"].mean()
    drop = table.groupby(["backbone", "severity"], sort=False)["drop"].mean().round(1)
    typer.echo(" | ".join(f"{b}: clean {clean[b]:.1f}, drop " + ", ".join(f"s{s} {d}" for s, d in drop[b].items())
                          for b in clean.index) + f"  -> {out}/table.md")


@app.command()
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
    _check_threads(threads, gpus_per_cell)
    _begin()
    from probe.synthesize import SynthesizeOptions, run_synthesize

    options = SynthesizeOptions(n=n, sampler=sampler, seed=seed, drop_uncertain=drop_uncertain, chunk_size=chunk_size,
                                device=device)
    table = run_synthesize(ensemble, options, out, ray=ray, threads=threads, gpus_per_cell=gpus_per_cell,
                           progress=not quiet, dry_run=dry_run)
    typer.echo(f"{len(table)} images, {int(table['kept'].sum())} kept in {out}/train, mean uncertainty "
               f"{table['uncertainty'].mean():.4f}  -> {out}")


@app.command()
@user_errors(resumable=True)
def deeplab(
    train_data: Path = typer.Option(..., "--train-data", help="A folder whose train/ split trains it (e.g. probe synthesize's)."),
    dataset: Optional[str] = Dataset, data_root: Optional[Path] = DataRoot, data: Optional[Path] = Data,
    arch: str = typer.Option("resnet101", "--arch", help="resnet101 (the authors') or resnet50 (faster)."),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    val_number: Optional[int] = typer.Option(None, "--val-number", help="Real training images picking the best epoch (default: all)."),
    test_number: Optional[int] = typer.Option(None, "--test-number", help="Real test images, the first N by name (default: up to 20)."),
    seed: int = Seed, device: str = Device,
    out: Path = typer.Option(Path("runs/deeplab"), "--out", help="Run folder; --resume continues it."),
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
    from probe.sources import open_source

    _check_threads(threads)
    source = open_source(dataset, data_root, data, progress=not quiet)
    _begin(threads)
    from probe.deeplab import DeepLabOptions, run_deeplab

    options = DeepLabOptions(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                             val_number=val_number, test_number=test_number)
    metrics = run_deeplab(train_data, source, options, out, resume=resume, progress=not quiet)
    typer.echo(f"mIoU {metrics['miou']:.2f}% (best epoch {metrics['best_epoch']}, validation mIoU "
               f"{metrics['val_miou']:.2f}%)  -> {out}")


@app.command()
@user_errors
def download(
    names: Optional[list[str]] = typer.Argument(None, help="Paper datasets (horse21, ffhq34, ...) or hub models (owner/name)."),
    what: str = typer.Option("data,checkpoints", "--what", help="data, checkpoints, synthetic (comma list) or all."),
    backbones: str = typer.Option("ddpm,mae,swav,swav_w2", "--backbones", help="Whose paper checkpoints --what checkpoints fetches."),
    backbone: str = typer.Option("diffusers", "--backbone", help="For a hub model: diffusers, sd, transformers, dit, pixart, sd3 or flux."),
    revision: Optional[str] = Revision,
    list_items: bool = typer.Option(False, "--list", help="List every known item and its state."),
    verify: bool = typer.Option(False, "--verify", help="Hash every download again; delete what changed."),
    quiet: bool = Quiet,
):
    """Fetch the paper's datasets, checkpoints and synthetic datasets, or hub models, into the cache ahead of use
    (for a cluster's shared cache, or a machine that will go offline). Commands given --dataset fetch what they
    need by themselves; $PROBE_MIRROR replaces the authors' storage root.

    Examples:

    \b
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
    from probe.sources import HUB_BACKBONES

    if backbone not in HUB_BACKBONES:
        raise ProbeError(f"--backbone {backbone!r}: a hub model is fetched for {', '.join(HUB_BACKBONES)}")
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
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
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
    out: Path = typer.Option(..., "--out", help="Run folder; --resume continues it."),
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

    flags = ModelFlags(**parse_flags(model_flags))
    _begin()
    from probe.train import TrainConfig, train_ddpm

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_rate=ema_rate, save_every=save_every, seed=seed)
    path = train_ddpm(images, flags, out, config, resume, device, not quiet)
    typer.echo(f"EMA weights: {path}")


@mae_app.command("train")
@user_errors(resumable=True)
def mae_train(
    images: Path = typer.Option(..., "--images", help="Folder of training images at --image-size."),
    out: Path = typer.Option(..., "--out", help="Run folder; --resume continues it."),
    image_size: int = typer.Option(32, "--image-size"),
    patch_size: int = typer.Option(4, "--patch-size"),
    embed_dim: int = typer.Option(128, "--embed-dim"),
    depth: int = typer.Option(12, "--depth"),
    num_heads: Optional[int] = typer.Option(None, "--num-heads", help="Default: embed-dim / 64, what --backbone mae assumes."),
    decoder_embed_dim: int = typer.Option(128, "--decoder-embed-dim"),
    decoder_depth: int = typer.Option(2, "--decoder-depth"),
    steps: int = typer.Option(2000, "--steps", help="Total training steps."),
    batch_size: int = typer.Option(256, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default: 1.5e-4 x batch / 256."),
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
    if not 0 < mask_ratio < 1:
        raise ProbeError(f"--mask-ratio {mask_ratio}: give a fraction between 0 and 1, e.g. 0.75")
    _begin()
    from probe.mae_train import MAETrainConfig, train_mae
    from probe.models.vit import MAEConfig, default_heads

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
    out: Path = typer.Option(Path("runs/samples"), "--out", help="Output folder: samples.png and samples.npy."),
    overwrite: bool = Overwrite,
):
    """Draw DDIM samples from a checkpoint: a PNG contact sheet and the images as an array.

    Example: probe ddpm sample --n 32 --out runs/samples
    """
    _check_out(out, overwrite, checkpoint)
    _begin()
    from probe.backbones import default_model_files
    from probe.train import sample_checkpoint

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
    from rich.measure import Measurement
    from rich.table import Table

    from probe.cache import cache_entries, cache_root

    entries = cache_entries()
    table = Table(title=escape(str(cache_root())))
    for column in ("kind", "name", "backbone", "images", "files", "size", "last used"):
        table.add_column(column, justify="right" if column in ("images", "files", "size") else "left", no_wrap=True)
    for row in entries.itertuples():
        table.add_row(row.kind, escape(row.name), escape(row.backbone), str(row.images), str(row.files),
                      _size(row.bytes), _age(row.last_used))
    screen = Console()
    if Measurement.get(screen, screen.options.update_width(10_000), table).maximum <= screen.width:
        screen.print(table)
    else:  # a terminal too narrow for the table: an entry per two lines, nothing cut (the terminal wraps)
        typer.echo(str(cache_root()))
        for row in entries.itertuples():
            details = [f"backbone {row.backbone}"] if row.backbone else []
            details += [f"{row.images} images"] if row.images else []
            details += [f"{row.files} files", _size(row.bytes), f"last used {_age(row.last_used)}"]
            typer.echo(f"{row.kind}: {row.name}\n    {', '.join(details)}")
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
