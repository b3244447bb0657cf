"""The authors' training rule and the two strategies that follow it.

`train_loop` is the authors' loop: a fresh shuffle per epoch, full batches only, Adam, and per-member early stopping
(`EarlyStopping`), optionally with larger batches in the epochs that rule does not check (`early_batch_size`).
`fit_sequential` trains the members one after another with torch's own modules (the reference); `fit_batched` trains
them all at once as one stacked network, several times faster; its step (forward, backward and Adam) is written out in
step.py so that torch.compile can fuse it. Either way member m shuffles the pixels every epoch with its own generator
(`member_generators(seed, m)`), as the authors' fresh DataLoader per member does, so both strategies run the same
algorithm: with float32 products they reach the same weights up to float rounding. Both take the rule's
`TrainingSettings` and return a `FitRecord` of what the fit did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from probe.ensemble.model import StackedMLP, member_generators
from probe.ensemble.pixels import TrainingPixels
from probe.ensemble.step import StackedStep

GATHER_PIXELS = 1024  # pixels (whole batches of every member, at least one each) fetched in one `features` call:
# 16 batches of 64 of one member, one batch of each of 10. Larger calls are slower per pixel with the store's sampler
# (measured at the paper's shape: 13 us per pixel at 1024, 34 at 4096), so batches larger than 64 are fetched fewer
# at a time.
COMPILE_FROM_STEPS = 2_000  # fits whose unchecked epochs take this many steps compile theirs (by default): compiling
# takes 2-15 s (less once torch's cache holds the shape); the compiled step saves about 5 ms a step at the paper's shape


@dataclass(frozen=True)
class TrainingSettings:
    """The rule's settings, as PixelEnsemble's arguments of the same names; `early_batch_size` is the early batch the
    fit uses (None: `batch_size` throughout, the authors' rule)."""

    batch_size: int
    early_batch_size: int | None
    lr: float
    patience: int
    check_after_epoch: int
    max_epochs: int
    seed: int
    device: str


@dataclass
class FitRecord:
    """What a fit did, per member: its Adam steps (`iterations`), the epochs it began, its last batch loss; and whether
    the batched step ran compiled."""

    iterations: np.ndarray
    epochs: np.ndarray
    last_loss: np.ndarray
    compiled: bool = False

    @classmethod
    def start(cls, members: int) -> FitRecord:
        """The record of `members` members before their first step."""
        return cls(np.zeros(members, dtype=np.int64), np.zeros(members, dtype=np.int64), np.full(members, np.nan))


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


def gathers(pixels: TrainingPixels, orders: np.ndarray, batch_size: int, device: str,
            dtype: torch.dtype) -> Iterator[list[tuple]]:
    """The batches of (M, n) `orders` (member m's pixels in row m), as lists of (features (M, batch, D) in `dtype`,
    labels (M, batch)): member m's batch at [m]; each list is the batches of one `pixels.features` call of about
    GATHER_PIXELS pixels (whole batches of every member)."""
    members = len(orders)
    gather = batch_size * max(1, GATHER_PIXELS // (batch_size * members))
    for start in range(0, orders.shape[1], gather):
        idx = orders[:, start : start + gather]
        features = pixels.features(idx.reshape(-1), dtype).to(device).view(*idx.shape, -1)
        labels = torch.from_numpy(pixels.labels[idx]).to(device, torch.long)
        yield list(zip(features.split(batch_size, 1), labels.split(batch_size, 1)))


def fit_batched(settings: TrainingSettings, pixels: TrainingPixels, model: StackedMLP, compile: bool | None,
                progress: Progress) -> FitRecord:
    """Train all members of `model` at once, each on its own shuffles and with its own early stopping.
    `compile`: run the step through torch.compile (None: when the unchecked epochs take COMPILE_FROM_STEPS steps)."""
    model.train()
    steps = (settings.check_after_epoch + 1) * (len(pixels.labels) // (settings.early_batch_size
                                                                       or settings.batch_size))
    compile = compile if compile is not None else steps >= COMPILE_FROM_STEPS
    step = StackedStep(model, compile)
    if compile:
        pixels.compile()
    snapshot = {key: value.clone() for key, value in model.state_dict().items()}

    def freeze(stopped: np.ndarray) -> None:
        rows = torch.from_numpy(stopped).to(settings.device)
        for key, value in model.state_dict().items():
            snapshot[key][rows] = value[rows]

    record = FitRecord.start(model[0].weight.shape[0])  # StackedLinear's weight: (members, in, out)
    members = np.arange(len(record.epochs))
    rngs = [member_generators(settings.seed, member)[1] for member in members]
    stopper = train_loop(settings, pixels, rngs, step.run, record, members, freeze, progress, "members",
                         features_dtype=model[0].products)
    record.compiled = step.compiled
    rows = torch.from_numpy(stopper.stopped).to(settings.device)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value[rows] = snapshot[key][rows]  # undo the Adam steps taken after a member stopped
    return record


def fit_sequential(settings: TrainingSettings, pixels: TrainingPixels, mlps: list[nn.Sequential],
                   progress: Progress) -> FitRecord:
    """Train the members one after another with torch's own modules and Adam, each on its own shuffles until it
    stops."""
    record = FitRecord.start(len(mlps))
    for member, mlp in enumerate(mlps):
        fit_member(settings, pixels, mlp, member, record, progress)
    return record


def fit_member(settings: TrainingSettings, pixels: TrainingPixels, mlp: nn.Sequential, member: int,
               record: FitRecord, progress: Progress) -> None:
    """Member `member` of a sequential fit, until it stops; fills its entries of `record`."""
    mlp.train()
    optimizer = torch.optim.Adam(mlp.parameters(), lr=settings.lr, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = F.cross_entropy(mlp(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach().view(1)

    rngs = [member_generators(settings.seed, member)[1]]
    train_loop(settings, pixels, rngs, lambda batches, lr: [step(x[0], y[0], lr) for x, y in batches], record,
               np.array([member]), lambda stopped: None, progress, f"member {member}")


def train_loop(
    settings: TrainingSettings,
    pixels: TrainingPixels,
    rngs: list[np.random.Generator],
    run: Callable[[list[tuple[torch.Tensor, torch.Tensor]], float], list[torch.Tensor]],
    record: FitRecord,
    members: np.ndarray,
    on_stop: Callable[[np.ndarray], None],
    progress: Progress,
    description: str,
    features_dtype: torch.dtype = torch.float32,
) -> EarlyStopping:
    """The authors' loop for `members` trained together by `run(batches, lr)` (one Adam step per (x, y) batch, in
    order -> each step's losses of the members; x[m], y[m] member m's batch):
    a fresh shuffle per epoch and member (from its generator in `rngs`), full batches only, per-member early
    stopping; fills the iterations, epochs and last_loss of `record` for them. The unchecked epochs take batches of `settings.early_batch_size` (if set) at a
    learning rate scaled to match; no member stops in them, so the batches of one gather run back to back and their
    losses are read once, after the last. The batches' features come as `features_dtype`: the dtype the first
    layer's products take them in (rounded once, in the gather)."""
    stopper = EarlyStopping(len(members), settings.patience, settings.check_after_epoch)
    task = progress.add_task(description, total=settings.max_epochs, status="")
    for epoch in range(settings.max_epochs):
        checked = epoch > settings.check_after_epoch
        batch_size = settings.batch_size if checked or settings.early_batch_size is None else settings.early_batch_size
        lr = settings.lr * (batch_size / settings.batch_size)
        steps_per_epoch = len(pixels.labels) // batch_size
        record.epochs[members[~stopper.stopped]] += 1
        orders = np.stack([rng.permutation(len(pixels.labels))[: steps_per_epoch * batch_size] for rng in rngs])
        for batches in gathers(pixels, orders, batch_size, settings.device, features_dtype):
            if not checked:
                losses = run(batches, lr)[-1]
                record.iterations[members] += len(batches)
                record.last_loss[members] = losses.cpu().numpy()
                continue
            for x, y in batches:
                active = members[~stopper.stopped]
                losses = run([(x, y)], lr)[0].cpu().numpy().astype(np.float64)
                record.iterations[active] += 1
                record.last_loss[active] = losses[~stopper.stopped]
                stopped = stopper.update(epoch, losses)
                if stopped.any():
                    on_stop(stopped)
                if stopper.stopped.all():
                    break
            if stopper.stopped.all():
                break
        loss = f"loss {np.nanmean(record.last_loss[members]):.4f}"
        if stopper.stopped.all():  # the bar ends full at the last epoch run, not at "5/100 epochs, 0 active"
            progress.update(task, advance=1, total=epoch + 1, status=f"stopped early at epoch {epoch + 1}, {loss}")
            break
        progress.update(task, advance=1, status=f"{(~stopper.stopped).sum()}/{len(members)} active, {loss}")
    return stopper
