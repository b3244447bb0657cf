"""Benchmark `probe segment`: peak RSS, time split (extraction, training, prediction) and the training time per step
of the ensemble (a step of all members at once when batched, of one member with --sequential; the early batch's steps
and those of 64 together).

    python bench/bench_segment.py default            # the embedded default domain and model
    python bench/bench_segment.py paper --train 20   # the paper's 256x256 ADM layout at num_channels 64,
                                                     # blocks {5,6,7,8,12}, steps {50,150,250}, generated images
    python bench/bench_segment.py paper --num-channels 256 --train 2 --test 2   # the released width: D = 8448

Runs the installed `probe segment` command in a child process (the start-up users get) from an empty activation
cache, so extraction and start-up are included; peak RSS is the child's. Prints one JSON line; nothing is
asserted. The dense approach of the authors' code would hold train x D x 256 x 256 float32 features.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paper_shape import BLOCKS, STEPS, prepare


def probe_command() -> str:
    """The installed console script, as users run it (not a private path around it)."""
    found = shutil.which("probe") or str(Path(sys.executable).parent / "probe")
    if not Path(found).is_file():
        sys.exit("the probe command is not installed: pip install -e . first")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=["default", "paper"])
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--num-channels", type=int, default=64,
                        help="paper shape: the ADM's width (64: D = 2112; 256, the released models': D = 8448)")
    parser.add_argument("--sequential", action="store_true", help="members one by one instead of batched")
    parser.add_argument("--precision", default="auto", help="the ensemble's first-layer products: auto, float32, bfloat16")
    parser.add_argument("--early-batch-size", type=int, help="probe segment's --early-batch-size (default: its own, 64, the "
                        "authors' rule; 128: the faster opt-in)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="probe-bench-") as folder:  # cache and outputs removed at the end
        work = Path(folder)
        command = [probe_command(), "segment", "--train-number", str(args.train), "--test-number", str(args.test),
                   "--members", str(args.members), "--precision", args.precision, "--out", str(work / "out")]
        if args.sequential:
            command.append("--sequential")
        if args.early_batch_size:
            command += ["--early-batch-size", str(args.early_batch_size)]
        if args.shape == "paper":
            flags, _ = prepare(work, num_channels=args.num_channels, train=args.train, test=args.test)
            command += ["--data", str(work / "data"), "--checkpoint", str(work / "checkpoint.pt"), "--model-flags", flags,
                        "--blocks", ",".join(map(str, BLOCKS)), "--steps", ",".join(map(str, STEPS))]
        if not sys.stderr.isatty():
            command.append("--quiet")
        started = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "PROBE_CACHE": str(work / "cache")})
        total = time.perf_counter() - started
        metrics = json.loads((work / "out" / "metrics.json").read_text())
        dim = metrics["features"]["dim"]
        iterations = metrics["ensemble_iterations"]
        steps = sum(iterations) if args.sequential else max(iterations)  # the members' steps run one after another
        size = metrics["features"]["flags"]["image_size"]
        print(json.dumps({
            "command": " ".join(command[:1] + ["segment", "..."]), "shape": args.shape, "train": args.train,
            "test": args.test, "members": args.members, "batched": not args.sequential,
            "precision": metrics["precision"], "runtime": metrics["runtime"], "feature_dim": dim, "image_size": size,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2, 3),
            "dense_features_gb": round(args.train * dim * size * size * 4 / 1e9, 2),
            "seconds": {k: round(v, 1) for k, v in metrics["seconds"].items()}, "total_seconds": round(total, 1),
            "training_pixels": metrics["training_pixels"],
            "iterations_per_member": metrics["ensemble_iterations"],
            "early_batch_size": metrics["options"]["early_batch_size"],
            "training_ms_per_step": round(1000 * metrics["seconds"]["training"] / steps, 2),
            "miou": round(metrics["miou"], 2),
        }))


if __name__ == "__main__":
    main()
