"""`probe robustness` (the paper's Fig. 6): the ensemble trained on clean images, scored on the test images
corrupted by the ImageNet-C corruptions at severities 1-5; the mIoU drop relative to clean per severity, averaged
over corruptions, per backbone.

A cell is one (backbone, seed): ONE ensemble fit on the clean train images (exactly `probe segment`'s), scored on
the clean test images and on every (corruption, severity) version of them. The corrupted images keep their stems
(the store keys images by a hash of their pixels, so each version gets its own activations) and are corrupted with
a seed of (run seed, stem, corruption, severity), so a sweep gives the same numbers in-process and on Ray. Their
activations live in a temporary store deleted as each version is scored (`robustness_work`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.corruptions import corrupt, corruption_seed
from probe.data.layout import LabeledImage, find_split_dir, list_images, scaled_pixels
from probe.data.sources import backbone_spec, to_uint8_image
from probe.ensemble import EARLY_BATCH_SIZE, PixelEnsemble
from probe.errors import ProbeError, counting_files
from probe.experiments.cells import evaluate_cell, mean_std_table, segment_config, segment_extractions
from probe.features.sampler import PixelSampler
from probe.features.store import ActivationStore
from probe.metrics import SegmentationScore
from probe.sweeps.data import SweepData
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep
from probe.tasks.segment import predict_image
from probe.utils.cache import activations_root
from probe.utils.outputs import atomic_write, staging_folder


def corrupted_images(images: list[LabeledImage], name: str, severity: int, seed: int) -> list[LabeledImage]:
    """`images` corrupted by `name` at `severity` (each with its own seed from `seed`, its stem, the corruption and
    the severity), as model inputs scaled as a loaded image is; stems and label maps kept."""
    versions = []
    for image in images:
        pixels = corrupt(to_uint8_image(image), name, severity, corruption_seed(seed, image.stem, name, severity))
        versions.append(replace(image, image=scaled_pixels(Image.fromarray(pixels), image.image.shape[-1]),
                                picture=None))
    return versions


def score_images(ensemble: PixelEnsemble, store: ActivationStore, names: list[str], images: list[LabeledImage],
                 num_classes: int, ignore_label: int) -> SegmentationScore:
    """The fitted `ensemble` scored on `images` (their activations already in `store`), image by image as
    segment.fit_and_predict scores the test images."""
    score = SegmentationScore(num_classes, ignore_label)
    for image in images:
        prediction, _ = predict_image(ensemble, PixelSampler.from_store(store, [image], names), size=image.size)
        score.update(prediction, image.labels)
    return score


def robustness_work(spec: dict, threads: int) -> dict:
    """One cell: fit on the clean train images and score on the clean test images as `probe segment` does, then
    score the same ensemble on every (corruption, severity) version of the test images. mIoU in %, and what the cell
    extracted (run_sweep's `extraction`: the corrupted versions' extractions count, their files do not).

    The clean images' activations go to the cache; each corrupted version's go to a temporary store, deleted as soon
    as that version is scored, so the sweep holds one version's activations at a time and leaves none in the cache.
    The store is a staging folder in the cache's activations folder (`.corrupted.partial-{host}-{pid}-…`): one that
    a killed run left is deleted by the next run here and by `probe cache clear`."""
    evaluation, source, cache = evaluate_cell(spec)
    clean = evaluation.extraction
    corrupted, temporary = [], []
    scratch = staging_folder(Path(cache or activations_root()) / "corrupted")
    try:
        with counting_files(lambda: clean.files):  # the corrupted copies' files are temporary: none stays in the cache
            for name in spec["corruptions"]:
                for severity in spec["severities"]:
                    images = corrupted_images(evaluation.test, name, severity, spec["seed"])
                    store = ActivationStore(evaluation.backbone, scratch)
                    try:
                        temporary.append(store.fill(images, progress=False))
                        score = score_images(evaluation.fitted.ensemble, store, evaluation.backbone.names, images,
                                             source.num_classes, source.ignore_label)
                    finally:
                        shutil.rmtree(store.root, ignore_errors=True)
                    corrupted.append({"corruption": name, "severity": severity, "miou": 100 * score.miou})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics = evaluation.metrics
    extraction = replace(clean, image_steps=clean.image_steps + sum(e.image_steps for e in temporary),
                         seconds=clean.seconds + sum(e.seconds for e in temporary))
    return {"clean": metrics["miou"], "corrupted": corrupted, "train_images": metrics["train_images"],
            "test_images": metrics["test_images"], "extraction": asdict(extraction)}


def robustness_cells(data: SweepData, specs: list[BackboneSpec], corruptions: list[str], severities: list[int],
                     seeds: list[int], *, train_number: int | None = None, test_number: int | None = None,
                     members: int = 10, early_batch_size: int = EARLY_BATCH_SIZE) -> list[SweepCell]:
    """One cell per (backbone, seed). Every backbone is built first and the image counts and the corruptions'
    image size are checked, so a bad option fails before the sweep starts."""
    if not corruptions or not severities or not seeds:
        raise ProbeError("--corruptions, --severities and --seeds need at least one value each")
    source = data.source()
    for split, number in (("train", train_number), ("test", test_number)):
        available = len(list_images(find_split_dir(source.root, split)))
        if number is not None and not 1 <= number <= available:
            raise ProbeError(f"--{split}-number {number}: the {split} split holds {available} images; "
                             f"give a number in 1..{available}")
    for spec in specs:
        size = build_backbone(backbone_spec(source, spec), "segment", source.native_size).image_size
        corrupt(np.zeros((size, size, 3), dtype=np.uint8), corruptions[0], severities[0], 0)  # too small: an error
    severities = sorted(severities)
    return [SweepCell({**segment_config(data, spec, train_number=train_number, test_number=test_number, members=members,
                                   early_batch_size=early_batch_size),
                  "corruptions": list(corruptions), "severities": severities}, seed,
                 title=f"{spec.kind}, {len(corruptions)} corruptions x {len(severities)} severities")
            for spec in specs for seed in seeds]


def robustness_table(records: list[dict]) -> pd.DataFrame:
    """The tidy table of the cell records: one row per (backbone, seed, corruption, severity)."""
    return pd.DataFrame([{"backbone": r["config"]["backbone"]["kind"], "seed": r["config"]["seed"],
                          "corruption": row["corruption"], "severity": row["severity"], "miou": row["miou"],
                          "clean_miou": r["result"]["clean"], "drop": r["result"]["clean"] - row["miou"],
                          "threads": r["threads"]}
                         for r in records for row in r["result"]["corrupted"]])


def drop_markdown(table: pd.DataFrame) -> str:
    """table.md: the mIoU drop per backbone x severity (each seed's mean over the corruptions, then mean ± std over
    seeds), and the clean mIoU per backbone."""
    per_seed = table.groupby(["backbone", "seed", "severity"], sort=False)["drop"].mean().reset_index()
    per_seed = per_seed.sort_values("severity", kind="stable")
    clean = table.drop_duplicates(["backbone", "seed"]).assign(metric="clean mIoU, %")
    corruptions = list(dict.fromkeys(table["corruption"]))
    seeds = sorted(table["seed"].unique())
    return (f"mIoU drop (clean minus corrupted, points), averaged over {len(corruptions)} corruptions "
            f"({', '.join(corruptions)}); mean ± std over seeds {', '.join(map(str, seeds))}\n\n"
            + mean_std_table(per_seed, "backbone", "severity", value="drop")
            + "\n" + mean_std_table(clean, "backbone", "metric", value="clean_miou"))


def run_robustness(data: SweepData, specs: list[BackboneSpec], corruptions: list[str], severities: list[int],
                   seeds: list[int], out: Path, *, train_number: int | None = None, test_number: int | None = None,
                   members: int = 10, early_batch_size: int = EARLY_BATCH_SIZE, ray: str | None = None,
                   threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
                   sweep_options: dict | None = None, dry_run: bool = False,
                   downloads: Sequence[str] = ()) -> pd.DataFrame:
    """Run (or resume) the sweep in `out`; write robustness.csv (tidy), table.md and robustness.png.
    `sweep_options`: the command's result-determining options, which a rerun must repeat (`run_sweep`);
    `downloads`: what the command downloaded first, named on the plan."""
    cells = robustness_cells(data, specs, corruptions, severities, seeds, train_number=train_number,
                             test_number=test_number, members=members, early_batch_size=early_batch_size)
    records = run_sweep(cells, robustness_work, out, command="robustness", ray=ray, threads=threads,
                        gpus_per_cell=gpus_per_cell, progress=progress, options=sweep_options, dry_run=dry_run,
                        downloads=downloads, extractions=lambda todo: segment_extractions(todo, corrupted=True))
    table = robustness_table(records)
    atomic_write(out / "robustness.csv", lambda p: table.to_csv(p, index=False))
    markdown = drop_markdown(table)
    atomic_write(out / "table.md", lambda p: p.write_text(markdown))
    plots.robustness_lines(table, out / "robustness.png")
    finish_sweep(out, ["robustness.csv", "table.md", "robustness.png"])
    return table
