"""Benchmark `probe segment`: peak RSS, time split (extraction, training, prediction), training pixels per second
(batch-64 steps summed over the members, times 64, over the training time).

    python bench/bench_segment.py default            # the embedded default domain and model
    python bench/bench_segment.py paper --train 20   # the paper's 256x256 ADM layout at num_channels 64,
                                                     # blocks {5,6,7,8,12}, steps {50,150,250}, generated images

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

import numpy as np
import torch
from PIL import Image

PAPER_FLAGS = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 "
               "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 64 --num_head_channels 64 "
               "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True")


def write_paper_shape(folder: Path, train: int, test: int) -> tuple[Path, Path]:
    """A 256x256 face-parts dataset (the project's generator) and a random-weight checkpoint of the paper's layout."""
    from probe.data.default_domain import CLASSES, image_rng, render
    from probe.models import UNet
    from probe.models.flags import ModelFlags, parse_flags

    for split, count in (("train", train), ("test", test)):
        (folder / "data" / split).mkdir(parents=True)
        for i in range(count):
            image, labels = render(image_rng(0, split, i), 256)
            Image.fromarray(image).save(folder / "data" / split / f"{i:03d}.png")
            np.save(folder / "data" / split / f"{i:03d}.npy", labels)
    (folder / "data" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)
    checkpoint = folder / "adm256_c64.pt"
    torch.save(UNet(ModelFlags(**parse_flags(PAPER_FLAGS))).state_dict(), checkpoint)
    return folder / "data", checkpoint


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
    parser.add_argument("--sequential", action="store_true", help="members one by one instead of batched")
    parser.add_argument("--precision", default="auto", help="the ensemble's first-layer products: auto, float32, bfloat16")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="probe-bench-") as folder:  # cache and outputs removed at the end
        work = Path(folder)
        command = [probe_command(), "segment", "--train-number", str(args.train), "--test-number", str(args.test),
                   "--members", str(args.members), "--precision", args.precision, "--out", str(work / "out")]
        if args.sequential:
            command.append("--sequential")
        if args.shape == "paper":
            data, checkpoint = write_paper_shape(work, args.train, args.test)
            command += ["--data", str(data), "--checkpoint", str(checkpoint), "--model-flags", PAPER_FLAGS]
        if not sys.stderr.isatty():
            command.append("--quiet")
        started = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "PROBE_CACHE": str(work / "cache")})
        total = time.perf_counter() - started
        metrics = json.loads((work / "out" / "metrics.json").read_text())
        dim = metrics["features"]["dim"]
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
            "training_pixels_per_second": round(sum(metrics["ensemble_iterations"]) * 64 / metrics["seconds"]["training"]),
            "miou": round(metrics["miou"], 2),
        }))


if __name__ == "__main__":
    main()
