"""Per-cell probing (the paper's Fig. 2 and 3): an MLP probe per (layer, diffusion step) of a backbone (one column
for backbones without steps), scored by mIoU over all, small and large classes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe import plots
from probe.backbones import BackboneSpec, build_backbone
from probe.data.layout import LabeledImage
from probe.errors import ProbeError
from probe.outputs import output_dir, write_json
from probe.progress import progress_bar
from probe.segment import SPLIT_NUMBER, fit_and_predict
from probe.sources import Source
from probe.store import ActivationStore

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
    backbone: BackboneSpec = field(default_factory=BackboneSpec)  # its seed is replaced by the run's seed
    train_number: int | None = None  # None: up to SPLIT_NUMBER
    test_number: int | None = None
    members: int = 1
    size_threshold: float | None = None


def run_grid(source: Source, options: GridOptions, seed: int, out: Path, cache: Path | None = None,
             progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Fit one probe per (layer, step), step by step through the store; write tables and figures to `out`."""
    started = time.time()
    backbone = build_backbone(replace(options.backbone, seed=seed), "grid", source.native_size)
    device = options.backbone.device
    train = source.split("train", backbone.image_size, options.train_number, SPLIT_NUMBER)
    test = source.split("test", backbone.image_size, options.test_number, SPLIT_NUMBER)
    areas = class_areas(train + test, source.num_classes, source.ignore_label)
    groups, cut = size_groups(areas, options.size_threshold)
    store = ActivationStore(backbone, cache)
    rows = []
    with output_dir(out, command="grid", overwrite=overwrite, inputs=[*source.inputs, cache]) as tmp:
        with progress_bar(progress) as bar:
            task = bar.add_task("probing layer x step", total=len(backbone.cells))
            for t in backbone.steps:
                store.fill(train + test, progress=False, steps=[t])
                for layer in backbone.layers:
                    name = backbone.cell_name(layer, t)
                    fitted = fit_and_predict(store, [name], train, test, source.num_classes, source.ignore_label,
                                             options.members, seed, device=device, progress=False)
                    for c, iou in zip(fitted.score.class_ids, fitted.score.iou):
                        rows.append({"layer": layer, "layer_index": backbone.layer_index(layer), "step": t,
                                     "class": source.class_names[c], "group": groups[c], "iou": 100 * iou})
                    bar.update(task, advance=1, description=f"probing {name}")
        per_class = pd.DataFrame(rows).astype({"step": "Int64"})
        keys = ["layer_index", "layer", "step"]
        table = pd.concat([
            per_class.groupby(keys, as_index=False, dropna=False)["iou"].mean().assign(group="all"),
            per_class.groupby([*keys, "group"], as_index=False, dropna=False)["iou"].mean(),
        ]).rename(columns={"iou": "miou"})[["layer", "layer_index", "step", "group", "miou"]]
        per_class.to_csv(tmp / "grid_per_class.csv", index=False)
        table.to_csv(tmp / "grid.csv", index=False)
        pd.DataFrame([{"class": source.class_names[c], "label": c, "mean_area": areas[c], "group": g}
                      for c, g in groups.items()]).to_csv(tmp / "class_groups.csv", index=False)
        vmin, vmax = table["miou"].min(), table["miou"].max()
        for group in ("all", "small", "large"):
            plots.grid_heatmap(table, tmp / f"grid_{group}.png", group=group, layer_title=backbone.layer_title,
                               title=f"mIoU of a probe per {backbone.layer_title} and step: {group} classes",
                               vmin=vmin, vmax=vmax)
        plots.grid_lines(table, tmp / "grid_lines.png", group="all", layer_title=backbone.layer_title)
        best = table[table.group == "all"].sort_values("miou").iloc[-1]
        write_json(tmp / "grid.json", {
            "dataset": source.name, "seed": seed, "options": {**asdict(options), "backbone": options.backbone.to_dict()},
            "layers": backbone.layers, "steps": backbone.steps, "size_threshold": cut, "features": backbone.identity,
            "best": {"layer": best.layer, "step": None if pd.isna(best.step) else int(best.step),
                     "miou": float(best.miou)},
            "seconds": round(time.time() - started, 1),
            "train_images": [im.stem for im in train], "test_images": [im.stem for im in test],
        })
    return table
