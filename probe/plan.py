"""The plan a sweep (and `probe segment`) prints before any work: its cells, its images, the backbone passes it will
compute (UNet passes for the diffusion backbones: images x steps, x K for mean-of-K, the inversion's walk for DDIM
inversion), the activation cache it will write, the downloads it still needs, and once its first cell has run an
estimate of the time left. `--dry-run` prints it and exits (`DryRun`); a sweep whose activations would not fit on the
cache's disk is refused before any work.

The cache size comes from the feature shapes, found without extracting anything: a guided-diffusion UNet (ddpm,
random) runs one forward of a blank image on torch's meta device (shapes only: no weights are read, no arithmetic is
done), every other backbone one real forward of one blank image at its first step (a few milliseconds for pixels,
mae and swav; one network pass for the hub models). Each stored file is a float16 .npy: C x h x w x 2 bytes plus
numpy's header. Activations already in the store (every file of an image at a step) count as written: they are
neither recomputed nor written again.

Nothing here imports torch at import time: the command line imports this module before it loads anything.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from probe.errors import DryRun, ProbeError

log = logging.getLogger("probe")

_PENDING: list[str] = []  # what the command is about to download first (`note_downloads`), for the plan's line


@dataclass
class Extraction:
    """One backbone's activations of some images in one store folder. `steps`: the steps extracted (None: all of
    the backbone's); `temporary`: a store deleted after each use (robustness's corrupted copies), extracted
    `repeats` times over images like these (never cached, so the images stand in for their copies' shapes)."""

    backbone: object
    images: list
    cache: str | Path | None = None
    steps: list | None = None
    temporary: bool = False
    repeats: int = 1


@dataclass
class Plan:
    """What a run will do, counted before it does it (see the module docstring)."""

    command: str
    cells: int
    todo: int
    images: int = 0  # distinct images whose activations are stored (temporary copies not counted)
    temporary_images: int = 0  # corrupted copies, extracted into a temporary store
    passes: int = 0  # backbone forward passes to compute (one image each)
    image_steps: int = 0  # (image, step) extractions to compute: what the time estimate scales
    steps: int = 0  # distinct steps extracted (0: a backbone without steps)
    diffusion: bool = False  # the passes are UNet passes
    total_bytes: int = 0  # the activations the run uses, in the cache
    cached_bytes: int = 0  # of those already there
    temporary_bytes: int = 0  # the largest temporary store at once
    cache_dir: Path = field(default_factory=Path)
    free_bytes: int = 0
    downloads: list[str] = field(default_factory=list)
    temporary_what: str = "corrupted copies"  # what the temporary store holds
    temporary_when: str = "deleted as scored"  # and when it goes

    @property
    def write_bytes(self) -> int:
        return self.total_bytes - self.cached_bytes

    def lines(self) -> list[str]:
        """The plan as a few lines of text."""
        done = self.cells - self.todo
        cells = f"{self.cells} cell{'s' if self.cells != 1 else ''}" + (
            f" ({done} finished, {self.todo} to compute)" if done else "")
        images = f"{self.images} images" + (f" + {self.temporary_images} corrupted copies" if self.temporary_images
                                            else "")
        kind = "UNet passes" if self.diffusion else "backbone passes"
        every = self.images * max(1, self.steps) + self.temporary_images * max(1, self.steps)
        per = (f" ({self.images} images x {self.steps} steps)" if self.diffusion and self.steps and
               self.passes == every and not self.temporary_images else "")
        lines = [f"plan: {self.command}, {cells}, {images}, {self.passes:,} {kind} to compute{per}",
                 f"plan: activation cache {gigabytes(self.total_bytes)} ({gigabytes(self.write_bytes)} to write, "
                 f"{gigabytes(self.cached_bytes)} cached) in {self.cache_dir}, {gigabytes(self.free_bytes)} free"]
        if self.temporary_bytes:
            lines[-1] += (f"; {self.temporary_what} {gigabytes(self.temporary_bytes)} at most at once, "
                          f"{self.temporary_when}")
        lines.append(f"plan: downloads: {', '.join(self.downloads) if self.downloads else 'none needed'}; time: "
                     "estimated once the first cell has run")
        return lines

    def check_disk(self) -> None:
        """Refuse, in one line, a run whose activations would not fit on the cache's disk."""
        needed = self.write_bytes + self.temporary_bytes
        if needed > self.free_bytes:
            raise ProbeError(
                f"probe {self.command} would write {gigabytes(needed)} of activations to {self.cache_dir} "
                f"({gigabytes(self.cached_bytes)} of its {gigabytes(self.total_bytes)} cached already) but that disk "
                f"has {gigabytes(self.free_bytes)} free: pass --cache DIR on a disk with room, or compute fewer cells "
                "(fewer --blocks, --steps, --seeds, --backbones or images)")


def gigabytes(nbytes: float) -> str:
    """Bytes as GB (powers of 1000) to three digits; below 0.01 GB as MB."""
    value = nbytes / 1e9
    if value == 0:
        return "0 MB"
    if value < 0.01:
        return f"{nbytes / 1e6:.3g} MB"
    return f"{value:.1f} GB" if value >= 100 else f"{value:.3g} GB"


def note_downloads(items: Sequence[str]) -> None:
    """What the command downloads before it can plan (named on the plan's downloads line)."""
    _PENDING[:] = list(items)


def pending_downloads(dataset: str | None, data_root: Path | None, backbones: Iterable[tuple[str, bool]]) -> list[str]:
    """The paper's items a command still has to download: the datasets archive when --dataset has no cached copy
    (and no --data-root), and the paper checkpoint of each (kind, has its own checkpoint) without one. Hub models
    (diffusers, sd, transformers by hub name) are fetched on first use and not listed."""
    if not dataset:
        return []
    from probe.data import fetch
    from probe.data.registry import CHECKPOINT_FOLDERS, DATASETS_ITEM, lookup

    info = lookup(dataset)
    items = []
    if data_root is None and fetch.dataset_problem(fetch.datasets_root() / info.name, info) is not None:
        items.append(DATASETS_ITEM.path)
    for kind in dict.fromkeys(kind for kind, given in backbones if not given and kind in CHECKPOINT_FOLDERS):
        item = info.checkpoint_item(kind)
        if not fetch.download_path(item).is_file():
            items.append(item.path)
    return items


def dry_run_before_downloads(command: str, items: list[str], dataset: str) -> None:
    """A --dry-run that would need downloads to plan further: print them and stop (nothing is downloaded)."""
    log.info(f"plan: probe {command} needs these downloads first: {', '.join(items)}")
    log.info(f"plan: cells, passes and cache size are known once they are here: probe download {dataset} "
             "--what data,checkpoints (or pass --data-root / --checkpoint)")
    raise DryRun()


_SHAPES: dict[tuple, dict[str, tuple[int, int, int]]] = {}


def cell_shapes(backbone) -> dict[str, tuple[int, int, int]]:
    """(C, h, w) of every cell of `backbone` (see the module docstring for how), once per process per identity."""
    import json

    key = (json.dumps(backbone.identity, sort_keys=True, default=str), tuple(backbone.names), backbone.image_size)
    if key not in _SHAPES:
        by_layer = _adm_shapes(backbone) if _is_adm(backbone) else _forward_shapes(backbone)
        _SHAPES[key] = {cell.name: by_layer[cell.layer] for cell in backbone.cells}
    return _SHAPES[key]


def _is_adm(backbone) -> bool:
    from probe.backbones.adm import ADMBackbone

    return isinstance(backbone, ADMBackbone)


def _adm_shapes(backbone) -> dict[str, tuple[int, int, int]]:
    """The chosen decoder blocks' (C, h, w) from one forward of the flags' UNet on torch's meta device."""
    import torch

    from probe.backbones.base import capture
    from probe.models import UNet

    flags, size = backbone.model.flags, backbone.image_size
    with torch.device("meta"):
        unet = UNet(flags)
        modules = {f"block{b}": unet.output_blocks[b] for b in backbone.blocks}
        with torch.no_grad(), capture(modules, backbone.input_activations) as captured:
            unet(torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long), last_block=max(backbone.blocks))
    return {layer: tuple(int(n) for n in captured[layer].shape[1:]) for layer in modules}


def _forward_shapes(backbone) -> dict[str, tuple[int, int, int]]:
    """Every chosen layer's (C, h, w) from one forward of one blank image at the backbone's first step."""
    import torch

    step = backbone.steps[0]
    size = backbone.image_size
    out = backbone(torch.zeros(1, 3, size, size), ["plan"], step)
    return {cell.layer: tuple(int(n) for n in out[cell.name].shape[1:]) for cell in backbone.cells
            if cell.step == step}


def npy_bytes(shape: tuple[int, ...]) -> int:
    """The size of a float16 .npy file of `shape`, as numpy writes it."""
    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                  "shape": tuple(shape)})
    return buffer.tell() + 2 * math.prod(shape)


def passes_per_image(backbone, step) -> int:
    """Forward passes one image costs at `step`: K draws for mean-of-K, the inversion's steps for DDIM inversion
    (at most: a chain continues from an earlier step), else 1."""
    noise = getattr(backbone, "noise", None)
    if noise is None or step is None:
        return 1
    if noise.kind == "mean-of-K":
        return noise.draws
    if noise.kind == "ddim-inversion":
        from probe.diffusion import inversion_schedule

        return len(inversion_schedule(step, noise.inversion_steps))
    return 1


def free_space(folder: Path) -> int:
    """Free bytes on the filesystem that holds `folder` (its nearest existing parent when it is not there yet)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def make_plan(command: str, cells: int, todo: int, extractions: list[Extraction]) -> Plan:
    """Count what `extractions` will compute and write (see the module docstring)."""
    from probe.cache import activations_root
    from probe.store import ActivationStore, image_key

    stored = [e for e in extractions if not e.temporary]
    cache_dir = Path(stored[0].cache if stored and stored[0].cache else
                     next((e.cache for e in extractions if e.cache), None) or activations_root())
    plan = Plan(command, cells, todo, cache_dir=cache_dir.expanduser(), downloads=list(_PENDING))
    seen_images, seen_files, steps = set(), set(), set()
    for extraction in extractions:
        backbone = extraction.backbone
        shapes = cell_shapes(backbone)
        store = ActivationStore(backbone, extraction.cache)
        chosen = backbone.steps if extraction.steps is None else extraction.steps
        plan.diffusion = plan.diffusion or any(t is not None for t in backbone.steps)
        steps.update(t for t in chosen if t is not None)
        if extraction.temporary:
            size = sum(npy_bytes(shapes[n]) for t in chosen for n in backbone.names_for_step(t))
            plan.temporary_bytes = max(plan.temporary_bytes, size * len(extraction.images))
            plan.temporary_images += len(extraction.images) * extraction.repeats
            plan.passes += extraction.repeats * len(extraction.images) * sum(passes_per_image(backbone, t)
                                                                             for t in chosen)
            plan.image_steps += extraction.repeats * len(extraction.images) * len(chosen)
            continue
        for image in extraction.images:
            key = image_key(image)
            seen_images.add(key)
            for t in chosen:
                names = backbone.names_for_step(t)
                if (store.root, key, t) in seen_files:
                    continue
                seen_files.add((store.root, key, t))
                sizes = {n: npy_bytes(shapes[n]) for n in names}
                there = {n for n in names if store.path(key, n).is_file()}
                plan.total_bytes += sum(sizes.values())
                plan.cached_bytes += sum(sizes[n] for n in there)
                if len(there) < len(names):
                    plan.passes += passes_per_image(backbone, t)
                    plan.image_steps += 1
    plan.images = len(seen_images)
    plan.steps = len(steps)
    plan.free_bytes = free_space(plan.cache_dir)
    return plan


def announce(plan: Plan, dry_run: bool = False, show: bool = True) -> None:
    """Print the plan (`show`: False for --quiet, unless `dry_run`); refuse a run that would not fit on the cache's
    disk; with `dry_run` stop there (DryRun)."""
    for line in plan.lines() if show or dry_run else []:
        log.info(line)
    plan.check_disk()
    if dry_run:
        raise DryRun()


def time_left(plan: Plan | None, first_seconds: float, extracted: int, extraction_seconds: float, remaining: int,
              parallel: int = 1) -> float:
    """Seconds left once the first cell ran in `first_seconds`, of which `extraction_seconds` extracted
    `extracted` image-steps: the other cells' fitting at the first's pace, plus the image-steps still to extract at
    the first's pace (in this process; on Ray, where they are not seen, the first cell's time per cell), over
    `parallel` cells at once."""
    if plan is None or extracted == 0:
        return first_seconds * remaining / parallel
    fitting = max(0.0, first_seconds - extraction_seconds)
    left = max(0, plan.image_steps - extracted)
    return (fitting * remaining + extraction_seconds / extracted * left) / parallel


def time_line(command: str, seconds_left: float, first_seconds: float, remaining: int) -> str:
    minutes = seconds_left / 60
    amount = f"about {minutes:.0f} min" if minutes >= 1 else f"about {seconds_left:.0f} s"
    return (f"{command}: the first cell took {first_seconds:.1f} s; {amount} left for the other {remaining} "
            f"cell{'s' if remaining != 1 else ''}")


def reseeded(backbone, seed: int):
    """A guided-diffusion `backbone` as built with another `seed`: its identity changes only in its noise seed (and a
    random UNet's in its weights' seed), so the description is copied rather than the weights drawn again."""
    import copy

    other = copy.copy(backbone)
    other.noise = replace(backbone.noise, seed=seed)
    if backbone.kind == "random":
        other.model = replace(backbone.model, checkpoint_hash=f"random-init-seed{seed}")
    return other


def segment_extractions(cells: list, corrupted: bool = False) -> list[Extraction]:
    """The extractions of sweep cells made by probe.experiments.segment_config (efficiency, variants, robustness,
    segment --seeds): per cell, its backbone at its seed over its train and test images; `corrupted`: also the
    test images' corrupted copies (a temporary store per corruption and severity)."""
    from probe.backbones import BackboneSpec, build_backbone
    from probe.experiments import SweepData
    from probe.segment import SPLIT_NUMBER, SegmentOptions, training_images

    built, splits, extractions = {}, {}, []
    for cell in cells:
        config = cell.config
        data = SweepData(**config["data"])
        source = data.source()
        spec = BackboneSpec.from_dict(config["backbone"])
        spec_key = repr(sorted(config["backbone"].items(), key=str))
        if (spec_key, cell.seed) not in built:
            first = next((b for (k, _), b in built.items() if k == spec_key and _is_adm(b)), None)
            built[spec_key, cell.seed] = (reseeded(first, cell.seed) if first is not None else
                                          build_backbone(replace(spec, seed=cell.seed), "segment", source.native_size))
        backbone = built[spec_key, cell.seed]
        options = SegmentOptions(backbone=spec, train_number=config["train_number"],
                                 test_number=config["test_number"], train_draw=config["train_draw"],
                                 train_data=config["train_data"])
        resolution = backbone.image_size
        train_key = (repr(config["data"]), resolution, options.train_number,
                     cell.seed if options.train_draw else None, options.train_data)
        if train_key not in splits:
            splits[train_key] = training_images(source, options, resolution, cell.seed)
        test_key = (repr(config["data"]), resolution, "test", options.test_number)
        if test_key not in splits:
            splits[test_key] = source.split("test", resolution, options.test_number, SPLIT_NUMBER)
        extractions.append(Extraction(backbone, splits[train_key] + splits[test_key], data.cache))
        if corrupted:
            repeats = len(config["corruptions"]) * len(config["severities"])
            extractions.append(Extraction(backbone, splits[test_key], data.cache, temporary=True, repeats=repeats))
    return extractions


def planned_estimate_parallel(ray: str | None, threads: int) -> int:
    """Cells that run at once: 1 in this process; on Ray, this machine's cores over the threads per cell (a guess
    for a cluster)."""
    return 1 if ray is None else max(1, (os.cpu_count() or 1) // max(1, threads))
