"""`probe features`: a backbone's feature maps exported per image, at native resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probe.backbones import Backbone
from probe.errors import ProbeError
from probe.utils.outputs import output_dir
from probe.utils.progress import progress_bar


def export_features(backbone: Backbone, images: list, out: Path, dtype: str = "float32", batch_size: int = 4,
                    progress: bool = True, overwrite: bool = False, inputs: list = ()) -> list[Path]:
    """Write `out/<stem>.npz` per image with one (C, h, w) array per cell, named by the cell (`t{t}_block{b}` for
    diffusion UNets, `block{b}` for MAE, `layer{L}.{j}` for SwAV): the documented export format. Returns the
    written paths. `inputs`: the files read (never inside `out`)."""
    if dtype not in ("float32", "float16"):
        raise ProbeError(f"--dtype {dtype!r}: use float32 or float16")
    written = []
    with output_dir(out, command="features", overwrite=overwrite, inputs=inputs) as tmp, progress_bar(progress) as bar:
        task = bar.add_task("extracting features", total=len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            acts = {name: a for step in backbone.steps
                    for name, a in backbone.batch_features([im.image for im in chunk], [im.stem for im in chunk], step,
                                                           batch_size).items()}
            for j, image in enumerate(chunk):
                np.savez(tmp / f"{image.stem}.npz", **{name: acts[name][j].numpy().astype(dtype) for name in backbone.names})
                written.append(Path(out) / f"{image.stem}.npz")
            bar.advance(task, len(chunk))
    return written
