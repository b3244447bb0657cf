"""The numbers the docs quote from runs on the embedded default, measured on this machine in one go.

    python analysis/docs_numbers.py                  # run everything (about 15 min on 2 idle cores), write both
    python analysis/docs_numbers.py --only segment   # rerun some runs, keep the others' numbers
    python analysis/docs_numbers.py --check          # run nothing: do the docs quote docs/numbers.json?

Each run is the command the docs quote (RUNS), in a fresh temporary cache and out folder, timed from start to exit
as a user would time it, with the load average sampled while it runs. The numbers go to docs/numbers.json with the
CPU model, its AMX support, the core count and the date (mIoU depends on the CPU kind: Intel AMX and AMD sum in
another order), then every quote of QUOTES is rewritten in its file with them. tests/test_docs_numbers.py checks
that each quote in the docs is what docs/numbers.json gives.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ROOT / "docs" / "numbers.json"

# name -> the command the docs quote (its --out and the cache are the script's)
RUNS = {
    "segment": ["probe", "segment"],
    "segment_threads1": ["probe", "segment", "--threads", "1"],
    "grid": ["probe", "grid"],
    "grid_random": ["probe", "grid", "--backbone", "random"],
    "layers": ["probe", "layers", "--backbones", "ddpm,mae", "--threads", "1"],
    "similarity": ["probe", "similarity"],
    "correspond": ["probe", "correspond"],
    "layers_correspondence": ["probe", "layers", "--task", "correspondence", "--backbones", "ddpm,mae", "--threads", "1"],
}

# (file, template): the template formatted with quoted_values(numbers) is in the file; a single space in a template
# matches any run of whitespace (a quote may break across lines), and each template ends with literal text.
QUOTES = [
    ("README.md", "install not counted: {segment_seconds:.0f} s to run; mIoU {segment_miou:.2f}; results in"),
    ("docs/getting-started.md", "to run; mIoU {segment_miou:.2f}; results in"),
    ("docs/notebooks.md", '# {{"miou": {segment_miou:.2f}, "per_class"'),
    ("docs/sweeps.md", "(`docs/numbers.json`) gave {segment_miou:.2f} with {segment_threads} threads and "
                       "{segment_threads1_miou:.2f} with 1,"),
    ("docs/experiments/segment.md", "# the embedded default: about {segment_seconds:.0f} s on a 2-core CPU"),
    ("docs/experiments/grid.md", "# 18 blocks x 9 steps of the shipped DDPM, {grid_seconds:.0f} s"),
    ("docs/experiments/grid.md", "the best cell is block {grid_block} at t = {grid_step} ({grid_miou:.1f} %); with "
                                 "random weights the best is {grid_random_miou:.1f} %"),
    ("docs/embedded-default.md", "| `probe grid` (18 blocks × 9 steps, {grid_seconds:.0f} s) | best cell block "
                                 "{grid_block} at t = {grid_step}: {grid_miou:.1f} %; random weights best "
                                 "{grid_random_miou:.1f} % |"),
    ("docs/embedded-default.md", "DDPM best at block {layers_ddpm_block} (relative depth {layers_ddpm_depth:.2f}, "
                                 "t = {layers_ddpm_step}): {layers_ddpm_miou:.1f} %; MAE best at block "
                                 "{layers_mae_block} ({layers_mae_depth:.2f}): {layers_mae_miou:.1f} %"),
    ("docs/experiments/layers.md", "the default 9 steps, {lc_seconds:.0f} s on one thread at a load average of "
                                   "{lc_load:.1f}): the DDPM matches best at block {lc_ddpm_block} (relative depth "
                                   "{lc_ddpm_depth:.2f}, t = {lc_ddpm_step}, PCK per image {lc_ddpm_pck:.1f} %), the "
                                   "MAE at block {lc_mae_block} ({lc_mae_depth:.2f}, {lc_mae_pck:.1f} %); the same "
                                   "position scores {lc_same:.1f} %"),
    ("docs/experiments/layers.md", "9 steps; {layers_cells} probes, {layers_duration} on one thread of the 2-core "
                                   "CPU at a load average of {layers_load:.1f})"),
    ("docs/experiments/layers.md", "the DDPM peaks at block {layers_ddpm_block} (relative depth "
                                   "{layers_ddpm_depth:.2f}, t = {layers_ddpm_step}, {layers_ddpm_miou:.1f} %), the "
                                   "MAE stays between {layers_mae_low:.1f} and {layers_mae_miou:.1f} % (best block "
                                   "{layers_mae_block}, {layers_mae_depth:.2f})"),
    ("docs/experiments/similarity.md", "took {similarity_seconds:.0f} s on the 2-core CPU"),
    ("docs/experiments/similarity.md", "DDPM block {similarity_cka_a} and MAE block {similarity_cka_b} "
                                       "({similarity_cka:.2f}); by mutual k-NN, DDPM block {similarity_knn_a} and MAE "
                                       "block {similarity_knn_b} ({similarity_knn:.2f})"),
    ("docs/experiments/correspond.md", "took {correspond_seconds:.0f} s on the 2-core CPU"),
    ("docs/experiments/correspond.md", "best cell is block {correspond_block} at t = {correspond_step}: PCK per "
                                       "image {correspond_pck_005:.1f} / {correspond_pck:.1f} / "
                                       "{correspond_pck_015:.1f} % at α = 0.05 / 0.1 / 0.15"),
    ("docs/experiments/correspond.md", "keypoint's own position scores {correspond_same:.1f} % at α = 0.1"),
]


def machine() -> dict:
    """The CPU model, whether it has AMX, the cores and the date: what the numbers depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    return {"cpu": model.group(1).strip() if model else "unknown", "amx": bool(flags and "amx_tile" in flags.group(1)),
            "cores": os.cpu_count(), "date": datetime.date.today().isoformat()}


def timed(command: list[str], out: Path, cache: Path) -> dict:
    """Run `command --out out --quiet` in the fresh cache `cache`: its wall seconds and the 1-minute load average
    sampled every 5 s while it ran (mean, max)."""
    env = {**os.environ, "PROBE_CACHE": str(cache)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", *command, "--out", str(out), "--quiet"], cwd=out.parent,
                               env=env)
    loads = [os.getloadavg()[0]]
    while True:
        try:
            code = process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            loads.append(os.getloadavg()[0])
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
    return {"command": " ".join(command), "seconds": round(time.perf_counter() - started, 1),
            "load_average": {"mean": round(sum(loads) / len(loads), 2), "max": round(max(loads), 2)}}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def segment_numbers(out: Path) -> dict:
    metrics = read_json(out / "metrics.json")
    return {"miou": metrics["miou"], "threads": metrics["runtime"]["threads"], "seconds_inside": metrics["seconds"]}


def grid_numbers(out: Path) -> dict:
    grid = read_json(out / "grid.json")
    return {"best": grid["best"], "cells": grid["cells"], "threads": grid["threads"]}


def layers_numbers(out: Path) -> dict:
    import pandas as pd

    summary = read_json(out / "layers.json")
    table = pd.read_csv(out / "layers.csv")
    backbones = {}
    for entry in summary["backbones"]:
        rows = table[table["backbone"] == entry["label"]]
        backbones[entry["label"]] = {**entry["best"], "lowest_miou": float(rows["miou"].min())}
    return {"backbones": backbones, "cells": summary["cells"], "threads": summary["threads"]}


def similarity_numbers(out: Path) -> dict:
    summary = read_json(out / "similarity.json")
    return {"best": {entry["metric"]: entry for entry in summary["alignment"]}, "threads": summary["threads"]}


def correspond_numbers(out: Path) -> dict:
    metrics = read_json(out / "metrics.json")
    return {"best": metrics["best"], "pck_image": metrics["pck_image"], "pck_point": metrics["pck_point"],
            "same_position": metrics["same_position"]["pck_image"], "cells": len(metrics["cells"]),
            "threads": metrics["threads"]}


def layers_correspondence_numbers(out: Path) -> dict:
    summary = read_json(out / "layers.json")
    return {"backbones": {entry["label"]: entry["best_layer"] for entry in summary["backbones"]},
            "same_position": summary["backbones"][0]["same_position"]["pck_image"]["0.1"]}


READERS = {"segment": segment_numbers, "segment_threads1": segment_numbers, "grid": grid_numbers,
           "grid_random": grid_numbers, "layers": layers_numbers, "similarity": similarity_numbers,
           "correspond": correspond_numbers, "layers_correspondence": layers_correspondence_numbers}


def duration(seconds: float) -> str:
    """"8 min 13 s", or "45 s" under a minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def block(layer: str) -> int:
    """12 of "block12"."""
    return int(layer.removeprefix("block"))


def quoted_values(numbers: dict) -> dict:
    """The values QUOTES format, by name, from docs/numbers.json's content."""
    runs = numbers["runs"]
    ddpm, mae = runs["layers"]["backbones"]["ddpm"], runs["layers"]["backbones"]["mae"]
    cka, knn = runs["similarity"]["best"]["cka"], runs["similarity"]["best"]["mutual_knn"]
    correspond = runs["correspond"]
    return {
        "segment_miou": runs["segment"]["miou"], "segment_threads": runs["segment"]["threads"],
        "segment_seconds": runs["segment"]["seconds"], "segment_threads1_miou": runs["segment_threads1"]["miou"],
        "grid_seconds": runs["grid"]["seconds"], "grid_block": block(runs["grid"]["best"]["layer"]),
        "grid_step": runs["grid"]["best"]["step"], "grid_miou": runs["grid"]["best"]["miou"],
        "grid_random_miou": runs["grid_random"]["best"]["miou"],
        "layers_cells": runs["layers"]["cells"], "layers_duration": duration(runs["layers"]["seconds"]),
        "layers_load": runs["layers"]["load_average"]["mean"],
        "layers_ddpm_block": block(ddpm["layer"]), "layers_ddpm_depth": ddpm["relative_depth"],
        "layers_ddpm_step": ddpm["step"], "layers_ddpm_miou": ddpm["miou"],
        "layers_mae_block": block(mae["layer"]), "layers_mae_depth": mae["relative_depth"],
        "layers_mae_miou": mae["miou"], "layers_mae_low": mae["lowest_miou"],
        "similarity_seconds": runs["similarity"]["seconds"],
        "similarity_cka_a": block(cka["layer_a"]), "similarity_cka_b": block(cka["layer_b"]),
        "similarity_cka": cka["value"], "similarity_knn_a": block(knn["layer_a"]),
        "similarity_knn_b": block(knn["layer_b"]), "similarity_knn": knn["value"],
        "correspond_seconds": runs["correspond"]["seconds"], "correspond_block": block(correspond["best"]["block"]),
        "correspond_step": correspond["best"]["step"], "correspond_pck": correspond["pck_image"]["0.1"],
        "correspond_pck_005": correspond["pck_image"]["0.05"], "correspond_pck_015": correspond["pck_image"]["0.15"],
        "correspond_same": correspond["same_position"]["0.1"],
        **correspondence_layers_values(runs["layers_correspondence"]),
    }


def correspondence_layers_values(run: dict) -> dict:
    """The `lc_*` values of `probe layers --task correspondence`'s run."""
    ddpm, mae = run["backbones"]["ddpm"], run["backbones"]["mae"]
    return {"lc_seconds": run["seconds"], "lc_load": run["load_average"]["mean"], "lc_same": run["same_position"],
            "lc_ddpm_block": block(ddpm["layer"]), "lc_ddpm_depth": ddpm["relative_depth"],
            "lc_ddpm_step": ddpm["step"], "lc_ddpm_pck": ddpm["pck_image"], "lc_mae_block": block(mae["layer"]),
            "lc_mae_depth": mae["relative_depth"], "lc_mae_pck": mae["pck_image"]}


def pattern(template: str) -> re.Pattern:
    """A regex matching `template` with any values in its fields (one group per field) and any whitespace where it
    has a space."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(r"\s+".join(re.escape(word) for word in literal.split(" ")))
        if field is not None:
            parts.append(r"([^\s|()%:;,]+(?: min \d+ s| s)?)" if field == "layers_duration" else r"([^\s|()%:;,]+?)")
    return re.compile("".join(parts))


def render_fields(template: str, values: dict) -> list[str]:
    """Each field of `template` formatted with `values`."""
    return [format(values[field], spec) for _, field, spec, _ in string.Formatter().parse(template)
            if field is not None]


def missing_quotes(numbers: dict, root: Path = ROOT) -> list[str]:
    """The quotes (file: text) that the docs do not state as docs/numbers.json gives them."""
    values = quoted_values(numbers)
    missing = []
    for name, template in QUOTES:
        text = template.format(**values)
        flat = " ".join((root / name).read_text(encoding="utf-8").split())
        if " ".join(text.split()) not in flat:
            missing.append(f"{name}: {text}")
    return missing


def rewrite(text: str, template: str, values: dict) -> str:
    """`text` with every occurrence of `template` (whatever values it held) holding `values`; its own whitespace
    and line breaks kept. Raises ValueError when the template is not in `text`."""
    fields = render_fields(template, values)
    matches = list(pattern(template).finditer(text))
    if not matches:
        raise ValueError(f"not found: {template!r}")
    for match in reversed(matches):
        for group in range(len(fields), 0, -1):
            text = text[:match.start(group)] + fields[group - 1] + text[match.end(group):]
    return text


def write_docs(numbers: dict, root: Path = ROOT) -> None:
    values = quoted_values(numbers)
    for name, template in QUOTES:
        path = root / name
        path.write_text(rewrite(path.read_text(encoding="utf-8"), template, values), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated runs of {','.join(RUNS)} (default: all)")
    parser.add_argument("--check", action="store_true", help="run nothing; exit 1 if a doc misquotes numbers.json")
    parser.add_argument("--keep", type=Path, help="keep the runs' out folders here (default: deleted)")
    args = parser.parse_args()
    if args.check:
        missing = missing_quotes(read_json(NUMBERS))
        print("\n".join(missing) or "every quote matches docs/numbers.json")
        sys.exit(1 if missing else 0)
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}: choose from {list(RUNS)}")
    numbers = read_json(NUMBERS) if NUMBERS.exists() else {"runs": {}}
    with tempfile.TemporaryDirectory(prefix="docs-numbers-") as scratch:
        work = args.keep or Path(scratch)
        for name in names:
            print(f"{name}: {' '.join(RUNS[name])}", flush=True)
            (work / name).mkdir(parents=True, exist_ok=True)
            run = timed(RUNS[name], work / name / "out", Path(scratch) / f"cache-{name}")
            numbers["runs"][name] = {**run, **READERS[name](work / name / "out"), **machine()}
            print(f"  {json.dumps(numbers['runs'][name])}", flush=True)
            numbers = {"about": "written by analysis/docs_numbers.py; quoted by the docs (tests/test_docs_numbers.py)",
                       "machine": machine(),
                       "runs": {name: numbers["runs"][name] for name in RUNS if name in numbers["runs"]}}
            NUMBERS.write_text(json.dumps(numbers, indent=2) + "\n")  # after each run: a failed run keeps the others
    if set(numbers["runs"]) == set(RUNS):
        write_docs(numbers)
        print(f"wrote {NUMBERS.relative_to(ROOT)} and the docs' quotes")


if __name__ == "__main__":
    main()
