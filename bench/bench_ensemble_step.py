"""Time the ensemble's batched training loop (PixelEnsemble.fit: sampling batches, forward, backward, fused Adam)
on features held in memory, per batch-64 step.

    python bench/bench_ensemble_step.py                 # the paper's shape at num_channels 64: D = 2112, 10 members
    python bench/bench_ensemble_step.py --dim 8448 --threads 1
    python bench/bench_ensemble_step.py --split        # ms per step in each phase: gather, forward, backward, Adam

The segmenter's training time at the paper's shape is about this step time x the steps its early stopping takes
(about 41,000 at 10 train images), plus reading features from the activation store. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import torch.nn.functional as F

from probe.ensemble import ArrayPixelSource, PixelEnsemble, StackedMLP, flush_subnormals
from probe.store import PixelSampler

PAPER_CELLS = ((4, 32), (2, 32), (2, 32), (2, 64), (1, 128))  # (channels / num_channels, native size) per block at 256


def phase_split(args) -> dict:
    """ms per batch-64 step in each phase of the batched ensemble's step, timed one phase at a time: gathering the
    batch's features from native maps of the paper's sizes (the sampler, 16 batches per call as in fit), the
    forward pass, loss and backward pass, fused Adam. The maps' channels scale with --dim (2112 at num_channels 64)."""
    channels = args.dim // 33  # 2112 = 33 x 64: blocks {5,6,7,8,12} x 3 steps
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(4, c * channels, s, s, generator=generator).half() for _ in range(3) for c, s in PAPER_CELLS]
    sampler = PixelSampler(maps, 256)
    model = StackedMLP(args.members, sampler.dim, args.classes, PixelEnsemble(2, precision=args.precision).precision)
    for parameter in model.parameters():
        if parameter.dim() == 3:
            parameter.data.normal_(0.0, 0.02, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(args.classes, size=64))
    seconds = dict.fromkeys(("gather", "forward", "backward", "adam"), 0.0)
    for step in range(args.steps):
        started = time.perf_counter()
        if step % 16 == 0:
            batches = sampler.gather(rng.integers(4, size=1024), rng.integers(256, size=1024),
                                     rng.integers(256, size=1024)).split(64)
        x = batches[step % 16]
        gathered = time.perf_counter()
        optimizer.zero_grad()
        logits = model(x)
        forward = time.perf_counter()
        losses = F.cross_entropy(logits.permute(1, 2, 0), labels[:, None].expand(-1, args.members), reduction="none")
        losses.mean(0).sum().backward()
        backward = time.perf_counter()
        optimizer.step()
        ended = time.perf_counter()
        for phase, (a, b) in zip(seconds, ((started, gathered), (gathered, forward), (forward, backward), (backward, ended))):
            seconds[phase] += b - a
    return {phase: round(1000 * value / args.steps, 2) for phase, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2112)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000, help="batch-64 steps to time (one epoch)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="auto", help="the first layer's products: auto, float32 or bfloat16")
    parser.add_argument("--split", action="store_true", help="time each phase of the step instead of PixelEnsemble.fit")
    args = parser.parse_args()
    flush_subnormals()  # as the probe command does
    torch.set_num_threads(args.threads)
    if args.split:
        print(json.dumps({"dim": args.dim, "members": args.members, "threads": args.threads,
                          "ms_per_step": phase_split(args)}))
        return

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.steps * 64, args.dim), dtype=np.float32)
    labels = rng.integers(args.classes, size=args.steps * 64)
    ensemble = PixelEnsemble(args.classes, members=args.members, max_epochs=1, progress=False, precision=args.precision)
    started = time.perf_counter()
    ensemble.fit(ArrayPixelSource(features, labels))
    seconds = (time.perf_counter() - started) / args.steps
    hidden = ensemble.model_[0].weight.shape[2]
    first_layer_flop = 2 * 2 * 64 * args.dim * args.members * hidden  # forward and weight-gradient products
    print(json.dumps({"dim": args.dim, "members": args.members, "threads": args.threads, "precision": ensemble.precision,
                      "ms_per_step": round(1000 * seconds, 2),
                      "first_layer_gflop_per_second": round(first_layer_flop / seconds / 1e9, 1)}))


if __name__ == "__main__":
    main()
