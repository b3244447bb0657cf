"""The plan a sweep (and `probe segment`) prints before any work: its cells, its images, the backbone passes it will
compute (UNet passes for the diffusion backbones: images x steps, x K for mean-of-K, the inversion's walk for DDIM
inversion), the activation cache it will write, the downloads it still needs, and once its first cell has run an
estimate of the time left. `--dry-run` prints it and exits (`DryRun`); a sweep whose activations would not fit on the
cache's disk is refused before any work.

The cache size comes from the feature shapes, found without extracting anything (Backbone.layer_shapes): a
guided-diffusion UNet (ddpm, random) runs one forward of a blank image on torch's meta device (shapes only: no weights
are read, no arithmetic is done), every other backbone one real forward of one blank image at its first step (a few
milliseconds for pixels, mae and swav; one network pass for the hub models); an image's passes at a step come from
Backbone.passes_per_image. Each stored file is a float16 .npy: C x h x w x 2 bytes plus numpy's header. Activations
already in the store (every file of an image at a step) count as written: they are neither recomputed nor written
again.

A sweep declares what it extracts as `Extraction`s: it gives run_sweep an `extractions(todo) -> list[Extraction]`
callable over the cells still to compute (e.g. probe.experiments.cells.segment_extractions); nothing else of its task
reaches the plan.

Nothing here imports torch at import time: the command line imports this module before it loads anything.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probe.errors import DryRun, ProbeError

log = logging.getLogger("probe")


@dataclass
class Extraction:
    """One backbone's activations of some images in one store folder. `steps`: the steps extracted (None: all of
    the backbone's); `temporary`: a store deleted after each use (robustness's corrupted copies), extracted
    `repeats` times over images like these (never cached, so the images stand in for their copies' shapes);
    `split`: how many of the images train and how many test a cell, named on the plan."""

    backbone: object
    images: list
    cache: str | Path | None = None
    steps: list | None = None
    temporary: bool = False
    repeats: int = 1
    split: tuple[int, int] | None = None


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
    splits: set[tuple[int, int]] = field(default_factory=set)  # (train, test) images of the cells
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
        each = f"; {split_text(self.splits)} images{' per cell' if self.cells > 1 else ''}" if self.splits else ""
        lines = [f"plan: {self.command}, {cells}, {images}, {self.passes:,} {kind} to compute{per}{each}",
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


def split_text(splits: set[tuple[int, int]]) -> str:
    """"30 train + 20 test" of one (train, test) split; "1, 5 or 30 train + 20 test" of several."""
    def either(numbers: set[int]) -> str:
        ordered = [str(n) for n in sorted(numbers)]
        return ordered[0] if len(ordered) == 1 else f"{', '.join(ordered[:-1])} or {ordered[-1]}"

    return f"{either({train for train, _ in splits})} train + {either({test for _, test in splits})} test"


def gigabytes(nbytes: float) -> str:
    """Bytes as GB (powers of 1000) to three digits; below 0.01 GB as MB."""
    value = nbytes / 1e9
    if value == 0:
        return "0 MB"
    if value < 0.01:
        return f"{nbytes / 1e6:.3g} MB"
    return f"{value:.1f} GB" if value >= 100 else f"{value:.3g} GB"


_SHAPES: dict[tuple, dict[str, tuple[int, int, int]]] = {}


def cell_shapes(backbone) -> dict[str, tuple[int, int, int]]:
    """(C, h, w) of every cell of `backbone` (see the module docstring for how), once per process per identity."""
    import json

    key = (json.dumps(backbone.identity, sort_keys=True, default=str), tuple(backbone.names), backbone.image_size)
    if key not in _SHAPES:
        by_layer = backbone.layer_shapes()
        _SHAPES[key] = {cell.name: by_layer[cell.layer] for cell in backbone.cells}
    return _SHAPES[key]


def npy_bytes(shape: tuple[int, ...]) -> int:
    """The size of a float16 .npy file of `shape`, as numpy writes it."""
    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                  "shape": tuple(shape)})
    return buffer.tell() + 2 * math.prod(shape)


def free_space(folder: Path) -> int:
    """Free bytes on the filesystem that holds `folder` (its nearest existing parent when it is not there yet)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def make_plan(command: str, cells: int, todo: int, extractions: list[Extraction],
              downloads: Sequence[str] = ()) -> Plan:
    """Count what `extractions` will compute and write (see the module docstring); `downloads`: what the command
    downloads before it can plan, named on the plan's downloads line."""
    from probe.features.store import ActivationStore, image_key
    from probe.utils.cache import activations_root

    stored = [e for e in extractions if not e.temporary]
    cache_dir = Path(stored[0].cache if stored and stored[0].cache else
                     next((e.cache for e in extractions if e.cache), None) or activations_root())
    plan = Plan(command, cells, todo, cache_dir=cache_dir.expanduser(), downloads=list(downloads))
    seen_images, seen_files, steps = set(), set(), set()
    for extraction in extractions:
        backbone = extraction.backbone
        shapes = cell_shapes(backbone)
        store = ActivationStore(backbone, extraction.cache)
        chosen = backbone.steps if extraction.steps is None else extraction.steps
        plan.diffusion = plan.diffusion or any(t is not None for t in backbone.steps)
        steps.update(t for t in chosen if t is not None)
        if extraction.split is not None:
            plan.splits.add(extraction.split)
        if extraction.temporary:
            size = sum(npy_bytes(shapes[n]) for t in chosen for n in backbone.names_for_step(t))
            plan.temporary_bytes = max(plan.temporary_bytes, size * len(extraction.images))
            plan.temporary_images += len(extraction.images) * extraction.repeats
            plan.passes += extraction.repeats * len(extraction.images) * sum(backbone.passes_per_image(t)
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
                    plan.passes += backbone.passes_per_image(t)
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


def planned_estimate_parallel(ray: str | None, threads: int) -> int:
    """Cells that run at once: 1 in this process; on Ray, this machine's cores over the threads per cell (a guess
    for a cluster)."""
    return 1 if ray is None else max(1, (os.cpu_count() or 1) // max(1, threads))
