"""Time one batched training step of the ensemble (forward, backward, fused Adam) on in-memory features.

    python bench/bench_ensemble_step.py                 # the paper's shape at num_channels 64: D = 2112, 10 members
    python bench/bench_ensemble_step.py --dim 8448 --threads 1

The segmenter's training time at the paper's shape is this step time x the steps its early stopping takes
(about 41,000 at 10 train images); feature sampling from the store is not included. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from probe.ensemble import StackedMLP, member_generators, new_member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2112)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = StackedMLP.from_members([new_member(args.dim, args.classes, member_generators(0, m)[0])
                                     for m in range(args.members)]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.dim, generator=generator)
    y = torch.randint(args.classes, (args.batch,), generator=generator)

    def step() -> None:
        optimizer.zero_grad()
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), y.repeat(args.members), reduction="none").sum().backward()
        optimizer.step()

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    first_layer_flop = 2 * 2 * args.batch * args.dim * model[0].weight.shape[1] * model[0].weight.shape[2]
    print(json.dumps({"dim": args.dim, "members": args.members, "batch": args.batch, "threads": args.threads,
                      "ms_per_step": round(1000 * seconds, 2),
                      "first_layer_gflop_per_second": round(first_layer_flop / seconds / 1e9, 1)}))


if __name__ == "__main__":
    main()
