"""`probe synthesize`: a labelled dataset drawn from the DDPM of a trained ensemble (the authors'
generate_dataset.py, behind DatasetDDPM and their Table 3).

Images are sampled from the diffusion model the ensemble's manifest names (ancestral DDPM through every step, as
the authors, or DDIM in K steps), saved as 8-bit PNGs, and labelled from those PNGs by `probe predict`'s own path
(`load_images`, the activation store, `predict_image`: majority vote and the top-10 % Jensen-Shannon uncertainty),
so `probe predict` on a written image gives its written label map. Image i draws all of its noise from a generator
seeded by (--seed, i), so the same settings give the same files, and another --chunk-size the same images up to
float rounding (a batch's arithmetic depends slightly on its size).

The work is a list of chunks, each a cell of the sweep runner (`probe.sweeps.runner.run_sweep`): a chunk writes its
images into `--out/train/` as it finishes and its record into `--out/cells/`, so memory does not grow with --n, a
killed run resumes at the first unfinished chunk, and `--ray` spreads chunks over a cluster (whose workers must see
--out and the ensemble on a shared filesystem). A chunk's activations live in a temporary folder deleted with it.
At the end the most uncertain share (`--drop-uncertain`) moves to `dropped/`, and uncertainty.csv, classes.txt,
palette.json and preview.png are written.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from probe import plots
from probe.backbones.adm import ADMBackbone
from probe.backbones.spec import is_guided_diffusion
from probe.data.layout import CLASSES_FILE, load_images
from probe.ensemble import PixelEnsemble
from probe.errors import ProbeError
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore
from probe.models.diffusion import per_image_noise
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.segment import load_predictor, predict_image
from probe.training.ddpm import to_uint8
from probe.utils.outputs import atomic_write, check_out, working_dir, write_json

SETTINGS = "synthesize.json"
SAMPLER_FORMS = "ddpm (ancestral sampling through every step of the model's schedule, as the authors) or ddim:K"
PREVIEW_IMAGES = 6  # most and least certain images shown in preview.png


@dataclass
class SynthesizeOptions:
    """What `probe synthesize` draws. `chunk_size` images are sampled as one batch and form one runner cell."""

    n: int = 1000
    sampler: str = "ddpm"
    seed: int = 0
    drop_uncertain: float = 0.1
    chunk_size: int = 32
    device: str = "cpu"

    def check(self) -> None:
        if self.n < 1:
            raise ProbeError(f"--n {self.n}: draw at least 1 image")
        if not 0 <= self.drop_uncertain < 1:
            raise ProbeError(f"--drop-uncertain {self.drop_uncertain}: give the share of images to leave out, "
                             "from 0 up to (not including) 1, e.g. 0.1")
        if self.chunk_size < 1:
            raise ProbeError(f"--chunk-size {self.chunk_size}: give 1 or more images per chunk")
        ddim_steps(self.sampler)

    def settings(self) -> dict:
        """What determines the images (a resumed run must repeat it); `drop_uncertain` may change on a rerun."""
        return {key: value for key, value in asdict(self).items() if key != "drop_uncertain"}


def ddim_steps(sampler: str) -> int | None:
    """None for `ddpm`, K for `ddim:K`; anything else is an error."""
    if sampler == "ddpm":
        return None
    match = re.fullmatch(r"ddim:(\d+)", sampler)
    if not match or int(match.group(1)) < 1:
        raise ProbeError(f"--sampler {sampler!r}: use {SAMPLER_FORMS} (K >= 1 DDIM steps, e.g. ddim:50)")
    return int(match.group(1))


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image `index`: all of its noise, whichever chunk it falls in."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def image_stems(n: int) -> list[str]:
    """Zero-padded names 00000, 00001, ... (at least 5 digits), sorting in drawing order."""
    width = max(5, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def open_ensemble(ensemble_dir: Path, device: str) -> tuple[PixelEnsemble, dict, ADMBackbone]:
    """The ensemble, its manifest and its backbone, refused unless that backbone is a diffusion model."""
    manifest_path = Path(ensemble_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ProbeError(f"{manifest_path} not found: pass --ensemble with the ensemble/ folder that probe segment "
                         "wrote (run probe segment first)")
    kind = PixelEnsemble.load(ensemble_dir)[1].get("backbone", {}).get("kind")
    if not is_guided_diffusion(kind):
        raise ProbeError(f"the ensemble {ensemble_dir} was trained on {kind} features, which hold no diffusion model "
                         "to sample from: train it with probe segment --backbone ddpm")
    return load_predictor(Path(ensemble_dir), device)


@functools.lru_cache(maxsize=2)
def _predictor(ensemble_dir: str, device: str) -> tuple[PixelEnsemble, dict, ADMBackbone]:
    """`open_ensemble`, once per process (a worker's chunks share the networks)."""
    return open_ensemble(Path(ensemble_dir), device)


def sample(backbone: ADMBackbone, sampler: str, generators: list[torch.Generator], device: str) -> torch.Tensor:
    """One batch of images in [-1, 1] from the backbone's UNet, one per generator."""
    unet, diffusion = backbone.model.unet, backbone.diffusion
    shape = (3, backbone.image_size, backbone.image_size)
    count = ddim_steps(sampler)
    if count is None:
        return diffusion.ddpm_sample(unet, generators, shape, device)
    return diffusion.ddim_sample(unet, per_image_noise(generators, shape, device), count)


def synthesize_chunk(spec: dict, threads: int) -> dict:
    """One runner cell: images start .. start + count - 1 sampled, saved as PNGs, labelled through the store and
    written to `out`/train (label map first, then the image, each atomically). Returns their uncertainties and
    the seconds spent sampling and labelling."""
    ensemble, manifest, backbone = _predictor(spec["ensemble"], spec["device"])
    indices = range(spec["start"], spec["start"] + spec["count"])
    stems = image_stems(spec["n"])[spec["start"]:spec["start"] + spec["count"]]
    started = time.perf_counter()
    pixels = to_uint8(sample(backbone, spec["sampler"], [image_generator(spec["seed"], i) for i in indices],
                             spec["device"]))
    sampled = time.perf_counter()
    train = Path(spec["out"]) / "train"
    uncertainties = []
    # the chunk's activations are deleted with it: none stays in the cache (a Ctrl-C names none)
    with tempfile.TemporaryDirectory(prefix="probe-synthesize-") as scratch:
        scratch = Path(scratch)
        paths = [scratch / f"{stem}.png" for stem in stems]
        for path, picture in zip(paths, pixels):
            Image.fromarray(picture).save(path)
        images = load_images(paths, manifest["resolution"])
        store = ActivationStore(backbone, scratch / "activations")
        store.fill(images, progress=False)
        for path, image in zip(paths, images):
            sampler = PixelSampler.from_store(store, [image], manifest["feature_names"], manifest["resolution"])
            labels, uncertainty = predict_image(ensemble, sampler)
            atomic_write(train / f"{image.stem}.npy", lambda p, a=labels.astype(np.uint8): np.save(p, a))
            atomic_write(train / path.name, lambda p, source=path: shutil.copyfile(source, p))
            uncertainties.append(uncertainty)
    return {"images": stems, "uncertainty": uncertainties, "sampling_seconds": sampled - started,
            "labelling_seconds": time.perf_counter() - sampled}


def chunk_cells(ensemble_dir: Path, options: SynthesizeOptions, out: Path) -> list[SweepCell]:
    """The chunks of the run as runner cells (the seed is the cell's)."""
    return [SweepCell({"ensemble": str(Path(ensemble_dir).resolve()), "out": str(Path(out).resolve()),
                  "sampler": options.sampler, "n": options.n, "start": start,
                  "count": min(options.chunk_size, options.n - start), "device": options.device}, options.seed,
                 title=f"images {start}-{min(start + options.chunk_size, options.n) - 1}")
            for start in range(0, options.n, options.chunk_size)]


def _check_resumable(out: Path, settings: dict) -> None:
    """Refuse to continue a run of other settings in `out` (its images would mix with these)."""
    path = out / SETTINGS
    if not path.is_file():
        return
    previous = json.loads(path.read_text()).get("settings", {})
    changed = [key for key in settings if previous.get(key) != settings[key]]
    if changed:
        key = changed[0]
        raise ProbeError(f"--out {out} holds a synthesize run with {key} {previous.get(key)!r}, not "
                         f"{settings[key]!r}: rerun with its options to resume it, or choose another --out")


def synthesize_plan(backbone: ADMBackbone, options: SynthesizeOptions, cells: list[SweepCell], todo: list[SweepCell]):
    """The run's plan (probe.sweeps.plan): UNet passes to sample (every step of the schedule, or K) and to label (the
    ensemble's steps) the images still to draw; nothing goes to the cache, a chunk's activations to a temporary
    folder (in the system's temporary folder) deleted with it."""
    from probe.sweeps.plan import Plan, cell_shapes, free_space, npy_bytes

    images = sum(cell.config["count"] for cell in todo)
    sampling = ddim_steps(options.sampler) or backbone.diffusion.num_steps
    shapes = cell_shapes(backbone)
    scratch = Path(tempfile.gettempdir())
    return Plan("synthesize", len(cells), len(todo), images=options.n,
                passes=images * (sampling + len(backbone.steps)), image_steps=images * len(backbone.steps),
                steps=len(backbone.steps), diffusion=True,
                temporary_bytes=min(options.chunk_size, options.n) * sum(npy_bytes(s) for s in shapes.values()),
                cache_dir=scratch, free_bytes=free_space(scratch), temporary_what="a chunk's activations",
                temporary_when="deleted with it")


def run_synthesize(ensemble_dir: Path, options: SynthesizeOptions, out: Path, *, ray: str | None = None,
                   threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
                   dry_run: bool = False) -> pd.DataFrame:
    """Draw, label and write the dataset into the run folder `out` (resuming a run of the same settings there);
    returns the table of uncertainty.csv (image, uncertainty, kept). The plan is printed first (`dry_run`: only the
    plan, then probe.errors.DryRun, before `out` is created)."""
    from probe.sweeps.plan import announce

    options.check()
    out = Path(out).expanduser()
    check_out(out, inputs=[ensemble_dir], command="synthesize")
    _, manifest, backbone = open_ensemble(Path(ensemble_dir), options.device)
    settings = {**options.settings(), "ensemble": str(Path(ensemble_dir).resolve()), "identity": manifest["identity"]}
    if out.is_dir():
        _check_resumable(out, settings)
    cells = chunk_cells(ensemble_dir, options, out)
    todo = [cell for cell in cells if not (out / "cells" / f"{cell.key}.json").is_file()]
    announce(synthesize_plan(backbone, options, cells, todo), dry_run, show=progress)
    working_dir(out, command="synthesize", inputs=[ensemble_dir])
    if not (out / SETTINGS).is_file():
        write_json(out / SETTINGS, {"settings": settings})
    recorded = {("ensemble identity" if key == "identity" else f"--{key.replace('_', '-')}"): value
                for key, value in settings.items()}
    records = run_sweep(cells, synthesize_chunk, out, command="synthesize",
                        ray=ray, threads=threads, gpus_per_cell=gpus_per_cell, progress=progress, options=recorded)
    return finish(out, records, options, manifest, settings)


def finish(out: Path, records: list[dict], options: SynthesizeOptions, manifest: dict, settings: dict) -> pd.DataFrame:
    """After the last chunk: the most uncertain `drop_uncertain` share to dropped/ (the rest, or all again, to
    train/), uncertainty.csv, classes.txt, palette.json, preview.png and the timings in synthesize.json."""
    stems = [stem for record in records for stem in record["result"]["images"]]
    uncertainty = np.array([u for record in records for u in record["result"]["uncertainty"]])
    dropped = np.zeros(len(stems), dtype=bool)
    dropped[np.argsort(-uncertainty, kind="stable")[:math.floor(options.drop_uncertain * len(stems))]] = True
    for stem, leave_out in zip(stems, dropped):
        target, other = ("dropped", "train") if leave_out else ("train", "dropped")
        (out / target).mkdir(exist_ok=True)
        for suffix in ((".png", ".npy") if leave_out else (".npy", ".png")):  # train/ never holds an image alone
            if (out / other / f"{stem}{suffix}").exists():
                os.replace(out / other / f"{stem}{suffix}", out / target / f"{stem}{suffix}")
    table = pd.DataFrame({"image": stems, "uncertainty": uncertainty, "kept": ~dropped})
    atomic_write(out / "uncertainty.csv", lambda p: table.to_csv(p, index=False))
    atomic_write(out / CLASSES_FILE, lambda p: p.write_text("\n".join(manifest["class_names"]) + "\n"))
    atomic_write(out / "palette.json", lambda p: p.write_text(json.dumps(manifest["palette"]) + "\n"))
    order = np.argsort(uncertainty, kind="stable")
    count = min(PREVIEW_IMAGES, len(stems))
    groups = {}
    for title, picked in (("most certain", order[:count]), ("least certain", order[::-1][:count])):
        folders = ["dropped" if dropped[i] else "train" for i in picked]
        groups[title] = [(np.asarray(Image.open(out / f / f"{stems[i]}.png").convert("RGB")),
                          np.load(out / f / f"{stems[i]}.npy").astype(np.int64),
                          f"{stems[i]}  {uncertainty[i]:.3f}" + ("  dropped" if dropped[i] else ""))
                         for i, f in zip(picked, folders)]
    plots.synthesis_preview(groups, manifest["class_names"], np.asarray(manifest["palette"], dtype=np.uint8),
                            out / "preview.png", manifest["ignore_label"])
    seconds = {key: float(sum(r["result"][f"{key}_seconds"] for r in records)) for key in ("sampling", "labelling")}
    write_json(out / SETTINGS, {"settings": settings, "drop_uncertain": options.drop_uncertain,
                                "images": len(stems), "kept": int((~dropped).sum()), "dropped": int(dropped.sum()),
                                "seconds": seconds, "threads": sorted({r["threads"] for r in records}),
                                "class_names": manifest["class_names"], "ignore_label": manifest["ignore_label"]})
    finish_sweep(out, ["train", "dropped", "uncertainty.csv", CLASSES_FILE, "palette.json", "preview.png", SETTINGS])
    return table
