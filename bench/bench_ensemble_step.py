"""Time the ensemble's batched training loop (PixelEnsemble.fit: gathering batches of features from native maps, then
forward, backward and Adam in one step, both compiled by torch.compile before timing) per step (batch 64 unless
--batch-size).

    python bench/bench_ensemble_step.py                 # the paper's shape at num_channels 64: D = 2112, 10 members
    python bench/bench_ensemble_step.py --dim 8448 --threads 1
    python bench/bench_ensemble_step.py --split        # ms per step in each phase: gather, step
    python bench/bench_ensemble_step.py --eager        # the step without torch.compile
    python bench/bench_ensemble_step.py --batch-size 256 --steps 250   # fewer, fatter steps (same pixels)
    python bench/bench_ensemble_step.py --early-batch-size 256         # whole fits: the authors' rule vs batches
                                                                       # of 256 in the unchecked epochs, alternated

The segmenter's training time at the paper's shape is about this step time x the steps its early stopping takes
(about 41,000 at 10 train images), plus reading features from the activation store. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from probe.ensemble import GATHER_PIXELS, ArrayPixels, PixelEnsemble, StackedMLP, StackedStep
from probe.features.sampler import PixelSampler
from probe.utils.runtime import tune_process

PAPER_CELLS = ((4, 32), (2, 32), (2, 32), (2, 64), (1, 128))  # (channels / num_channels, native size) per block at 256


def paper_sampler(dim: int, generator: torch.Generator) -> PixelSampler:
    """A sampler over 4 images' random native maps of the paper's sizes, whose channels scale with `dim` (2112 at
    num_channels 64)."""
    channels = dim // 33  # 2112 = 33 x 64: blocks {5,6,7,8,12} x 3 steps
    maps = [torch.randn(4, c * channels, s, s, generator=generator).half() for _ in range(3) for c, s in PAPER_CELLS]
    return PixelSampler(maps, 256)


class SampledPixels:
    """TrainingPixels: `count` random pixels of a sampler, with random labels."""

    def __init__(self, sampler: PixelSampler, count: int, classes: int, rng: np.random.Generator) -> None:
        self.sampler, self.dim = sampler, sampler.dim
        self.where = (rng.integers(4, size=count), rng.integers(256, size=count), rng.integers(256, size=count))
        self.labels = rng.integers(classes, size=count)

    def features(self, idx: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.sampler.gather(*(a[idx] for a in self.where), dtype)

    def compile(self) -> None:
        self.sampler.compile()


def compare_rules(args) -> dict:
    """Seconds of whole fits (4 unchecked epochs, then the early-stopping rule) on --steps x 64 sampled pixels, the
    authors' rule and --early-batch-size alternated --rounds times in this process (ratios from back-to-back fits hold
    on a loaded machine where absolute times do not); the first round includes compiling the step."""
    pixels = SampledPixels(paper_sampler(args.dim, torch.Generator().manual_seed(0)), args.steps * 64, args.classes,
                           np.random.default_rng(0))
    rules = {"authors": None, f"early_batch_{args.early_batch_size}": args.early_batch_size}
    seconds, steps = dict.fromkeys(rules, 0.0), {}
    for _ in range(args.rounds):
        for name, early in rules.items():
            started = time.perf_counter()
            ensemble = PixelEnsemble(args.classes, members=args.members, progress=False, precision=args.precision,
                                     early_batch_size=early, compile=not args.eager).fit(pixels)
            seconds[name] += time.perf_counter() - started
            steps[name] = int(ensemble.iterations_.mean())
    return {"seconds": {name: round(value / args.rounds, 2) for name, value in seconds.items()},
            "steps_per_member": steps, "speedup": round(seconds["authors"] / seconds[f"early_batch_{args.early_batch_size}"], 2)}


def phase_split(args) -> dict:
    """ms per step in each phase: gathering every member's batch of features from native maps of the paper's sizes
    (the sampler, as many batches per call as in fit) and the step itself (forward, backward and Adam in one function,
    compiled unless --eager)."""
    generator = torch.Generator().manual_seed(0)
    sampler = paper_sampler(args.dim, generator)
    model = StackedMLP(args.members, sampler.dim, args.classes, PixelEnsemble(2, precision=args.precision).precision)
    for parameter in model.parameters():
        if parameter.dim() == 3:
            parameter.data.normal_(0.0, 0.02, generator=generator)
    step = StackedStep(model, compile=not args.eager)
    if not args.eager:
        sampler.compile()
    rng = np.random.default_rng(0)
    batch, members = args.batch_size, args.members
    labels = torch.from_numpy(rng.integers(args.classes, size=(members, batch)))
    seconds = dict.fromkeys(("gather", "step"), 0.0)
    per_call = max(1, GATHER_PIXELS // (batch * members))  # batches of each member per call, as in fit
    pixels = members * per_call * batch

    def gather() -> tuple[torch.Tensor, ...]:
        features = sampler.gather(rng.integers(4, size=pixels), rng.integers(256, size=pixels),
                                  rng.integers(256, size=pixels), model[0].products)
        return features.view(members, per_call * batch, -1).split(batch, 1)

    for x in gather():
        step.run([(x, labels)], 1e-3)  # compiles the gather and the step, untimed
    for i in range(args.steps):
        started = time.perf_counter()
        if i % per_call == 0:
            batches = gather()
        x = batches[i % per_call]
        gathered = time.perf_counter()
        step.run([(x, labels)], 1e-3)[0].numpy()
        seconds["gather"] += gathered - started
        seconds["step"] += time.perf_counter() - gathered
    return {phase: round(1000 * value / args.steps, 2) for phase, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2112)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, help="steps to time (one epoch; default 1000), or with --early-batch-size "
                        "the pixels of the compared fits in batches of 64 (default 1600)")
    parser.add_argument("--batch-size", type=int, default=64, help="pixels per step (the authors': 64)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="auto", help="the first layer's products: auto, float32 or bfloat16")
    parser.add_argument("--split", action="store_true", help="time the gather and the step apart instead of "
                        "PixelEnsemble.fit")
    parser.add_argument("--eager", action="store_true", help="run the step and the gather without torch.compile "
                        "(which fits of 2,000 steps or more use by default)")
    parser.add_argument("--early-batch-size", type=int, help="compare whole fits: the authors' rule and this batch in "
                        "the unchecked epochs")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two fits (with --early-batch-size)")
    args = parser.parse_args()
    args.steps = args.steps or (1600 if args.early_batch_size else 1000)
    tune_process()  # as the probe command does
    torch.set_num_threads(args.threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's first optimizer imports torch._dynamo: not timed
    if args.early_batch_size:
        print(json.dumps({"dim": args.dim, "members": args.members, "threads": args.threads,
                          "load_average": os.getloadavg(), **compare_rules(args)}))
        return
    if args.split:
        print(json.dumps({"dim": args.dim, "members": args.members, "threads": args.threads,
                          "batch_size": args.batch_size, "ms_per_step": phase_split(args)}))
        return

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.steps * args.batch_size, args.dim), dtype=np.float32)
    labels = rng.integers(args.classes, size=args.steps * args.batch_size)
    settings = dict(members=args.members, batch_size=args.batch_size, max_epochs=1, progress=False,
                    precision=args.precision, compile=not args.eager)
    warm_up = ArrayPixels(features[: 2 * args.batch_size], labels[: 2 * args.batch_size])
    PixelEnsemble(args.classes, **settings).fit(warm_up)  # compiles the step: not timed
    ensemble = PixelEnsemble(args.classes, **settings)
    started = time.perf_counter()
    ensemble.fit(ArrayPixels(features, labels))
    seconds = (time.perf_counter() - started) / args.steps
    hidden = ensemble.model_[0].weight.shape[2]
    first_layer_flop = 2 * 2 * args.batch_size * args.dim * args.members * hidden  # forward and weight-gradient products
    print(json.dumps({"dim": args.dim, "members": args.members, "threads": args.threads, "precision": ensemble.precision,
                      "compiled": ensemble.compiled_, "batch_size": args.batch_size, "ms_per_step": round(1000 * seconds, 2),
                      "first_layer_gflop_per_second": round(first_layer_flop / seconds / 1e9, 1)}))


if __name__ == "__main__":
    main()
