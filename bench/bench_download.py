"""The headline command from nothing, at the paper's shape: `probe grid --dataset horse21` with an empty cache and
PROBE_MIRROR pointing at a loopback mirror of the authors' storage that holds Horse-21 in their layout (30 train /
20 test 256x256 images, generated) and lsun_horse.pt at the released model's flags (random weights, 2.2 GB). The
installed command downloads, verifies and runs; then runs again and must download nothing. Prints wall time, peak
RSS and the requests the mirror saw for each run.

    python bench/bench_download.py [--keep DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from http_mirror import Mirror  # noqa: E402
from paper_shape import write_checkpoint, write_data  # noqa: E402

from probe.data.registry import lookup  # noqa: E402

CHECKPOINT = "models/ddpm_checkpoints/lsun_horse.pt"
GRID = ["grid", "--dataset", "horse21", "--train-number", "2", "--test-number", "2", "--blocks", "6", "--steps", "50"]


def build_mirror(folder: Path) -> None:
    """datasets.tar.gz (horse_21/real/{train,test}) and lsun_horse.pt at the paper's flags, once per folder."""
    horse = lookup("horse21")
    if not (folder / "datasets.tar.gz").exists():
        tree = Path(tempfile.mkdtemp(dir=folder.parent))
        write_data(tree / "horse_21" / "real", 256, horse.train, horse.test, seed=0)
        with tarfile.open(folder / ".datasets.tar.gz", "w:gz") as tar:
            tar.add(tree / "horse_21", arcname="horse_21")
        os.replace(folder / ".datasets.tar.gz", folder / "datasets.tar.gz")
        shutil.rmtree(tree)
    if not (folder / CHECKPOINT).exists():
        (folder / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(folder / ".lsun_horse.pt", horse.model_flags, seed=0)
        os.replace(folder / ".lsun_horse.pt", folder / CHECKPOINT)


def timed(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, stdout) of the installed command under /usr/bin/time -v."""
    probe = str(Path(sys.executable).with_name("probe"))
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", probe, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"probe {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1e6
    return wall, rss, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="Folder for the mirror (reused) and the runs (default: temporary).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_download-"))
    mirror_folder = work / "mirror"
    mirror_folder.mkdir(parents=True, exist_ok=True)
    build_mirror(mirror_folder)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    mirror = Mirror(mirror_folder)
    env = {**os.environ, "PROBE_CACHE": str(cache), "PROBE_MIRROR": mirror.url}
    print(f"load average before: {os.getloadavg()[0]:.2f}; mirror {mirror.url} "
          f"({(mirror_folder / CHECKPOINT).stat().st_size / 1e9:.2f} GB checkpoint, "
          f"{(mirror_folder / 'datasets.tar.gz').stat().st_size / 1e6:.1f} MB datasets.tar.gz)")
    rows = []
    for run in ("first (empty cache)", "second"):
        before = len(mirror.requests)
        out = work / "runs" / ("g" if not rows else "g2")
        wall, rss, stdout = timed([*GRID, "--threads", str(args.threads), "--out", str(out), "--quiet"], env)
        rows.append((run, wall, rss, mirror.requests[before:], stdout))
    mirror.close()
    for run, wall, rss, requests, stdout in rows:
        asked = ", ".join(f"{method} {path}" + (f" ({rng})" if rng else "") for method, path, rng in requests) or "none"
        print(f"{run}: {wall:.1f} s, peak RSS {rss:.2f} GB, requests: {asked}; {stdout}")
    if rows[1][3]:
        sys.exit("the second run downloaded again")


if __name__ == "__main__":
    main()
