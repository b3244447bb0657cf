"""The ensemble's settings that a command checks before anything loads: the precisions of the first layer's products,
the training rule's batch sizes and what metrics.json says of the rule a fit followed. No torch here."""

from __future__ import annotations

from probe.errors import ProbeError

PRECISIONS = ("float32", "bfloat16")  # of the first layer's products; "auto" picks one by hardware
BATCH_SIZE = 64  # the authors' pixels per step, in every epoch: the default training rule everywhere
EARLY_BATCH_SIZE = BATCH_SIZE  # the pipeline's default pixels per step in the epochs early stopping does not check:
# the authors' rule, everywhere (segment, sweeps, SegmentOptions). Early batches of 128 (--early-batch-size 128) are
# an opt-in that changes the algorithm: within the authors' seed spread over 3 seeds on the default and at the paper's
# shape, but about 0.4 mIoU points lower paired there, training 1.3-1.5x faster (analysis/training_rule.sh)


def training_rule(early_batch_size: int | None, batch_size: int = BATCH_SIZE) -> str:
    """What metrics.json says of the ensemble's training rule, from the early batch a fit used (None or
    `batch_size`: the authors' rule throughout)."""
    if early_batch_size in (None, batch_size):
        return f"authors (batches of {batch_size})"
    return (f"early batches of {early_batch_size} in epochs 0-3 (lr x {early_batch_size}/{batch_size}), then "
            f"{batch_size} (not the authors')")


def check_precision(precision: str, batched: bool = True) -> None:
    """Fail on a precision the ensemble cannot use: unknown, or bfloat16 for the sequential reference."""
    if precision not in (*PRECISIONS, "auto"):
        raise ProbeError(f"precision {precision!r}: use auto, float32 or bfloat16")
    if not batched and precision == "bfloat16":
        raise ProbeError("precision bfloat16 needs the batched ensemble: drop --sequential or use float32")
