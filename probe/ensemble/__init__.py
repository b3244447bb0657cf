"""The DatasetGAN pixel-classifier ensemble used by Baranchuk et al. (fit / predict / uncertainty), in parts:

- estimator.py: PixelEnsemble, the estimator (settings, fit, predict, score, save, load);
- validation.py: the checks a fit makes before any work;
- model.py: one member (Linear-ReLU-BatchNorm-Linear-ReLU-BatchNorm-Linear), all members stacked as one network,
  their seeded initialisation and the precision of the first layer's products;
- sources.py: where training pixels come from (PixelSource, ArrayPixelSource);
- training.py: the authors' rule (Adam on batches of pixels, per-member early stopping) and its two strategies,
  members one after another with torch's own modules (the reference) or all at once as one stacked network;
- step.py: the stacked network's training step (forward, backward, Adam) written out for torch.compile;
- voting.py: majority vote, Jensen-Shannon divergence, an image's uncertainty;
- persistence.py: a fitted ensemble's folder (weights.pt, manifest.json).
"""

from probe.ensemble.estimator import PixelEnsemble
from probe.ensemble.model import (
    PRECISIONS,
    StackedBatchNorm,
    StackedLinear,
    StackedMLP,
    hidden_sizes,
    member_generators,
    new_member,
    resolve_precision,
)
from probe.ensemble.sources import ArrayPixelSource, PixelSource
from probe.ensemble.step import StackedStep
from probe.ensemble.training import BATCH_SIZE, COMPILE_FROM_STEPS, EARLY_BATCH_SIZE, GATHER_PIXELS, EarlyStopping
from probe.ensemble.voting import jensen_shannon, majority_vote

__all__ = [
    "ArrayPixelSource", "BATCH_SIZE", "COMPILE_FROM_STEPS", "EARLY_BATCH_SIZE", "EarlyStopping", "GATHER_PIXELS",
    "PRECISIONS", "PixelEnsemble", "PixelSource", "StackedBatchNorm", "StackedLinear", "StackedMLP", "StackedStep",
    "hidden_sizes", "jensen_shannon", "majority_vote", "member_generators", "new_member", "resolve_precision",
]
