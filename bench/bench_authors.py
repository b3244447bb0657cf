"""Side by side, in one run: the authors' released pipeline and the installed `probe segment`, on the same generated
data and the same random-weight checkpoint.

    python bench/bench_authors.py --ddpm-segmentation ~/src/ddpm-segmentation --guided-diffusion ~/src/guided-diffusion
    python bench/bench_authors.py ... --size 64 --num-channels 32 --train 2 --test 2     # the plumbing, in a minute

The two folders are the user's snapshots of yandex-research/ddpm-segmentation and openai/guided-diffusion (never
part of this repository). Defaults are the paper's shape at num_channels 64: 256x256 ADM, blocks {5,6,7,8,12} x
steps {50,150,250} (D = 2112), 10 train / 20 test images, 10 members. The data is the project's face-parts
generator (10 classes) drawn with `--data-seed`; a different seed gives a held-back dataset of the same shape.

Their side is `train_interpreter.py` under bench/authors_cpu.py, which shims only what a CPU lacks (see there),
with `--use_fp16 False` (see cpu_flags: both sides compute the UNet in float32); ours is the installed `probe`
command from an empty activation cache. Each runs in a child process under /usr/bin/time -v (peak RSS of the process) with the machine's load average printed before it. Prints a table row
per side, the ratios (their wall / ours, their peak RSS / ours, mIoU difference) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paper_shape import BLOCKS, STEPS, feature_dim, prepare

HERE = Path(__file__).resolve().parent


def load_average() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(command: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run `command` under /usr/bin/time -v with its output in `log`; (wall seconds, peak RSS in GB)."""
    usage = log.with_suffix(".time")
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", "-o", str(usage), *command], env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{command[0]} failed (exit {done.returncode}); its output is in {log}")
    kilobytes = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", usage.read_text()).group(1))
    return wall, kilobytes / 1024 ** 2


def cpu_flags(flags: str) -> str:
    """Their flags for a CPU: with use_fp16 their extractor converts the UNet to float16, which a GPU runs fast and a
    CPU runs through slow fallback kernels (one core, minutes per image at 256x256); the CPU computes in float32, as
    `probe` does with the same flags."""
    return flags.replace("--use_fp16 True", "--use_fp16 False")


def run_authors(args, work: Path, data: Path, checkpoint: Path, flags: str, num_classes: int, env: dict) -> dict:
    experiment = {
        "exp_dir": str(work / "authors"), "model_type": "ddpm", "category": "ffhq_34",  # palette and names only
        "number_class": num_classes, "ignore_label": 255,
        "training_path": str(data / "train"), "testing_path": str(data / "test"), "model_path": str(checkpoint),
        "dim": [args.size, args.size, feature_dim(flags, args.blocks, args.steps)],
        "steps": args.steps, "blocks": args.blocks, "model_num": args.members, "batch_size": 64,
        "training_number": args.train, "testing_number": args.test,
        "upsample_mode": "bilinear", "share_noise": True, "input_activations": False,
    }
    (work / "authors.json").write_text(json.dumps(experiment, indent=1))
    timings = work / "authors_stages.json"
    command = [sys.executable, str(HERE / "authors_cpu.py"), "--ddpm-segmentation", str(args.ddpm_segmentation),
               "--guided-diffusion", str(args.guided_diffusion), "--timings", str(timings), "--",
               "--exp", str(work / "authors.json"), "--seed", str(args.seed), *cpu_flags(flags).split()]
    print(f"authors' train_interpreter.py ({load_average()})", flush=True)
    wall, rss = timed(command, env, work / "authors.log")
    output = (work / "authors.log").read_text()
    miou = float(re.search(r"Overall mIoU:\s+([0-9.eE+-]+)", output).group(1)) * 100
    stages = json.loads(timings.read_text())
    return {"run": "authors' train_interpreter.py (CPU shims only)", "wall_seconds": wall, "peak_rss_gb": rss,
            "miou": miou, "stages": {"prepare + fit": stages["prepare"] + stages["fit"],
                                     "evaluation": stages["evaluation"]}}


def run_probe(args, work: Path, data: Path, checkpoint: Path, flags: str, env: dict) -> dict:
    probe = shutil.which("probe") or str(Path(sys.executable).parent / "probe")
    command = [probe, "segment", "--data", str(data), "--checkpoint", str(checkpoint), "--model-flags", flags,
               "--blocks", ",".join(map(str, args.blocks)), "--steps", ",".join(map(str, args.steps)),
               "--train-number", str(args.train), "--test-number", str(args.test), "--members", str(args.members),
               "--seed", str(args.seed), "--out", str(work / "probe"), "--quiet", *args.probe_args.split()]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"installed probe segment ({load_average()})", flush=True)
    wall, rss = timed(command, {**env, "PROBE_CACHE": str(work / "cache")}, work / "probe.log")
    metrics = json.loads((work / "probe" / "metrics.json").read_text())
    return {"run": " ".join(["installed `probe segment`", args.probe_args]).strip(), "wall_seconds": wall,
            "peak_rss_gb": rss, "miou": metrics["miou"], "stages": metrics["seconds"]}


def row(result: dict) -> str:
    stages = ", ".join(f"{k} {v:,.0f} s" for k, v in result["stages"].items())
    return (f"| {result['run']} | {result['wall_seconds']:,.0f} s ({stages}) | {result['peak_rss_gb']:.2f} GB "
            f"| {result['miou']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm-segmentation", type=Path, required=True, help="snapshot of yandex-research/ddpm-segmentation")
    parser.add_argument("--guided-diffusion", type=Path, required=True, help="snapshot of openai/guided-diffusion")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num-channels", type=int, default=64)
    parser.add_argument("--blocks", type=lambda s: [int(b) for b in s.split(",")], default=BLOCKS)
    parser.add_argument("--steps", type=lambda s: [int(t) for t in s.split(",")], default=STEPS)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="both sides' seed (noise, members)")
    parser.add_argument("--data-seed", type=int, default=0, help="the generated dataset (another one: held back)")
    parser.add_argument("--weights-seed", type=int, default=0, help="the random checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both sides (default: all cores)")
    parser.add_argument("--only", choices=["authors", "probe"], default=None, help="run one side only")
    parser.add_argument("--probe-args", default="", help='more options of our side, e.g. "--early-batch-size 512"')
    parser.add_argument("--keep", type=Path, default=None, help="keep data, checkpoint, logs and outputs in this folder")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-authors-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        data, checkpoint = work / "data", work / "checkpoint.pt"
        flags, num_classes = prepare(work, size=args.size, num_channels=args.num_channels, train=args.train,
                                     test=args.test, data_seed=args.data_seed, weights_seed=args.weights_seed)
        results = []
        if args.only in (None, "authors"):
            results.append(run_authors(args, work, data, checkpoint, flags, num_classes, env))
        if args.only in (None, "probe"):
            results.append(run_probe(args, work, data, checkpoint, flags, env))
    print(f"shape: {args.size}x{args.size}, num_channels {args.num_channels}, blocks {args.blocks} x steps {args.steps}, "
          f"D = {feature_dim(flags, args.blocks, args.steps)}, {args.train} train / {args.test} test images, "
          f"{num_classes} classes, {args.members} members, data seed {args.data_seed}, seed {args.seed}")
    print("| run | wall | peak RSS | mIoU |\n|---|---|---|---|")
    for result in results:
        print(row(result))
    summary = {"date": time.strftime("%Y-%m-%d"), "load_average_after": os.getloadavg(), "cores": os.cpu_count(),
               "results": results}
    if len(results) == 2:
        theirs, ours = results
        summary["ratios"] = {"wall": theirs["wall_seconds"] / ours["wall_seconds"],
                             "peak_rss": theirs["peak_rss_gb"] / ours["peak_rss_gb"],
                             "miou_difference": ours["miou"] - theirs["miou"]}
        print(f"wall theirs / ours = {summary['ratios']['wall']:.2f}, peak RSS theirs / ours = "
              f"{summary['ratios']['peak_rss']:.2f}, mIoU ours - theirs = {summary['ratios']['miou_difference']:+.2f} points")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
