"""Benchmark `probe synthesize` and `probe deeplab` on the embedded default, through the installed command.

    python bench/bench_synthesize.py --n 100,1000 --sampler ddim:10     # images/s and peak RSS against --n
    python bench/bench_synthesize.py --n 8 --sampler ddpm               # the authors' full 1000-step sampler
    python bench/bench_synthesize.py --n 100 --sampler ddim:10 --deeplab resnet50,resnet101

Trains one ensemble with `probe segment` first, then runs each `probe synthesize` in its own child process and
reads that child's peak RSS (os.wait4) and the sampling and labelling seconds the run recorded (synthesize.json):
images per second of each stage, and whether memory grows with --n. `--deeplab` then times one epoch of
`probe deeplab` per architecture on the largest synthesized set. Prints one JSON line per measurement; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def probe_command() -> str:
    found = shutil.which("probe") or str(Path(sys.executable).parent / "probe")
    if not Path(found).is_file():
        sys.exit("the probe command is not installed: pip install -e . first")
    return found


def run(args: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one `probe` child."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    child = subprocess.Popen([probe_command(), *args, "--quiet"], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"probe {' '.join(args)} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="100,1000", help="comma-separated sample counts")
    parser.add_argument("--sampler", default="ddim:10")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deeplab", default="", help="architectures to time one epoch of, e.g. resnet50,resnet101")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-synthesize-"))
    os.environ.setdefault("PROBE_CACHE", str(work / "cache"))
    threads = ["--threads", str(args.threads)]
    try:
        seconds, _ = run(["segment", "--out", str(work / "segment"), *threads], args.threads)
        print(json.dumps({"stage": "segment", "seconds": round(seconds, 1)}), flush=True)
        largest = None
        for n in [int(v) for v in args.n.split(",")]:
            out = work / f"synth{n}"
            seconds, rss = run(["synthesize", "--ensemble", str(work / "segment" / "ensemble"), "--n", str(n),
                                "--sampler", args.sampler, "--chunk-size", str(args.chunk_size), "--out", str(out),
                                *threads], args.threads)
            record = json.loads((out / "synthesize.json").read_text())
            stages = record["seconds"]
            print(json.dumps({"stage": "synthesize", "n": n, "sampler": args.sampler, "chunk_size": args.chunk_size,
                              "threads": args.threads, "wall_seconds": round(seconds, 1), "peak_rss_gb": round(rss, 3),
                              "sampling_images_per_s": round(n / stages["sampling"], 3),
                              "labelling_images_per_s": round(n / stages["labelling"], 3)}), flush=True)
            largest = out
        for arch in [a for a in args.deeplab.split(",") if a]:
            out = work / f"deeplab_{arch}"
            seconds, rss = run(["deeplab", "--train-data", str(largest), "--arch", arch, "--epochs", "1",
                                "--out", str(out), *threads], args.threads)
            history = pd.read_csv(out / "history.csv")
            images = len(list((largest / "train").glob("*.png")))
            print(json.dumps({"stage": "deeplab", "arch": arch, "train_images": images, "threads": args.threads,
                              "epoch_seconds": round(float(history["train_seconds"][0]), 1),
                              "validation_seconds": round(float(history["val_seconds"][0]), 1),
                              "wall_seconds": round(seconds, 1), "peak_rss_gb": round(rss, 3)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
