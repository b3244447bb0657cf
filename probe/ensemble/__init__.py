"""The DatasetGAN pixel-classifier ensemble used by Baranchuk et al. (fit / predict / uncertainty), in parts:

- settings.py: what a command checks before anything loads (precisions, the training rule's batch sizes); no torch;
- estimator.py: PixelEnsemble, the estimator (settings, fit, predict, score, save, load);
- validation.py: the checks a fit makes before any work;
- model.py: one member (Linear-ReLU-BatchNorm-Linear-ReLU-BatchNorm-Linear), all members stacked as one network,
  their seeded initialisation and the precision of the first layer's products;
- pixels.py: where training pixels come from (TrainingPixels, ArrayPixels);
- training.py: the authors' rule (Adam on batches of pixels, per-member early stopping) and its two strategies,
  members one after another with torch's own modules (the reference) or all at once as one stacked network, each
  returning a record of what the fit did;
- step.py: the stacked network's training step (forward, backward, Adam) written out for torch.compile;
- voting.py: majority vote, Jensen-Shannon divergence, an image's uncertainty.

The names below load their module on first use, so `from probe.ensemble import EARLY_BATCH_SIZE` imports no torch.
"""

from __future__ import annotations

from probe.utils.lazy import lazy_names

_HOMES = {"BATCH_SIZE": "settings", "EARLY_BATCH_SIZE": "settings", "PRECISIONS": "settings",
          "check_precision": "settings", "training_rule": "settings",
          "PixelEnsemble": "estimator",
          "StackedBatchNorm": "model", "StackedLinear": "model", "StackedMLP": "model", "hidden_sizes": "model",
          "member_generators": "model", "new_member": "model", "resolve_precision": "model",
          "ArrayPixels": "pixels", "TrainingPixels": "pixels",
          "COMPILE_FROM_STEPS": "training", "GATHER_PIXELS": "training", "EarlyStopping": "training",
          "StackedStep": "step",
          "jensen_shannon": "voting", "majority_vote": "voting"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
