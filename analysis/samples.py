"""Training images of the default domain beside samples of the shipped DDPM, with the label palette."""

from pathlib import Path

import numpy as np
from PIL import Image

from probe import plots
from probe.backbones import default_model_files
from probe.data.default_domain import CLASSES, PALETTE, default_domain_dir
from probe.training.ddpm import sample_checkpoint

train = sorted((default_domain_dir() / "real" / "train").glob("*.png"))[:16]
images = [np.asarray(Image.open(p).convert("RGB")) for p in train]
labels = [np.load(p.with_suffix(".npy")) for p in train]
weights, flags = default_model_files()
samples = sample_checkpoint(weights, flags, n=16, seed=0, steps=50, out=Path("analysis/results/samples"), overwrite=True)
plots.samples_figure(images, list(samples), "figures/samples.png", class_names=CLASSES, palette=PALETTE,
                     label_maps=labels)
print("wrote figures/samples.png")
