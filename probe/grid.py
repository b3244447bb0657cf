"""Per-(block, step) probing (the paper's Fig. 2 and 3): an MLP probe per decoder block and diffusion step,
scored by mIoU over all, small and large classes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probe import plots
from probe.data.layout import LabeledImage
from probe.errors import ProbeError
from probe.outputs import output_dir, write_json
from probe.progress import progress_bar
from probe.segment import SPLIT_NUMBER, fit_and_predict
from probe.sources import Source, make_backbone
from probe.store import ActivationStore

GRID_STEPS = (0, 50, 100, 200, 300, 400, 600, 800, 999)


def default_grid_steps(diffusion_steps: int) -> list[int]:
    """A spread over [0, T): 0, 50, 100, 200, 300, 400, 600, 800, 999 for T = 1000, scaled for other T."""
    return sorted({min(diffusion_steps - 1, round(t * diffusion_steps / 1000)) for t in GRID_STEPS})


def class_areas(images: list[LabeledImage], num_classes: int, ignore_label: int) -> np.ndarray:
    """Each class's mean area: the fraction of an image's pixels it covers, averaged over all annotated images
    (images where it is absent count as 0). The ignore label's entry is NaN."""
    fractions = np.stack([np.bincount(im.labels.ravel()[im.labels.ravel() != ignore_label], minlength=num_classes)[:num_classes]
                          / im.labels.size for im in images])
    areas = fractions.mean(axis=0)
    if 0 <= ignore_label < num_classes:
        areas[ignore_label] = np.nan
    return areas


def size_groups(areas: np.ndarray, threshold: float | None) -> tuple[dict[int, str], float]:
    """{class: 'small' | 'large'}: small when its mean area is below the threshold (default: the median area)."""
    scored = {c: a for c, a in enumerate(areas) if not np.isnan(a)}
    cut = float(np.median(list(scored.values()))) if threshold is None else threshold
    if not 0 < cut < 1:
        raise ProbeError(f"--size-threshold {cut}: give a fraction of the image between 0 and 1, e.g. 0.02")
    return {c: "small" if a < cut else "large" for c, a in scored.items()}, cut


@dataclass
class GridOptions:
    backbone: str = "ddpm"
    blocks: list[int] | None = None
    steps: list[int] | None = None
    train_number: int | None = None  # None: up to SPLIT_NUMBER
    test_number: int | None = None
    members: int = 1
    size_threshold: float | None = None
    noise: str = "shared"
    device: str = "cpu"


def run_grid(source: Source, options: GridOptions, seed: int, out: Path, cache: Path | None = None,
             progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Fit one probe per (block, step), step by step through the store; write tables and figures to `out`."""
    started = time.time()
    model_flags = source.load_model(options.device).flags
    blocks = options.blocks if options.blocks is not None else list(range(model_flags.decoder_blocks))
    steps = options.steps if options.steps is not None else default_grid_steps(model_flags.diffusion_steps)
    backbone = make_backbone(source, options.backbone, blocks, steps, seed, options.noise, device=options.device)
    train = source.split("train", model_flags.image_size, options.train_number, SPLIT_NUMBER)
    test = source.split("test", model_flags.image_size, options.test_number, SPLIT_NUMBER)
    areas = class_areas(train + test, source.num_classes, source.ignore_label)
    groups, cut = size_groups(areas, options.size_threshold)
    store = ActivationStore(backbone, cache)
    rows = []
    with output_dir(out, command="grid", overwrite=overwrite, inputs=[*source.inputs, cache]) as tmp:
        with progress_bar(progress) as bar:
            cells = [(t, b) for t in backbone.steps for b in backbone.blocks]
            task = bar.add_task("probing block x step", total=len(cells))
            for t in backbone.steps:
                store.fill(train + test, progress=False, steps=[t])
                for b in backbone.blocks:
                    fitted = fit_and_predict(store, [backbone.name(t, b)], train, test, source.num_classes,
                                             source.ignore_label, options.members, seed, device=options.device,
                                             progress=False)
                    for c, iou in zip(fitted.score.class_ids, fitted.score.iou):
                        rows.append({"block": b, "step": t, "class": source.class_names[c], "group": groups[c],
                                     "iou": 100 * iou})
                    bar.update(task, advance=1, description=f"probing block {b} at t={t}")
        per_class = pd.DataFrame(rows)
        table = pd.concat([
            per_class.groupby(["block", "step"], as_index=False)["iou"].mean().assign(group="all"),
            per_class.groupby(["block", "step", "group"], as_index=False)["iou"].mean(),
        ]).rename(columns={"iou": "miou"})[["block", "step", "group", "miou"]]
        per_class.to_csv(tmp / "grid_per_class.csv", index=False)
        table.to_csv(tmp / "grid.csv", index=False)
        pd.DataFrame([{"class": source.class_names[c], "label": c, "mean_area": areas[c], "group": g}
                      for c, g in groups.items()]).to_csv(tmp / "class_groups.csv", index=False)
        vmin, vmax = table["miou"].min(), table["miou"].max()
        for group in ("all", "small", "large"):
            plots.grid_heatmap(table, tmp / f"grid_{group}.png", group=group,
                               title=f"mIoU of a probe per block and step: {group} classes", vmin=vmin, vmax=vmax)
        plots.grid_lines(table, tmp / "grid_lines.png", group="all")
        best = table[table.group == "all"].sort_values("miou").iloc[-1]
        write_json(tmp / "grid.json", {
            "dataset": source.name, "seed": seed, "options": asdict(options), "blocks": backbone.blocks,
            "steps": backbone.steps, "size_threshold": cut, "features": backbone.identity,
            "best": {"block": int(best.block), "step": int(best.step), "miou": float(best.miou)},
            "seconds": round(time.time() - started, 1),
            "train_images": [im.stem for im in train], "test_images": [im.stem for im in test],
        })
    return table
