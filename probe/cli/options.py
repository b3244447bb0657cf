"""What the commands share: the typer options (one constant per option, its help one sentence), the checks of
option values that run before torch is imported, error handling (user_errors), and the start of a sweep."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from probe.errors import DryRun, Interrupted, ProbeError

console = Console(stderr=True)


def start_work(threads: Optional[int] = None) -> None:
    """Once a command's options are checked, before its work: the settings that only change speed (probe.utils.runtime;
    they import torch), the torch threads, and at a terminal one line when other work already keeps the cores busy."""
    import torch

    from probe.utils.runtime import busy_warning, flush_subnormals

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
        try:
            return command(*args, **kwargs)
        except ProbeError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except DryRun:  # the plan is printed; nothing computed or written
            sys.exit(0)
        except KeyboardInterrupt as interrupt:
            files = interrupt.files if isinstance(interrupt, Interrupted) else 0
            note = _interrupt_note(kwargs.get("out"), resumable, files)
            console.print(f"[bold yellow]interrupted:[/] {escape(note)}", highlight=False, soft_wrap=True)
            sys.exit(130)
    return wrapper


def _interrupt_note(out: Path | None, resumable: bool, files: int) -> str:
    """What an interrupted command kept: --out untouched (or its checkpoints, or a sweep's finished cells) and the
    `files` activation files it cached (probe.errors.Interrupted)."""
    from probe.utils.outputs import read_marker

    notes = []
    if out is not None and resumable:
        notes.append(f"{out} keeps the checkpoints saved so far; rerun with --resume to continue")
    elif out is not None and (read_marker(out) or {}).get("mode") == "working":
        cells = len(list((Path(out) / "cells").glob("*.json")))
        notes.append(f"{out} keeps the {cells} cells finished so far; rerun the same command to compute the rest")
    elif out is not None:
        notes.append(f"nothing was written to {out}")
    if files:
        notes.append(f"the {files} activation files extracted so far stay in the cache and a rerun reuses them")
    return "; ".join(notes) or "nothing was kept"


def check_out_folder(out: Path, overwrite: bool, *inputs: Optional[Path]) -> None:
    """Refuse a bad --out before anything is loaded (probe.utils.outputs.check_out)."""
    from probe.utils.outputs import check_out

    check_out(out, overwrite=overwrite, inputs=inputs)


# The options, one constant each, shared by every command that has the option (a command with its own help or default
# for an option declares it in place). Help: one sentence with the default; details go in docs/.
# Data: a paper dataset, your copy of them, or a folder; the embedded default when none is given.
Dataset = typer.Option(None, "--dataset", help="A paper dataset (horse21, ffhq34, ...), fetched on first use.")
DataRoot = typer.Option(None, "--data-root", help="Your copy of the paper datasets instead.")
Data = typer.Option(None, "--data", help="A dataset folder (layout: docs/data.md).")
Fit = typer.Option(None, "--fit", help="Non-square images: resize or pad (docs/data.md).")
Images = typer.Option(..., "--images", help="Folder of images (or one image file).")

# The backbone and where its features are read (probe.backbones.spec.BackboneSpec).
Backbone = typer.Option("ddpm", "--backbone", help="ddpm, mae, transformers, sd, flux, ... (docs/backbones).")
BackboneList = typer.Option("ddpm,random,pixels", "--backbones", help="Backbones, comma-separated; name=file for weights.")
Checkpoint = typer.Option(None, "--checkpoint", help="Weights: a file, folder or hub name.")
Revision = typer.Option(None, "--revision", help="A hub model's branch, tag or commit.")
Prompt = typer.Option(None, "--prompt", help="sd, pixart, sd3, flux: the text prompt.")
ClassLabel = typer.Option(None, "--class-label", help="dit: the class (default: the null class).")
ModelDtype = typer.Option(None, "--model-dtype", help="float32 (default), bfloat16 or float16.")
Offload = typer.Option(None, "--offload", help="sd, dit, pixart, sd3, flux: CPU offload, model or sequential.")
Tokens = typer.Option("output", "--tokens", help="dit, pixart, sd3, flux: a block's output or its AdaLN-modulated tokens.")
ModelFlagsOpt = typer.Option(None, "--model-flags", help="ADM flags or a JSON file; mae: --num_heads N.")
Blocks = typer.Option(None, "--blocks", help="Layers: 5,6,7 / 0-17 / names / all.")
Steps = typer.Option(None, "--steps", help="Diffusion steps t (default 50,150,250).")
GridSteps = typer.Option(None, "--steps", help="Diffusion steps (default: 9 from 0 to 999).")  # a layer x t sweep
Noise = typer.Option(None, "--noise", help="shared, per-image, mean-of-K or ddim-inversion.")
InputActivations = typer.Option(False, "--input-activations", help="ddpm/random: each block's input, not its output.")
ImageSize = typer.Option(None, "--image-size", help="pixels, swav, transformers, dit, pixart, sd3, flux: input size.")

# The probes and ensembles fitted on the features.
TrainNumber = typer.Option(None, "--train-number", help="Labelled training images (default: the paper's split, else up to 20).")
TestNumber = typer.Option(None, "--test-number", help="Test images (default: the paper's split, else up to 20).")
SmallTestNumber = typer.Option(None, "--test-number", help="Test images (default: up to 20).")
Members = typer.Option(10, "--members", help="MLPs per ensemble.")
ProbeTrainNumber = typer.Option(None, "--train-number", help="Labelled training images per probe (default: up to 20).")
ProbeTestNumber = typer.Option(None, "--test-number", help="Held-out images that score each probe (default: up to 20).")
ProbeMembers = typer.Option(1, "--members", help="MLPs per probe.")
EarlyBatchSize = typer.Option(None, "--early-batch-size", help="Batch of epochs 0-3: 64 (authors', default) or 128.")
Seed = typer.Option(0, "--seed", help="Seed of every random choice.")

# Where results go, and how a command runs.
Out = typer.Option(..., "--out", help="Output folder (new, empty, or --overwrite).")
Overwrite = typer.Option(False, "--overwrite", help="Replace a previous result of probe in --out.")
Resume = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt.")
Cache = typer.Option(None, "--cache", help="Activation store folder (default: the cache).")
Device = typer.Option("cpu", "--device", help="cpu or cuda.")
TorchThreads = typer.Option(None, "--threads", help="Torch threads (default: all cores).")
Quiet = typer.Option(False, "--quiet", help="No progress bars.")
QuietPlan = typer.Option(False, "--quiet", help="No progress bars, no plan.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the plan and exit.")

# A sweep's cells run in this process or on Ray (probe.sweeps.runner).
Ray = typer.Option(None, "--ray", help="Run the cells on Ray: local, auto or an address.")
Threads = typer.Option(None, "--threads", help="Torch threads per cell (default: all cores here, 1 on Ray).")
GpusPerCell = typer.Option(0.0, "--gpus-per-cell", help="GPUs per Ray task.")


def default_out(command: str):
    """The callback of a command's --out: the folder given, or runs/COMMAND on the embedded default and
    runs/COMMAND-NAME for `--dataset NAME` or a `--data` folder named NAME, so that runs on other data do not meet in
    one folder (`probe grid --dataset horse21` after `probe grid`)."""

    def resolve(ctx: typer.Context, out: Optional[Path]) -> Path:
        if out is not None:
            return out
        # parameters given on the command line are parsed before a default --out: they are in ctx.params
        dataset, data = ctx.params.get("dataset"), ctx.params.get("data")
        name = dataset or (Path(data).expanduser().absolute().name if data else None)
        return Path(f"runs/{command}-{name}" if name else f"runs/{command}")
    return resolve


def DefaultOut(command: str, what: str = "Output folder"):
    """--out of a command on a dataset: default_out's folder unless given."""
    return typer.Option(None, "--out", callback=default_out(command), show_default=False,
                        help=f"{what} (default: runs/{command}[-DATA]).")


def SweepOut(command: str):
    """--out of a sweep command (default_out's folder); a rerun resumes it."""
    return DefaultOut(command, "Sweep folder, resumed by a rerun")


def RunOut(default=...):
    """--out of a training command, which --resume continues (required unless a default is given)."""
    return typer.Option(default, "--out", help="Run folder; --resume continues it.")


def parse_kinds(text: str, checkpoint: Optional[Path] = None, option: str = "--backbone") -> list[tuple[str, bool]]:
    """(kind, has its own checkpoint) of a --backbones list (kind=weights) or of one --backbone; an unknown kind
    is refused here, before anything loads or downloads."""
    from probe.backbones.spec import check_kind, takes_base_checkpoint

    parts = [part.strip().partition("=") for part in text.split(",") if part.strip()]
    for kind, _, _ in parts:
        check_kind(kind.strip(), option)
    return [(kind.strip(), bool(given) or (takes_base_checkpoint(kind.strip()) and checkpoint is not None))
            for kind, _, given in parts]


def plan_downloads(command: str, dataset: Optional[str], data_root: Optional[Path], backbones, dry_run: bool,
                   numbers: Optional[tuple] = None, paper_split: bool = True) -> list[str]:
    """The plan's downloads (probe.data.fetch.pending_downloads), which the command gives its plan; a --dry-run that
    needs some stops here, downloading nothing, and names the images it will take from each split: `numbers`, the
    (--train-number, --test-number) given (None each: the paper's split with `paper_split`, else up to 20; fewer
    when the split holds fewer)."""
    from probe.data.fetch import dry_run_before_downloads, held_images, pending_downloads

    items = pending_downloads(dataset, data_root, backbones)
    if dry_run and items:
        images = None
        if numbers is not None:
            from probe.data.layout import SPLIT_NUMBER
            from probe.data.registry import lookup
            from probe.sweeps.plan import split_text

            info = lookup(dataset)
            held = held_images(info, data_root)
            split = tuple(given if given is not None else
                          min(info.split_number(name) if paper_split else SPLIT_NUMBER, holds)
                          for given, name, holds in zip(numbers, ("train", "test"), held))
            images = split_text({split})
        dry_run_before_downloads(command, items, dataset, images)
    return items


def check_early_batch(size: int | None) -> None:
    if size is not None and size < 2:
        raise ProbeError(f"--early-batch-size {size}: batch normalisation needs at least 2 pixels per batch (64 is "
                         "the authors' rule)")


def early_batch_or_default(size: int | None) -> int:
    """--early-batch-size (checked by check_early_batch before any work); None: EARLY_BATCH_SIZE."""
    from probe.ensemble.settings import EARLY_BATCH_SIZE

    return EARLY_BATCH_SIZE if size is None else size


def check_threads(threads: Optional[int], gpus_per_cell: float = 0) -> None:
    if threads is not None and threads < 1:
        raise ProbeError(f"--threads {threads}: give 1 or more")
    if gpus_per_cell < 0:
        raise ProbeError(f"--gpus-per-cell {gpus_per_cell}: give 0 or more")


def parse_ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ProbeError(f"--{what} {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def spec_from_options(backbone: str, checkpoint: Optional[Path], model_flags: Optional[str], blocks: Optional[str],
          steps: Optional[str], noise: Optional[str], input_activations: bool, image_size: Optional[int], seed: int,
          device: str, prompt: Optional[str] = None, revision: Optional[str] = None,
          model_dtype: Optional[str] = None, class_label: Optional[int] = None, offload: Optional[str] = None,
          tokens: str = "output"):
    """The backbone options as a BackboneSpec; the syntax of --blocks / --steps is checked before anything loads."""
    from probe.backbones.spec import BackboneSpec, check_cell_syntax, check_offload, check_tokens

    check_cell_syntax(blocks, "blocks")
    check_cell_syntax(steps, "steps")
    if model_dtype is not None and model_dtype not in ("float32", "bfloat16", "float16"):
        raise ProbeError(f"--model-dtype {model_dtype!r}: use float32, bfloat16 or float16")
    check_offload(backbone, offload)
    check_tokens(backbone, tokens)
    return BackboneSpec(kind=backbone, checkpoint=checkpoint, model_flags=model_flags, layers=blocks, steps=steps,
                        noise=noise, seed=seed, input_activations=input_activations, image_size=image_size,
                        device=device, prompt=prompt, revision=revision, model_dtype=model_dtype,
                        class_label=class_label, offload=offload, tokens=tokens)


# The options of a sweep command that are not its result-determining options (probe.sweeps.runner.check_options), so a
# rerun may change them: what the cells vary (a rerun may list more seeds, say), what only changes the tables drawn
# from the cells (--size-threshold), and what only changes speed or where things are kept. Every other option of a
# sweep command is recorded by its first run and must stay; --threads as the number each cell gets.
SWEEP_AXES = {"grid": ("blocks", "steps", "size_threshold"), "layers": ("backbones", "steps", "depths"),
              "efficiency": ("backbones", "train_numbers", "seeds"), "variants": ("seeds", "draws", "inversion_steps"),
              "robustness": ("backbones", "corruptions", "severities", "seeds"),
              "segment": ("seeds", "seed", "overwrite"),
              "similarity": ("backbones", "blocks", "steps", "metrics", "k", "dims"),
              "correspond": ("blocks", "steps", "alpha", "threshold")}
SPEED_ONLY = ("out", "ray", "gpus_per_cell", "cache", "quiet", "threads", "dry_run", "offload")


def recorded_sweep_options(command: str, parameters: dict) -> dict:
    """The sweep's result-determining options as this command line gives them, by their option names: the
    command's `parameters` (by name, as typer passed them) except SWEEP_AXES and SPEED_ONLY (paths that exist made
    absolute), and the threads per cell."""
    from probe.sweeps.runner import cell_threads

    def shown(value):
        if isinstance(value, Path):
            path = value.expanduser()
            return str(path.absolute()) if path.exists() else str(value)
        return value

    from probe.ensemble.settings import BATCH_SIZE

    skipped = {*SWEEP_AXES[command], *SPEED_ONLY}
    resolved = {"early_batch_size": BATCH_SIZE}  # unset: the default in force, recorded as a number
    options = {f"--{name.replace('_', '-')}": shown(resolved.get(name) if value is None else value)
               for name, value in parameters.items() if name not in skipped}
    return {**options, "--threads": cell_threads(parameters["threads"], parameters["ray"])}


def start_sweep(command: str, out: Path, dataset: Optional[str], data_root: Optional[Path], data: Optional[Path],
                 cache: Optional[Path], checkpoint: Optional[Path], ray: Optional[str], threads: Optional[int],
                 gpus_per_cell: float, *inputs: Optional[Path], parameters: dict, progress: bool = True,
                 fit: Optional[str] = None, dry_run: bool = False, backbones=(), numbers: Optional[tuple] = None,
                 paper_split: bool = True):
    """Check a sweep's folder, runner options and data options (a paper dataset fetched into the cache when no
    --data-root is given) before torch is loaded, then start the work; the sweep's data options and the downloads
    for its plan. `inputs`: other folders the sweep reads; `parameters`: the command's, by name
    (recorded_sweep_options). In-process sweeps set no thread count here: the runner gives each cell its budget.
    `backbones`: (kind, has a checkpoint) pairs, for the plan's downloads (a --dry-run that needs some stops, naming
    the images of `numbers` and `paper_split`, as plan_downloads)."""
    from probe.data.sources import open_source
    from probe.sweeps.runner import check_options
    from probe.utils.outputs import check_out

    check_out(out, inputs=[data, data_root, checkpoint, cache, *inputs], command=command)
    check_threads(threads, gpus_per_cell)
    check_options(out, command=command, options=recorded_sweep_options(command, parameters))
    downloads = plan_downloads(command, dataset, data_root, backbones, dry_run, numbers, paper_split)
    source = open_source(dataset, data_root, data, progress=progress, fit=fit)
    if source.info is not None and data_root is None:
        data_root = source.root.parent
    start_work()
    from probe.sweeps.data import SweepData

    def absolute(path: Optional[Path]) -> Optional[str]:  # as a Ray worker, whose folder differs, must see it
        return str(Path(path).expanduser().absolute()) if path else None

    return SweepData(dataset, absolute(data_root), absolute(data), absolute(cache), fit=fit), downloads

