"""A fitted ensemble on disk: folder/weights.pt (plain tensors) and folder/manifest.json (the ensemble's
configuration under "ensemble", beside the caller's entries), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from probe.ensemble.model import StackedMLP, hidden_sizes
from probe.errors import ProbeError
from probe.outputs import atomic_write

if TYPE_CHECKING:
    from probe.ensemble.estimator import PixelEnsemble

TRAINING_PARAMETERS = ("batch_size", "lr", "patience", "check_after_epoch", "max_epochs", "batched", "seed",
                       "precision", "early_batch_size")  # the constructor's arguments a manifest records


def save(ensemble: PixelEnsemble, folder: Path, manifest: dict) -> None:
    """Write a fitted `ensemble` to `folder` with the caller's `manifest` entries ("ensemble" is reserved)."""
    if "ensemble" in manifest:
        raise ProbeError('the manifest key "ensemble" is reserved: rename that entry')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        **manifest,
        "ensemble": {
            "num_classes": ensemble.num_classes,
            "members": ensemble.members,
            "dim": ensemble.dim_,
            "hidden": list(hidden_sizes(ensemble.num_classes)),
            "training": {key: getattr(ensemble, key) for key in TRAINING_PARAMETERS},
            "early_batch_size_used": ensemble.early_batch_size_,
            "compiled": ensemble.compiled_,
            "iterations": ensemble.iterations_.tolist(),
            "epochs": ensemble.epochs_.tolist(),
            "last_loss": ensemble.last_loss_.tolist(),
        },
    }
    state = {key: value.detach().cpu().clone() for key, value in ensemble.model_.state_dict().items()}
    atomic_write(folder / "weights.pt", lambda path: torch.save(state, path))
    atomic_write(folder / "manifest.json", lambda path: path.write_text(json.dumps(record, indent=2)))


def load(cls: type[PixelEnsemble], folder: Path, device: str = "cpu") -> tuple[PixelEnsemble, dict]:
    """Read an ensemble written by `save` as an instance of `cls`; returns it (ready to predict) and the caller's
    manifest."""
    folder = Path(folder)
    manifest_path, weights_path = folder / "manifest.json", folder / "weights.pt"
    try:
        manifest = json.loads(manifest_path.read_text())
        config = manifest.pop("ensemble")
        ensemble = cls(config["num_classes"], config["members"], **config["training"], device=device)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ProbeError(f"{manifest_path}: missing or not a saved ensemble ({error}); run the training again") from None
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
        model = StackedMLP(ensemble.members, config["dim"], ensemble.num_classes, ensemble.precision).to(device)
        model.load_state_dict(state)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise ProbeError(f"{weights_path}: missing or damaged ({error}); run the training again") from None
    ensemble.model_ = model.eval()
    ensemble.dim_ = config["dim"]
    ensemble.iterations_ = np.asarray(config["iterations"], dtype=np.int64)
    ensemble.epochs_ = np.asarray(config["epochs"], dtype=np.int64)
    ensemble.last_loss_ = np.asarray(config["last_loss"], dtype=np.float64)
    ensemble.early_batch_size_ = config.get("early_batch_size_used")
    ensemble.compiled_ = config.get("compiled", False)
    return ensemble, manifest
