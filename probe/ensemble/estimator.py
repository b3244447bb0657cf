"""PixelEnsemble, the estimator: its settings, fit (validation.py, then a strategy of training.py), predict and
score (voting.py), save and load (a folder of weights.pt and manifest.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from probe.ensemble.model import StackedMLP, hidden_sizes, member_generators, new_member, resolve_precision
from probe.ensemble.pixels import TrainingPixels
from probe.ensemble.settings import BATCH_SIZE
from probe.ensemble.training import TrainingSettings, fit_batched, fit_sequential
from probe.ensemble.validation import check_fit
from probe.ensemble.voting import image_uncertainty, vote
from probe.errors import ProbeError
from probe.metrics import SegmentationScore
from probe.utils.outputs import atomic_write
from probe.utils.progress import progress_console

TRAINING_PARAMETERS = ("batch_size", "lr", "patience", "check_after_epoch", "max_epochs", "batched", "seed",
                       "precision", "early_batch_size")  # the constructor's arguments a manifest records


def member_first(value: torch.Tensor, shape: torch.Size | None) -> torch.Tensor:
    """A saved Linear weight in StackedLinear's (M, in, out) layout: files written before 2026-12-06 hold it as
    (in, M, out)."""
    if value.ndim == 3 and shape is not None and value.shape != shape and value.movedim(1, 0).shape == shape:
        return value.movedim(1, 0)
    return value


class PixelEnsemble:
    """Ensemble of pixel-classifier MLPs: majority-vote labels and Jensen-Shannon uncertainty.

    Example:
        ensemble = PixelEnsemble(num_classes=21).fit(ArrayPixels(features, labels))
        labels, js = ensemble.predict(test_features)
    """

    def __init__(
        self,
        num_classes: int,
        members: int = 10,
        batch_size: int = BATCH_SIZE,
        lr: float = 1e-3,
        patience: int = 50,
        check_after_epoch: int = 3,
        max_epochs: int = 100,
        batched: bool = True,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
        precision: str = "float32",
        early_batch_size: int | None = None,
        compile: bool | None = None,
    ) -> None:
        """`batched`: train all members at once as one stacked network (training.fit_batched), else one after
        another with torch's own modules (training.fit_sequential, the reference); the same algorithm.
        `precision`: the stacked network's first-layer products, "float32", "bfloat16" or "auto" (model.py).
        `compile`: run the batched ensemble's step (step.py) and the training pixels' gather through torch.compile
        for the unchecked epochs' batches, which changes how they run, not what they compute; None: when the unchecked
        epochs take at least training.COMPILE_FROM_STEPS steps.
        `early_batch_size`: pixels per step in the epochs before early stopping checks losses (epochs
        0..check_after_epoch), with Adam's learning rate scaled by early_batch_size / batch_size; the checked epochs
        keep `batch_size` and `lr`. None or `batch_size`: `batch_size` throughout (the authors' rule), which is also
        what a training set of fewer pixels than one early batch gets."""
        self.num_classes = num_classes
        self.members = members
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.check_after_epoch = check_after_epoch
        self.max_epochs = max_epochs
        self.batched = batched
        self.seed = seed
        self.device = device
        self.progress = progress
        self.precision = resolve_precision(precision, device, batched)
        self.early_batch_size = early_batch_size
        self.compile = compile

    def fit(self, pixels: TrainingPixels) -> PixelEnsemble:
        """Train every member on `pixels`; sets model_, dim_, iterations_, epochs_, last_loss_ (per member: Adam
        steps, epochs begun, last batch loss), early_batch_size_ (the early batch used: None where the authors' rule
        was) and compiled_ (whether the step ran compiled)."""
        labels = pixels.labels
        check_fit(self.num_classes, self.members, self.batch_size, self.early_batch_size, labels)
        mlps = [new_member(pixels.dim, self.num_classes, member_generators(self.seed, m)[0]).to(self.device)
                for m in range(self.members)]
        early = self.early_batch_size
        early = early if early not in (None, self.batch_size) and early <= len(labels) else None
        settings = TrainingSettings(self.batch_size, early, self.lr, self.patience, self.check_after_epoch,
                                    self.max_epochs, self.seed, self.device)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        console = progress_console() if self.progress else Console(stderr=True)
        with Progress(*columns, disable=not self.progress, console=console) as progress:
            if self.batched:
                model = StackedMLP.from_members(mlps, self.precision)
                record = fit_batched(settings, pixels, model, self.compile, progress)
            else:
                record = fit_sequential(settings, pixels, mlps, progress)
                model = StackedMLP.from_members(mlps)
        self.model_, self.dim_, self.early_batch_size_ = model.eval(), pixels.dim, early
        self.iterations_, self.epochs_, self.last_loss_ = record.iterations, record.epochs, record.last_loss
        self.compiled_ = record.compiled
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ProbeError("this PixelEnsemble is not trained: call fit(pixels) or PixelEnsemble.load(folder)")

    def predict(self, features: np.ndarray | torch.Tensor, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features -> (labels (N,) int64 by majority vote, Jensen-Shannon divergence (N,) float32)."""
        self._check_fitted()
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.dim_:
            raise ProbeError(f"features {tuple(features.shape)} must be (N, {self.dim_}) as in training")
        self.model_.eval()
        return vote(lambda part: self.model_(part.to(self.device, torch.float32)), features.split(chunk),
                    self.num_classes)

    def first_layer(self, dim: int) -> tuple[torch.Tensor, torch.dtype]:
        """The first layer's weight as (dim, members * hidden) and the dtype its products run in, to compute its
        products elsewhere (e.g. PixelSampler.projected, at native resolution) and finish with predict_products."""
        self._check_fitted()
        if dim != self.dim_:
            raise ProbeError(f"features of dimension {dim} given, the ensemble was trained on {self.dim_}")
        first = self.model_[0]
        return first.shared_weight().detach(), first.products

    def predict_products(self, products: torch.Tensor, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """As `predict`, from the first layer's (N, members * hidden) float32 products of the features (its
        bias not yet added), computed elsewhere with the weight of `first_layer`."""
        self._check_fitted()
        self.model_.eval()
        return vote(lambda part: self.model_.after_first_products(part.to(self.device)), products.split(chunk),
                    self.num_classes)

    uncertainty = staticmethod(image_uncertainty)

    def score(self, features: np.ndarray | torch.Tensor, labels: np.ndarray, ignore_label: int) -> float:
        """mIoU (fraction) of the predictions for `features` against `labels` (authors' definition)."""
        scorer = SegmentationScore(self.num_classes, ignore_label)
        scorer.update(self.predict(features)[0], np.asarray(labels))
        return scorer.miou

    def save(self, folder: Path, manifest: dict) -> None:
        """Write folder/weights.pt (plain tensors) and folder/manifest.json (the ensemble's configuration
        under "ensemble", beside the caller's `manifest` entries), each atomically."""
        self._check_fitted()
        if "ensemble" in manifest:
            raise ProbeError('the manifest key "ensemble" is reserved: rename that entry')
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            **manifest,
            "ensemble": {
                "num_classes": self.num_classes,
                "members": self.members,
                "dim": self.dim_,
                "hidden": list(hidden_sizes(self.num_classes)),
                "training": {key: getattr(self, key) for key in TRAINING_PARAMETERS},
                "early_batch_size_used": self.early_batch_size_,
                "compiled": self.compiled_,
                "iterations": self.iterations_.tolist(),
                "epochs": self.epochs_.tolist(),
                "last_loss": self.last_loss_.tolist(),
            },
        }
        state = {key: value.detach().cpu().clone() for key, value in self.model_.state_dict().items()}
        atomic_write(folder / "weights.pt", lambda path: torch.save(state, path))
        atomic_write(folder / "manifest.json", lambda path: path.write_text(json.dumps(record, indent=2)))

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> tuple[PixelEnsemble, dict]:
        """Read an ensemble written by `save`; returns it (ready to predict) and the caller's manifest."""
        folder = Path(folder)
        manifest_path, weights_path = folder / "manifest.json", folder / "weights.pt"
        try:
            manifest = json.loads(manifest_path.read_text())
            config = manifest.pop("ensemble")
            ensemble = cls(config["num_classes"], config["members"], **config["training"], device=device)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ProbeError(f"{manifest_path}: missing or not a saved ensemble ({error}); run the training "
                             "again") from None
        try:
            state = torch.load(weights_path, map_location=device, weights_only=True)
            model = StackedMLP(ensemble.members, config["dim"], ensemble.num_classes, ensemble.precision).to(device)
            shapes = {key: value.shape for key, value in model.state_dict().items()}
            model.load_state_dict({key: member_first(value, shapes.get(key)) for key, value in state.items()})
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
