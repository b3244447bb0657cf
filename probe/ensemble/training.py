"""The authors' training rule and the two strategies that follow it.

`train_loop` is the authors' loop: a fresh shuffle per epoch, full batches only, Adam, and per-member early stopping
(`EarlyStopping`), optionally with larger batches in the epochs that rule does not check (`early_batch_size`).
`fit_sequential` trains the members one after another with torch's own modules and their own shuffles (the
reference); `fit_batched` trains them all at once as one stacked network on one shared batch sequence, which is the
same algorithm, gathers each batch of features once and is several times faster; its step (forward, backward and
Adam) is written out in step.py so that torch.compile can fuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from probe.ensemble.model import StackedMLP, member_generators
from probe.ensemble.sources import PixelSource
from probe.ensemble.step import StackedStep
from probe.spec import AUTHORS_BATCH_SIZE

if TYPE_CHECKING:
    from probe.ensemble.estimator import PixelEnsemble

BATCH_SIZE = AUTHORS_BATCH_SIZE  # the authors' pixels per step
EARLY_BATCH_SIZE = BATCH_SIZE  # the pipeline's default pixels per step in the epochs early stopping does not check:
# the authors' rule, everywhere (segment, sweeps, SegmentOptions). Early batches of 128 (--early-batch-size 128) are
# an opt-in that changes the algorithm: within the authors' seed spread over 3 seeds on the default and at the paper's
# shape, but about 0.4 mIoU points lower paired there, training 1.3-1.5x faster (analysis/training_rule.sh)
GATHER_PIXELS = 1024  # pixels (whole batches, at least one) fetched from the source in one call: 16 batches of 64.
# Larger calls are slower per pixel with the store's sampler (measured at the paper's shape: 13 us per pixel at 1024,
# 34 at 4096), so batches larger than 64 are fetched fewer at a time.
COMPILE_FROM_STEPS = 2_000  # fits whose unchecked epochs take this many steps compile theirs (by default): compiling
# takes 2-15 s (less once torch's cache holds the shape); the compiled step saves about 5 ms a step at the paper's shape


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


def gathers(source: PixelSource, order: np.ndarray, batch_size: int, device: str) -> Iterator[list[tuple]]:
    """The (features, labels) batches in `order`, as lists of the batches of one source call: about GATHER_PIXELS
    pixels (whole batches) per call."""
    gather = batch_size * max(1, GATHER_PIXELS // batch_size)
    for start in range(0, len(order), gather):
        idx = order[start : start + gather]
        features = source.features(idx).to(device)
        labels = torch.from_numpy(source.labels[idx]).to(device, torch.long)
        yield list(zip(features.split(batch_size), labels.split(batch_size)))


def fit_batched(ensemble: PixelEnsemble, source: PixelSource, model: StackedMLP, progress: Progress) -> StackedMLP:
    """All members at once on one shared batch sequence; each member keeps its own early stopping. Sets
    `ensemble.compiled_`."""
    model.train()
    steps = (ensemble.check_after_epoch + 1) * (len(source.labels) // (ensemble.early_batch_size_
                                                                       or ensemble.batch_size))
    compile = ensemble.compile if ensemble.compile is not None else steps >= COMPILE_FROM_STEPS
    step = StackedStep(model, compile)
    if compile:
        source.compile()
    snapshot = {key: value.clone() for key, value in model.member_state().items()}

    def freeze(stopped: np.ndarray) -> None:
        rows = torch.from_numpy(stopped).to(ensemble.device)
        for key, value in model.member_state().items():
            snapshot[key][rows] = value[rows]

    stopper = train_loop(ensemble, source, np.random.default_rng(ensemble.seed), step.run, np.arange(ensemble.members),
                         freeze, progress, "members")
    ensemble.compiled_ = step.compiled
    rows = torch.from_numpy(stopper.stopped).to(ensemble.device)
    with torch.no_grad():
        for key, value in model.member_state().items():
            value[rows] = snapshot[key][rows]  # undo the Adam steps taken after a member stopped
    return model


def fit_sequential(ensemble: PixelEnsemble, source: PixelSource, mlp: nn.Sequential, member: int,
                   progress: Progress) -> None:
    """One member with torch's own modules and Adam, its own shuffles, until it stops."""
    mlp.train()
    optimizer = torch.optim.Adam(mlp.parameters(), lr=ensemble.lr, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = F.cross_entropy(mlp(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach().view(1)

    rng = member_generators(ensemble.seed, member)[1]
    train_loop(ensemble, source, rng, lambda batches, lr: [step(x, y, lr) for x, y in batches], np.array([member]),
               lambda stopped: None, progress, f"member {member}")


def train_loop(
    ensemble: PixelEnsemble,
    source: PixelSource,
    rng: np.random.Generator,
    run: Callable[[list[tuple[torch.Tensor, torch.Tensor]], float], list[torch.Tensor]],
    members: np.ndarray,
    on_stop: Callable[[np.ndarray], None],
    progress: Progress,
    description: str,
) -> EarlyStopping:
    """The authors' loop for `members` trained together by `run(batches, lr)` (one Adam step per (x, y) batch, in
    order -> each step's losses of the members):
    a fresh shuffle per epoch, full batches only, per-member early stopping; fills the ensemble's iterations_, epochs_
    and last_loss_ for them. The unchecked epochs take batches of `early_batch_size_` (if set) at a learning rate
    scaled to match; no member stops in them, so the batches of one gather run back to back and their losses are
    read once, after the last."""
    stopper = EarlyStopping(len(members), ensemble.patience, ensemble.check_after_epoch)
    task = progress.add_task(description, total=ensemble.max_epochs, status="")
    for epoch in range(ensemble.max_epochs):
        checked = epoch > ensemble.check_after_epoch
        batch_size = ensemble.batch_size if checked or ensemble.early_batch_size_ is None else ensemble.early_batch_size_
        lr = ensemble.lr * (batch_size / ensemble.batch_size)
        steps_per_epoch = len(source.labels) // batch_size
        ensemble.epochs_[members[~stopper.stopped]] += 1
        order = rng.permutation(len(source.labels))[: steps_per_epoch * batch_size]
        for batches in gathers(source, order, batch_size, ensemble.device):
            if not checked:
                losses = run(batches, lr)[-1]
                ensemble.iterations_[members] += len(batches)
                ensemble.last_loss_[members] = losses.cpu().numpy()
                continue
            for x, y in batches:
                active = members[~stopper.stopped]
                losses = run([(x, y)], lr)[0].cpu().numpy().astype(np.float64)
                ensemble.iterations_[active] += 1
                ensemble.last_loss_[active] = losses[~stopper.stopped]
                stopped = stopper.update(epoch, losses)
                if stopped.any():
                    on_stop(stopped)
                if stopper.stopped.all():
                    break
            if stopper.stopped.all():
                break
        status = f"{(~stopper.stopped).sum()}/{len(members)} active, loss {np.nanmean(ensemble.last_loss_[members]):.4f}"
        progress.update(task, advance=1, status=status)
        if stopper.stopped.all():
            break
    return stopper
