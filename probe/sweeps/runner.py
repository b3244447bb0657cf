"""The sweep runner: a sweep is a list of independent cells (a configuration and a seed), each one call of a
`work` function, run in this process or as Ray tasks.

A sweep's `--out` is its working folder: every finished cell is written at once, atomically, to
`cells/<key>.json`, and a rerun skips the cells already there, so a killed sweep resumes where it stopped.
Each cell gets a thread budget (its CPU share) that is recorded with its result: the same sweep with the same
threads per cell gives the same records in-process and on Ray.

The folder's marker (`probe-run.json`) keeps the sweep's result-determining options (`options`: what every cell
shares, under the names the command line gives them, the threads per cell included) as its first run gave them:
a rerun that gives other values is refused before any cell runs (`check_options`), so the cells of one folder
always compare. A rerun may list other cells (more seeds, say) and change what only changes speed (Ray, GPUs per
task, progress bars). The marker also lists every run (`runs`: command line, version, times, Ray, the cells it
computed, the names it wrote, how it ended) and the names the sweep wrote (`files`).

Before any cell, a sweep that says what it extracts prints its plan (probe.sweeps.plan: cells, images, passes, the
activation cache it will write, downloads), is refused when that would not fit on the cache's disk, and stops there
with `dry_run`; after its first computed cell it says the time left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probe.errors import ProbeError, counting_files
from probe.utils.cache import cache_root
from probe.utils.extras import require
from probe.utils.outputs import read_marker, update_marker, working_dir, write_json
from probe.utils.progress import progress_bar
from probe.utils.runtime import tune_process
from probe.version import __version__

log = logging.getLogger("probe")

Work = Callable[[dict, int], dict]


@dataclass(frozen=True)
class SweepCell:
    """One configuration (a JSON-able dict) and one seed. `title` names the configuration for a person (progress
    bars); `outputs` (JSON-able) says where the cell writes files of its own, e.g. {"folder": ...}. Neither is part of
    the cell's identity, so a sweep folder moved elsewhere resumes."""
    config: dict = field(hash=False)
    seed: int = 0
    title: str = field(default="", compare=False)
    outputs: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if "seed" in self.config:
            raise ValueError("a cell's seed goes in SweepCell.seed, not in its config")

    @property
    def spec(self) -> dict:
        """What `work` receives and the record stores: the config with the outputs and the seed."""
        return {**self.config, **self.outputs, "seed": self.seed}

    @property
    def key(self) -> str:
        """A short, filesystem-safe id: the scalar config values, then a hash of the config and the seed."""
        digest = hashlib.sha256(json.dumps({**self.config, "seed": self.seed}, sort_keys=True).encode()).hexdigest()[:10]
        words = [str(v) for _, v in sorted(self.config.items()) if isinstance(v, (str, int, float, bool))]
        prefix = re.sub(r"[^A-Za-z0-9.=+]+", "_", "-".join([*words, f"s{self.seed}"]))[:48].strip("._")
        return f"{prefix}-{digest}"

    @property
    def label(self) -> str:
        """What a person reads for this cell, e.g. `pixels n=20 seed 1` or `block6 t=50 seed 0`: the title, else the
        config's scalar entries (`name=value`), then the seed."""
        words = self.title or " ".join(f"{k}={v}" for k, v in sorted(self.config.items())
                                       if isinstance(v, (str, int, float, bool)))
        return f"{words} seed {self.seed}".strip()


def cell_threads(threads: int | None, ray: str | None) -> int:
    """The torch threads each cell gets: `threads`, else all cores in this process and 1 per Ray task."""
    return threads or (1 if ray is not None else os.cpu_count() or 1)


def _shown(value) -> str:
    return "unset" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# Options that a sweep recorded as unset (null) when the unset value meant another default than today's: the value
# it meant then, compared instead of null (sweeps begun while early batches of 128 were the default).
FORMER_DEFAULTS = {"--early-batch-size": 128}


def check_options(out: Path, *, command: str, options: dict) -> None:
    """Refuse, in one line and before any work, to run the sweep `command` in the working folder `out` with
    result-determining `options` other than those its marker recorded (a folder of an older probe that recorded
    none, a new folder and a folder of another command are left to `check_out`). Only the options both know are
    compared: one that a newer probe added is recorded as its first run gives it."""
    marker = read_marker(out)
    recorded = (marker or {}).get("options")
    if not isinstance(recorded, dict) or marker.get("mode") != "working" or marker.get("command") != command:
        return
    given = json.loads(json.dumps(options, default=str))
    recorded = {name: FORMER_DEFAULTS.get(name) if value is None else value for name, value in recorded.items()}
    changed = [name for name in recorded if name in given and recorded[name] != given[name]]
    if changed:
        differences = "; ".join(f"{name} {_shown(recorded[name])} in the sweep, {_shown(given[name])} in this run"
                                for name in changed)
        raise ProbeError(f"--out {out} is a `probe {command}` sweep made with other options ({differences}); its cells "
                         f"would not compare with this run's. Rerun with the sweep's options to resume it, or start "
                         f"over: another --out, or delete {out}")


def finish_sweep(out: Path, files: Iterable[str]) -> None:
    """After a sweep wrote its tables and figures into `out`: its marker lists their names (`files`) and this
    process's run there as finished (names not there are left out)."""
    names = sorted(name for name in set(files) if (Path(out) / name).exists())

    def change(marker: dict) -> None:
        marker["files"] = sorted({*marker.get("files", []), *names})
        run = _this_run(marker)
        if run is not None:
            run.update(status="finished", ended=_now(), files=sorted({*run.get("files", []), *names}))

    update_marker(out, change)


def run_sweep(cells: Sequence[SweepCell], work: Work, out: Path, *, command: str, ray: str | None = None,
              threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True,
              options: dict | None = None, extractions: Callable[[list[SweepCell]], list] | None = None,
              dry_run: bool = False, downloads: Sequence[str] = ()) -> list[dict]:
    """Run every cell not finished yet in `out` and return all cell records in the order of `cells`.

    `work(spec, threads)` must be a top-level function (Ray pickles it) returning a JSON-able dict, which may carry
    `extraction`: {"image_steps", "seconds", "files"}, the (image, step) extractions the cell computed, their seconds
    and the activation files it left in the cache. In this process the first cell's gives the time left, and a
    Ctrl-C names the files of the cells finished so far (probe.errors.Interrupted). `ray`: None
    runs the cells one after another in this process with `threads` (default: all cores); "local" starts a Ray
    cluster on this machine's cores, "auto" or an address joins one; each task takes `threads` (default 1) CPUs
    and `gpus_per_cell` GPUs. A record is {"key", "config", "threads", "result", "seconds"}.

    `options`: the sweep's result-determining options that its cells do not vary ({"--members": 10, ...}, JSON-able;
    the threads per cell are added as "--threads"), recorded in the marker by the first run; a run with other
    values is refused (`check_options`) before anything is written. The marker lists each run (see the module
    docstring); the sweep calls `finish_sweep` once its tables are written.

    `extractions(todo)`: the probe.sweeps.plan.Extraction list of the cells still to compute; with it the sweep prints its
    plan before any work (probe.sweeps.plan), is refused when its activations would not fit on the cache's disk, and says
    the time left once its first cell has run. `dry_run`: print the plan and raise probe.errors.DryRun, before
    `out` is created. `downloads`: what the command downloaded first, named on the plan."""
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("a sweep lists the same cell twice")
    ray_module = _import_ray() if ray is not None else None
    threads = cell_threads(threads, ray)
    options = json.loads(json.dumps({**(options or {}), "--threads": threads}, default=str))
    check_options(Path(out).expanduser(), command=command, options=options)
    records = {cell.key: record for cell in cells if (record := _finished(Path(out).expanduser(), cell)) is not None}
    todo = [cell for cell in cells if cell.key not in records]
    plan = _announce(command, cells, todo, extractions, dry_run, progress, downloads)
    out = working_dir(out, command=command)
    _begin_run(out, options, {"ray": ray, "gpus_per_cell": gpus_per_cell, "threads": threads, "cells": len(cells),
                              "reused": len(records)})
    status = "interrupted"
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(command, total=len(cells), completed=len(records))
            estimate = _Estimate(command, plan, len(todo) if progress else 0, ray, threads)
            kept = []  # the activation files each cell computed by this run left in the cache

            def finished(record: dict) -> None:
                path = _cell_path(out, record["key"])
                write_json(path, record)
                records[record["key"]] = json.loads(path.read_text())
                update_marker(out, lambda marker: _add_computed(marker, record["key"]))
                kept.append(_extraction(record).get("files", 0))
                bar.update(task, advance=1)
                estimate.after(record)

            def current(text: str) -> None:
                bar.update(task, description=f"{command}: {text}")

            if ray_module is None:
                with counting_files(lambda: sum(kept)):
                    _run_here(todo, work, threads, finished, current)
            else:  # a Ctrl-C names no files: the cancelled tasks' are not known
                _run_on_ray(ray_module, ray, todo, work, threads, gpus_per_cell, finished, current)
        status = "cells finished"
    except Exception:
        status = "failed"
        raise
    finally:
        update_marker(out, lambda marker: _end_run(marker, status))
    log.info(f"{command}: {len(cells) - len(todo)} cells reused, {len(todo)} computed, in {out}")
    return [records[key] for key in keys]


def _announce(command: str, cells: Sequence[SweepCell], todo: list[SweepCell], extractions, dry_run: bool, show: bool,
              downloads: Sequence[str]):
    """The sweep's plan, printed unless not `show` (probe.sweeps.plan.announce: refused when it does not fit; DryRun with
    `dry_run`)."""
    from probe.errors import DryRun
    from probe.sweeps.plan import announce, make_plan

    if extractions is None:  # a sweep that extracts nothing of its own
        if dry_run:
            log.info(f"plan: probe {command}: {len(cells)} cells ({len(todo)} to compute)")
            raise DryRun()
        return None
    plan = make_plan(command, len(cells), len(todo), extractions(todo) if todo else [], downloads=downloads)
    announce(plan, dry_run, show)
    return plan


def _extraction(record: dict) -> dict:
    """The `extraction` entry of a cell's result (see run_sweep), {} without one."""
    return record["result"].get("extraction", {})


class _Estimate:
    """Says the time left once the first cell computed by this run has finished (probe.sweeps.plan.time_left: the
    first cell's extraction counts in this process only)."""

    def __init__(self, command: str, plan, todo: int, ray: str | None, threads: int):
        from probe.sweeps.plan import planned_estimate_parallel

        self.command, self.plan, self.todo, self.here = command, plan, todo, ray is None
        self.parallel = planned_estimate_parallel(ray, threads)
        self.said = todo < 2

    def after(self, record: dict) -> None:
        if self.said:
            return
        from probe.sweeps.plan import time_left, time_line

        self.said = True
        extraction = _extraction(record) if self.here else {}
        remaining = self.todo - 1
        left = time_left(self.plan, record["seconds"], extraction.get("image_steps", 0),
                         extraction.get("seconds", 0.0), remaining, self.parallel)
        log.info(time_line(self.command, left, record["seconds"], remaining))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _this_run(marker: dict) -> dict | None:
    """This process's latest run in the marker's list."""
    mine = [run for run in marker.get("runs", []) if (run.get("host"), run.get("pid")) == (socket.gethostname(),
                                                                                            os.getpid())]
    return mine[-1] if mine else None


def _begin_run(out: Path, options: dict, fields: dict) -> None:
    """Record the sweep's options on its first run (a folder of an older probe: on its first run since) and this
    run in the marker's list of runs."""
    def change(marker: dict) -> None:
        if not isinstance(marker.get("options"), dict):
            marker["options"] = options
        else:  # options this version knows and the folder's did not: recorded as this run gives them
            marker["options"] = {**options, **marker["options"]}
        if "runs" not in marker and fields["reused"]:  # the run(s) of an older probe, which kept only the first
            marker["runs"] = [{"argv": marker.get("argv"), "version": marker.get("version"),
                               "started": marker.get("written"), "status": "unknown (before runs were recorded)"}]
        marker.setdefault("runs", []).append({
            "argv": sys.argv[1:], "version": __version__, "started": _now(), "ended": None, "status": "running",
            **fields, "computed": [], "files": [], "host": socket.gethostname(), "pid": os.getpid()})

    update_marker(out, change)


def _add_computed(marker: dict, key: str) -> None:
    run = _this_run(marker)
    if run is not None:
        run["computed"].append(key)


def _end_run(marker: dict, status: str) -> None:
    run = _this_run(marker)
    if run is not None:
        run.update(status=status, ended=_now())
        if "cells" not in marker.get("files", []) and run["computed"]:
            marker["files"] = sorted({*marker.get("files", []), "cells"})


def run_cell(work: Work, spec: dict, key: str, threads: int) -> dict:
    """One cell with `threads` torch threads (the process tuned as the `probe` command tunes it): its record."""
    import torch

    tune_process()  # a Ray worker is not started by the probe command
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        result = work(spec, threads)
        return {"key": key, "config": spec, "threads": threads, "result": result,
                "seconds": time.perf_counter() - started}
    finally:
        torch.set_num_threads(previous)


def _cell_path(out: Path, key: str) -> Path:
    return out / "cells" / f"{key}.json"


def _finished(out: Path, cell: SweepCell) -> dict | None:
    """The record of `cell` written by an earlier run, or None (a damaged one is reported and redone)."""
    path = _cell_path(out, cell.key)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("key") == cell.key and "result" in record:
        return record
    log.warning(f"{path} is damaged; computing that cell again")
    return None


def _import_ray():
    return require("ray", purpose="--ray")


def _run_here(cells: list[SweepCell], work: Work, threads: int, finished: Callable[[dict], None],
              current: Callable[[str], None]) -> None:
    for cell in cells:
        current(cell.label)
        finished(run_cell(work, cell.spec, cell.key, threads))


def _run_on_ray(ray, address: str, cells: list[SweepCell], work: Work, threads: int, gpus: float,
                finished: Callable[[dict], None], current: Callable[[str], None]) -> None:
    """Each cell a Ray task; each record is written as soon as its task returns."""
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address == "local":
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
            else:
                ray.init(address=address)
        except ConnectionError as error:
            raise ProbeError(f"--ray {address}: no Ray cluster found there ({error}); start one with "
                             "`ray start --head`, or use --ray local") from None
    env = {"PROBE_CACHE": str(cache_root())}  # workers share the driver's activation store
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, runtime_env={"env_vars": env})(run_cell)
    pending = {remote.remote(work, cell.spec, cell.key, threads): cell.label for cell in cells}
    try:
        while pending:
            current(f"{next(iter(pending.values()))} (+{len(pending) - 1} queued or running)")
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                finished(ray.get(done[0]))
            except ray.exceptions.RayTaskError as error:  # the cell's own error, not Ray's wrapper of it
                raise (error.cause or error) from None
            del pending[done[0]]
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
