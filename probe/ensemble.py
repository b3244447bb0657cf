"""The DatasetGAN pixel-classifier ensemble used by Baranchuk et al. (fit / predict / uncertainty).

Each member is Linear-ReLU-BatchNorm-Linear-ReLU-BatchNorm-Linear, trained with Adam on batches of
pixels under the authors' early-stopping rule (optionally with larger batches in the epochs that rule does not
check: `early_batch_size`). Members can be trained one after another with torch's
own modules (`batched=False`, the reference) or all at once as one stacked network (`batched=True`),
which is the same algorithm, gathers each batch of features once and is several times faster; its step (forward,
backward and Adam) is written out in ensemble_step.py so that torch.compile can fuse it. The stacked network can
multiply its first layer in bfloat16 (`precision`), keeping float32 weights and optimiser state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from probe.ensemble_step import StackedStep
from probe.errors import ProbeError
from probe.metrics import SegmentationScore
from probe.outputs import atomic_write
from probe.spec import AUTHORS_BATCH_SIZE, check_precision

INIT_STD = 0.02
BATCH_SIZE = AUTHORS_BATCH_SIZE  # the authors' pixels per step
EARLY_BATCH_SIZE = BATCH_SIZE  # the pipeline's default pixels per step in the epochs early stopping does not check:
# the authors' rule, everywhere (segment, sweeps, SegmentOptions). Early batches of 128 (--early-batch-size 128) are
# an opt-in that changes the algorithm: within the authors' seed spread over 3 seeds on the default and at the paper's
# shape, but about 0.4 mIoU points lower paired there, training 1.3-1.5x faster (analysis/training_rule.sh)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GATHER_PIXELS = 1024  # pixels (whole batches, at least one) fetched from the source in one call: 16 batches of 64.
# Larger calls are slower per pixel with the store's sampler (measured at the paper's shape: 13 us per pixel at 1024,
# 34 at 4096), so batches larger than 64 are fetched fewer at a time.
COMPILE_FROM_STEPS = 2_000  # fits whose unchecked epochs take this many steps compile theirs (by default): compiling
# takes 2-15 s (less once torch's cache holds the shape); the compiled step saves about 5 ms a step at the paper's shape


class PixelSource(Protocol):
    """Training pixels: labels in memory, features fetched on demand."""

    dim: int
    labels: np.ndarray

    def features(self, idx: np.ndarray) -> torch.Tensor:
        """(len(idx), dim) float32 features of the pixels `idx`."""
        ...

    def compile(self) -> None:
        """Fetch features through torch.compile from now on, where that is faster (a fit that compiles its step
        calls this)."""
        ...


class ArrayPixelSource:
    """A PixelSource over features already in memory."""

    def __init__(self, features: np.ndarray | torch.Tensor, labels: np.ndarray) -> None:
        self._features = torch.as_tensor(features)
        self.labels = np.asarray(labels).astype(np.int64)
        if self._features.ndim != 2 or self.labels.shape != (self._features.shape[0],):
            raise ProbeError(
                f"features {tuple(self._features.shape)} and labels {self.labels.shape} must be (N, D) and (N,)"
            )
        self.dim = int(self._features.shape[1])

    def features(self, idx: np.ndarray) -> torch.Tensor:
        return self._features[torch.as_tensor(idx)].float()

    def compile(self) -> None:
        """Nothing to compile: the features are rows of a tensor in memory."""


def resolve_precision(precision: str, device: str, batched: bool = True) -> str:
    """"auto" -> bfloat16 where the device multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA
    GPUs that support it), float32 elsewhere; "float32" and "bfloat16" are returned as they are. The sequential
    ensemble (`batched` False), the reference with torch's own modules, is always float32."""
    check_precision(precision, batched)
    if not batched:
        return "float32"
    if precision in PRECISIONS:
        return precision
    if str(device).startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        native = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return "bfloat16" if native else "float32"


def hidden_sizes(num_classes: int) -> tuple[int, int]:
    """DatasetGAN's hidden widths: (128, 32) below 30 classes, (256, 128) from 30 on."""
    return (128, 32) if num_classes < 30 else (256, 128)


def member_generators(seed: int, member: int) -> tuple[torch.Generator, np.random.Generator]:
    """Member `member`'s own generators, both seeded from (seed, member): (weight init, shuffles)."""
    sequence = np.random.SeedSequence([seed, member])
    init = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    return init, np.random.default_rng(sequence)


def new_member(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """One member MLP; Linear weights normal(0, 0.02) from `generator`, biases 0, BatchNorm default."""
    h1, h2 = hidden_sizes(num_classes)
    linears = [nn.utils.skip_init(nn.Linear, a, b) for a, b in ((dim, h1), (h1, h2), (h2, num_classes))]
    for linear in linears:
        with torch.no_grad():
            linear.weight.normal_(0.0, INIT_STD, generator=generator)
            linear.bias.zero_()
    return nn.Sequential(
        linears[0], nn.ReLU(), nn.BatchNorm1d(h1), linears[1], nn.ReLU(), nn.BatchNorm1d(h2), linears[2]
    )


class StackedLinear(nn.Module):
    """M independent Linear layers: weight (in, M, out), bias (M, out); activations are (B, M, features).

    The member axis sits in the middle so that a shared (B, in) input needs one (B, in) x (in, M * out)
    product on a view of the weight: the input is never copied per member. With `products` bfloat16 that
    product (and so its weight gradient) runs on bfloat16 copies of input and weight, accumulating in
    float32; the parameters stay float32."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(in_features, members, out_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features))
        self.products = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) shared by all members, or (B, M, in) one per member -> (B, M, out)."""
        fan_in, members, fan_out = self.weight.shape
        if x.ndim == 2:
            flat = x.to(self.products) @ self.weight.view(fan_in, members * fan_out).to(self.products)
            flat = flat + self.bias.view(-1)  # float32 bias: also the cast back from bfloat16, in one pass
            return flat.view(len(x), members, fan_out)
        return torch.bmm(x.transpose(0, 1), self.weight.transpose(0, 1)).transpose(0, 1) + self.bias


class StackedBatchNorm(nn.Module):
    """M independent nn.BatchNorm1d layers over (B, M, F): one torch batch norm over the M x F columns, so
    the statistics, the running-statistics updates and the gradients are torch's own."""

    def __init__(self, members: int, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, features))
        self.bias = nn.Parameter(torch.zeros(members, features))
        self.register_buffer("running_mean", torch.zeros(members, features))
        self.register_buffer("running_var", torch.ones(members, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = F.batch_norm(x.reshape(len(x), -1), self.running_mean.view(-1), self.running_var.view(-1),
                               self.weight.view(-1), self.bias.view(-1), self.training, self.momentum, self.eps)
        return columns.view(x.shape)


class StackedMLP(nn.Sequential):
    """M member MLPs as one network; its state_dict keys match a member's nn.Sequential.

    `precision` bfloat16 computes the first layer's products (nearly all of the network's arithmetic) in
    bfloat16; everything else, and every parameter, stays float32."""

    def __init__(self, members: int, dim: int, num_classes: int, precision: str = "float32") -> None:
        h1, h2 = hidden_sizes(num_classes)
        super().__init__(
            StackedLinear(members, dim, h1), nn.ReLU(), StackedBatchNorm(members, h1),
            StackedLinear(members, h1, h2), nn.ReLU(), StackedBatchNorm(members, h2),
            StackedLinear(members, h2, num_classes),
        )
        self[0].products = PRECISIONS[precision]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) features -> (M, B, classes) logits of every member."""
        return super().forward(x).transpose(0, 1)

    def after_first_products(self, products: torch.Tensor) -> torch.Tensor:
        """(B, M * hidden) float32 products of the first layer (its bias not yet added) -> (M, B, classes) logits,
        as `forward` computes them from the features."""
        first = self[0]
        h = products.view(len(products), *first.bias.shape) + first.bias
        for layer in list(self)[1:]:
            h = layer(h)
        return h.transpose(0, 1)

    @classmethod
    def from_members(cls, mlps: list[nn.Sequential], precision: str = "float32") -> StackedMLP:
        """Stack member MLPs built by `new_member` (parameters and running statistics)."""
        first = mlps[0]
        stacked = cls(len(mlps), first[0].in_features, first[-1].out_features, precision).to(first[0].weight.device)
        states = [mlp.state_dict() for mlp in mlps]
        with torch.no_grad():
            for key, target in stacked.member_state().items():
                value = torch.stack([state[key] for state in states])
                target.copy_(value.transpose(1, 2) if value.ndim == 3 else value)  # Linear (out, in) -> (in, out)
        return stacked

    def member_state(self) -> dict[str, torch.Tensor]:
        """The state dict as views with the member axis first: entry [m] is member m's tensor."""
        weights = {f"{name}.weight" for name, module in self.named_modules() if isinstance(module, StackedLinear)}
        return {key: value.movedim(1, 0) if key in weights else value for key, value in self.state_dict().items()}


def majority_vote(member_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M, N) labels -> (N,) most frequent label per pixel; ties go to the smallest label."""
    votes = F.one_hot(member_labels, num_classes).sum(0)
    return votes.argmax(-1)


def jensen_shannon(logits: torch.Tensor) -> torch.Tensor:
    """(M, N, K) logits -> (N,) entropy of the mean softmax minus the mean of the members' entropies."""
    log_probs = F.log_softmax(logits, -1)
    probs = log_probs.exp()
    member_entropy = -(probs * log_probs).sum(-1).mean(0)
    mean_probs = probs.mean(0)
    return -torch.special.xlogy(mean_probs, mean_probs).sum(-1) - member_entropy


class EarlyStopping:
    """The authors' rule per member: from epoch `check_after_epoch + 1` on, a batch loss below the best
    resets the count, any other loss adds one; a member stops when the count exceeds `patience`."""

    def __init__(self, members: int, patience: int, check_after_epoch: int) -> None:
        self.patience, self.check_after_epoch = patience, check_after_epoch
        self.best = np.full(members, np.inf)
        self.count = np.zeros(members, dtype=np.int64)
        self.stopped = np.zeros(members, dtype=bool)

    def update(self, epoch: int, losses: np.ndarray) -> np.ndarray:
        """Record one batch's losses; returns the members that stop now."""
        if epoch <= self.check_after_epoch:
            return np.zeros_like(self.stopped)
        active = ~self.stopped
        improved = active & (losses < self.best)
        self.best[improved] = losses[improved]
        self.count[improved] = 0
        self.count[active & ~improved] += 1
        newly = active & (self.count > self.patience)
        self.stopped |= newly
        return newly


def _batches(source: PixelSource, order: np.ndarray, batch_size: int, device: str) -> Iterator[tuple]:
    """(features, labels) batches in `order`, fetching about GATHER_PIXELS pixels (whole batches) per source call."""
    gather = batch_size * max(1, GATHER_PIXELS // batch_size)
    for start in range(0, len(order), gather):
        idx = order[start : start + gather]
        features = source.features(idx).to(device)
        labels = torch.from_numpy(source.labels[idx]).to(device, torch.long)
        yield from zip(features.split(batch_size), labels.split(batch_size))


class PixelEnsemble:
    """Ensemble of pixel-classifier MLPs: majority-vote labels and Jensen-Shannon uncertainty.

    Example:
        ensemble = PixelEnsemble(num_classes=21).fit(ArrayPixelSource(features, labels))
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
        """`compile`: run the batched ensemble's step (ensemble_step.py) and the source's gather through torch.compile
        for the unchecked epochs' batches, which changes how they run, not what they compute; None: when the unchecked
        epochs take at least COMPILE_FROM_STEPS steps.
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

    def _training_parameters(self) -> dict:
        keys = ("batch_size", "lr", "patience", "check_after_epoch", "max_epochs", "batched", "seed", "precision",
                "early_batch_size")
        return {key: getattr(self, key) for key in keys}

    def fit(self, source: PixelSource) -> PixelEnsemble:
        """Train every member on the pixels of `source`; sets model_, dim_, iterations_, epochs_, last_loss_,
        early_batch_size_ (the early batch used: None where the authors' rule was) and compiled_ (whether the step
        ran compiled)."""
        labels = source.labels
        if self.num_classes < 2 or self.members < 1:
            raise ProbeError(f"num_classes={self.num_classes}, members={self.members}: need >= 2 classes, >= 1 member")
        for name in ("batch_size", "early_batch_size"):
            size = getattr(self, name)
            if size is None:
                continue
            if size < 2:
                raise ProbeError(f"{name}={size}: batch normalisation needs at least 2 pixels per batch")
        if len(labels) < self.batch_size:
            raise ProbeError(f"{len(labels)} training pixels < batch_size {self.batch_size}: label more pixels or use a "
                             "smaller batch")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ProbeError(
                f"training labels span [{labels.min()}, {labels.max()}], outside [0, {self.num_classes}): "
                "remove ignore-label pixels and check num_classes"
            )
        mlps = [new_member(source.dim, self.num_classes, member_generators(self.seed, m)[0]).to(self.device)
                for m in range(self.members)]
        self.dim_ = source.dim
        early = self.early_batch_size
        self.early_batch_size_ = early if early not in (None, self.batch_size) and early <= len(labels) else None
        self.iterations_ = np.zeros(self.members, dtype=np.int64)
        self.epochs_ = np.zeros(self.members, dtype=np.int64)
        self.last_loss_ = np.full(self.members, np.nan)
        self.compiled_ = False
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, disable=not self.progress, console=Console(stderr=True)) as progress:
            if self.batched:
                self.model_ = self._fit_batched(source, StackedMLP.from_members(mlps, self.precision), progress)
            else:
                for m, mlp in enumerate(mlps):
                    self._fit_member(source, mlp, m, progress)
                self.model_ = StackedMLP.from_members(mlps)
        self.model_.eval()
        return self

    def _fit_batched(self, source: PixelSource, model: StackedMLP, progress: Progress) -> StackedMLP:
        """All members at once on one shared batch sequence; each member keeps its own early stopping."""
        model.train()
        steps = (self.check_after_epoch + 1) * (len(source.labels) // (self.early_batch_size_ or self.batch_size))
        compile = self.compile if self.compile is not None else steps >= COMPILE_FROM_STEPS
        step = StackedStep(model, compile)
        if compile:
            source.compile()
        snapshot = {key: value.clone() for key, value in model.member_state().items()}

        def freeze(stopped: np.ndarray) -> None:
            rows = torch.from_numpy(stopped).to(self.device)
            for key, value in model.member_state().items():
                snapshot[key][rows] = value[rows]

        stopper = self._train(source, np.random.default_rng(self.seed), lambda x, y, lr: step(x, y, lr).cpu().numpy()
                              .astype(np.float64), np.arange(self.members), freeze, progress, "members")
        self.compiled_ = step.compiled
        rows = torch.from_numpy(stopper.stopped).to(self.device)
        with torch.no_grad():
            for key, value in model.member_state().items():
                value[rows] = snapshot[key][rows]  # undo the Adam steps taken after a member stopped
        return model

    def _fit_member(self, source: PixelSource, mlp: nn.Sequential, member: int, progress: Progress) -> None:
        """One member with torch's own modules, its own shuffles, until it stops."""
        mlp.train()
        optimizer = torch.optim.Adam(mlp.parameters(), lr=self.lr, fused=True)

        def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> np.ndarray:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            loss = F.cross_entropy(mlp(x), y)
            loss.backward()
            optimizer.step()
            return np.array([loss.item()])

        rng = member_generators(self.seed, member)[1]
        self._train(source, rng, step, np.array([member]), lambda stopped: None, progress, f"member {member}")

    def _train(
        self,
        source: PixelSource,
        rng: np.random.Generator,
        step: Callable[[torch.Tensor, torch.Tensor, float], np.ndarray],
        members: np.ndarray,
        on_stop: Callable[[np.ndarray], None],
        progress: Progress,
        description: str,
    ) -> EarlyStopping:
        """The authors' loop for `members` trained together by `step(x, y, lr)` (one Adam step): a fresh shuffle per
        epoch, full batches only, per-member early stopping; fills iterations_, epochs_ and last_loss_ for them.
        The unchecked epochs take batches of `early_batch_size_` (if set) at a learning rate scaled to match."""
        stopper = EarlyStopping(len(members), self.patience, self.check_after_epoch)
        task = progress.add_task(description, total=self.max_epochs, status="")
        for epoch in range(self.max_epochs):
            checked = epoch > self.check_after_epoch
            batch_size = self.batch_size if checked or self.early_batch_size_ is None else self.early_batch_size_
            lr = self.lr * (batch_size / self.batch_size)
            steps_per_epoch = len(source.labels) // batch_size
            self.epochs_[members[~stopper.stopped]] += 1
            order = rng.permutation(len(source.labels))[: steps_per_epoch * batch_size]
            for x, y in _batches(source, order, batch_size, self.device):
                active = members[~stopper.stopped]
                losses = step(x, y, lr)
                self.iterations_[active] += 1
                self.last_loss_[active] = losses[~stopper.stopped]
                stopped = stopper.update(epoch, losses)
                if stopped.any():
                    on_stop(stopped)
                if stopper.stopped.all():
                    break
            status = f"{(~stopper.stopped).sum()}/{len(members)} active, loss {np.nanmean(self.last_loss_[members]):.4f}"
            progress.update(task, advance=1, status=status)
            if stopper.stopped.all():
                break
        return stopper

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ProbeError("this PixelEnsemble is not trained: call fit(source) or PixelEnsemble.load(folder)")

    def predict(self, features: np.ndarray | torch.Tensor, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features -> (labels (N,) int64 by majority vote, Jensen-Shannon divergence (N,) float32)."""
        self._check_fitted()
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.dim_:
            raise ProbeError(f"features {tuple(features.shape)} must be (N, {self.dim_}) as in training")
        return self._vote(lambda part: self.model_(part.to(self.device, torch.float32)), features.split(chunk))

    def first_layer(self, dim: int) -> tuple[torch.Tensor, torch.dtype]:
        """The first layer's weight as (dim, members * hidden) and the dtype its products run in, to compute its
        products elsewhere (e.g. PixelSampler.projected, at native resolution) and finish with predict_products."""
        self._check_fitted()
        if dim != self.dim_:
            raise ProbeError(f"features of dimension {dim} given, the ensemble was trained on {self.dim_}")
        first = self.model_[0]
        return first.weight.detach().view(self.dim_, -1), first.products

    def predict_products(self, products: torch.Tensor, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """As `predict`, from the first layer's (N, members * hidden) float32 products of the features (its
        bias not yet added), computed elsewhere with the weight of `first_layer`."""
        self._check_fitted()
        return self._vote(lambda part: self.model_.after_first_products(part.to(self.device)), products.split(chunk))

    def _vote(self, logits_of: Callable[[torch.Tensor], torch.Tensor],
              parts: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        labels, divergences = [], []
        self.model_.eval()
        with torch.no_grad():
            for part in parts:
                logits = logits_of(part)
                labels.append(majority_vote(logits.argmax(-1), self.num_classes).cpu())
                divergences.append(jensen_shannon(logits).cpu())
        return torch.cat(labels).numpy().astype(np.int64), torch.cat(divergences).numpy().astype(np.float32)

    @staticmethod
    def uncertainty(js: np.ndarray | torch.Tensor) -> float:
        """An image's uncertainty: the mean of its int(N / 10) largest per-pixel JS values (at least one)."""
        values = np.asarray(js, dtype=np.float64).ravel()
        top = max(1, values.size // 10)
        return float(np.partition(values, values.size - top)[-top:].mean())

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
                "training": self._training_parameters(),
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
            raise ProbeError(
                f"{manifest_path}: missing or not a saved ensemble ({error}); run the training again"
            ) from None
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
