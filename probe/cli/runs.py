"""`probe runs`: one line per run folder (what each command wrote into --out), so runs compare at a glance."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from probe.cli.options import user_errors
from probe.errors import ProbeError

RUN_RECORD = "probe-run.json"  # what probe.utils.outputs writes into every --out
COLUMNS = ("folder", "command", "written", "data", "backbone", "result", "seconds")


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders at or up to two levels below each path, in name order."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise ProbeError(f"{path} is not a folder: give run folders (--out of a command) or folders holding them")
        found += sorted({record.parent for pattern in (RUN_RECORD, f"*/{RUN_RECORD}", f"*/*/{RUN_RECORD}")
                         for record in path.glob(pattern)})
    return found


def option(argv: list[str], *names: str) -> str | None:
    """The value given to the first of `names` in a command line, or None."""
    for name in names:
        if name in argv[:-1]:
            return argv[argv.index(name) + 1]
    return None


def read(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def seconds_of(summary: dict) -> float | None:
    """A summary's run time: `seconds`, or the sum of its parts when it is split (segment's extraction, training,
    prediction)."""
    seconds = summary.get("seconds")
    return round(sum(seconds.values()), 1) if isinstance(seconds, dict) else seconds


def result_of(folder: Path) -> tuple[str, float | None]:
    """The run's headline number(s) from the summary file its command writes (or its first table's size), and its
    seconds."""
    metrics = read(folder, "metrics.json")
    if "miou" in metrics:
        spread = f" ± {metrics['miou_std']:.2f}" if "miou_std" in metrics else ""
        return f"mIoU {metrics['miou']:.2f}{spread}", seconds_of(metrics)
    if "pck_image" in metrics:
        best, scores = metrics["best"], metrics["pck_image"]
        at = "" if best["step"] is None else f" t={best['step']}"
        key = "0.1" if "0.1" in scores else next(iter(scores))
        return f"best {best['block']}{at}: PCK@{key} per image {scores[key]:.2f}", metrics.get("seconds")
    if grid := read(folder, "grid.json"):
        best = grid["best"]
        return f"best {best['layer']} t={best['step']}: mIoU {best['miou']:.2f}", grid.get("seconds")
    if layers := read(folder, "layers.json"):
        bests = [f"{entry['label']} {entry['best']['layer']}: {entry['best']['miou']:.2f}"
                 for entry in layers["backbones"]]
        return "best " + ", ".join(bests), layers.get("seconds")
    if similarity := read(folder, "similarity.json"):
        pairs = [f"{entry['metric']} {entry['backbone_a']} {entry['layer_a']} ~ {entry['backbone_b']} "
                 f"{entry['layer_b']} {entry['value']:.2f}" for entry in similarity["alignment"]]
        return "; ".join(pairs) or f"{similarity['cells']} cells", similarity.get("seconds")
    tables = sorted(folder.glob("*.csv"))
    if tables:
        return f"{tables[0].name}: {sum(1 for _ in tables[0].open()) - 1} rows", None
    return "unfinished (no summary yet)", None


def backbones_of(folder: Path, argv: list[str]) -> str:
    """The backbone(s) a run used: as its summary names them, else as its command line gave them."""
    for name in ("layers.json", "similarity.json"):
        if summary := read(folder, name):
            return ",".join(entry["label"] for entry in summary["backbones"])
    for name in ("metrics.json", "grid.json"):
        if (summary := read(folder, name)) and "backbone" in summary.get("options", {}):  # segment, grid, correspond
            return summary["options"]["backbone"]["kind"]
    return option(argv, "--backbone", "--backbones") or "?"


def data_of(folder: Path, argv: list[str]) -> str:
    """The data a run used: as its summary names it (a paper dataset, a --data folder's name, default), else as its
    command line gave it."""
    for name in ("metrics.json", "grid.json", "layers.json", "similarity.json"):
        if (summary := read(folder, name)) and "dataset" in summary:
            return summary["dataset"]
    return option(argv, "--dataset") or option(argv, "--data") or "default"


def describe(folder: Path) -> dict:
    """One row of the table: the run's command line and what its summary says."""
    record = read(folder, RUN_RECORD)
    argv = record.get("argv", [])
    result, seconds = result_of(folder)
    return {"folder": str(folder), "command": record.get("command", "?"),
            "written": record.get("written", "?").replace("T", " ")[:16],
            "data": data_of(folder, argv),
            "backbone": backbones_of(folder, argv),
            "result": result, "seconds": seconds}


def aligned(table) -> str:
    """A table of strings as left-aligned text columns under their names."""
    widths = [max([len(name), *table[name].str.len()]) for name in table.columns]
    lines = [list(table.columns), *table.itertuples(index=False)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines)


@user_errors
def runs(
    paths: list[Path] = typer.Argument(None, help="Run folders, or folders holding them (default: runs)."),
    csv: Path = typer.Option(None, "--csv", help="Also write the table to this CSV file."),
):
    """A table of runs: each run folder's command, date, data, backbone and headline result (mIoU, the best cell,
    the most similar layers), read from the files the command wrote.

    Examples:

    \b
      probe runs
      probe runs runs/segment runs/grid-horse21
      probe runs analysis/results --csv runs.csv
    """
    import pandas as pd

    from probe.utils.outputs import atomic_write

    rows = [describe(folder) for folder in run_folders(paths or [Path("runs")])]
    if not rows:
        raise ProbeError(f"no run folders (with {RUN_RECORD}) in {', '.join(map(str, paths or ['runs']))}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    typer.echo(aligned(table.fillna("").astype(str)))
    if csv is not None:
        atomic_write(csv, lambda path: table.to_csv(path, index=False))
