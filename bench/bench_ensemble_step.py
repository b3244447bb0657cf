"""Time the ensemble's batched training loop (PixelEnsemble.fit: sampling batches, forward, backward, fused Adam)
on features held in memory, per batch-64 step.

    python bench/bench_ensemble_step.py                 # the paper's shape at num_channels 64: D = 2112, 10 members
    python bench/bench_ensemble_step.py --dim 8448 --threads 1

The segmenter's training time at the paper's shape is about this step time x the steps its early stopping takes
(about 41,000 at 10 train images), plus reading features from the activation store. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from probe.ensemble import ArrayPixelSource, PixelEnsemble, flush_subnormals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2112)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000, help="batch-64 steps to time (one epoch)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="auto", help="the first layer's products: auto, float32 or bfloat16")
    args = parser.parse_args()
    flush_subnormals()  # as the probe command does
    torch.set_num_threads(args.threads)

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
