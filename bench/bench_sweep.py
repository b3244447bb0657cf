"""Benchmark the sweep runner through the installed `probe` command on the embedded default:

    python bench/bench_sweep.py

1. a 12-cell sweep (`probe efficiency --train-numbers 1,5,20 --seeds 0,1 --backbones ddpm,pixels`) in this process
   (2 threads) against `--ray local --threads 1` (two cells at once on the 2 cores): wall time and the peak RSS of
   the whole process tree (sampled every 0.2 s from /proc);
2. the runner's overhead for one cell against a bare `probe segment` of the same fit (20 of 20 training images, so
   the drawn subset is the split), both from a warm activation cache;
3. the sweep killed (SIGINT) once half its cells are written, then rerun: the rerun's time and how many cells it
   computed.

Each part starts from an empty cache unless said otherwise. Prints one JSON line; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["efficiency", "--train-numbers", "1,5,20", "--seeds", "0,1", "--backbones", "ddpm,pixels", "--quiet"]


def probe_command() -> str:
    found = shutil.which("probe") or str(Path(sys.executable).parent / "probe")
    if not Path(found).is_file():
        sys.exit("the probe command is not installed: pip install -e '.[ray]' first")
    return found


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def timed(args: list[str], cache: Path, stop_when=None) -> dict:
    """Run `probe args`; wall seconds and the peak RSS of its process tree. `stop_when()` true: send SIGINT."""
    started = time.perf_counter()
    process = subprocess.Popen([probe_command(), *args], env={**os.environ, "PROBE_CACHE": str(cache)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        if stop_when is not None and stop_when():
            process.send_signal(signal.SIGINT)
            stop_when = None
        time.sleep(0.2)
    _, stderr = process.communicate()
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gb": round(peak / 1e9, 2),
            "exit": process.returncode, "log": [line for line in stderr.splitlines() if "cells reused" in line]}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="probe-bench-sweep-") as folder:
        work = Path(folder)
        report = {"load_before": os.getloadavg()}
        report["in_process"] = timed([*SWEEP, "--out", str(work / "here")], work / "cache_here")
        report["ray_local_threads_1"] = timed([*SWEEP, "--ray", "local", "--threads", "1", "--out", str(work / "ray")],
                                              work / "cache_ray")
        one_cell = ["efficiency", "--train-numbers", "20", "--seeds", "0", "--backbones", "ddpm", "--quiet"]
        warm = work / "cache_here"
        report["one_cell_sweep"] = timed([*one_cell, "--out", str(work / "one")], warm)
        report["bare_segment"] = timed(["segment", "--train-number", "20", "--quiet", "--out", str(work / "seg")], warm)
        cells = work / "killed" / "cells"
        report["killed_at_half"] = timed([*SWEEP, "--out", str(work / "killed")], work / "cache_killed",
                                         stop_when=lambda: cells.is_dir() and len(list(cells.glob("*.json"))) >= 6)
        report["cells_written_before_kill"] = len(list(cells.glob("*.json")))
        report["resumed"] = timed([*SWEEP, "--out", str(work / "killed")], work / "cache_killed")
        print(json.dumps(report))


if __name__ == "__main__":
    main()
