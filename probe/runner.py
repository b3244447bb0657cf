"""The sweep runner: a sweep is a list of independent cells (a configuration and a seed), each one call of a
`work` function, run in this process or as Ray tasks.

A sweep's `--out` is its working folder: every finished cell is written at once, atomically, to
`cells/<key>.json`, and a rerun skips the cells already there, so a killed sweep resumes where it stopped.
Each cell gets a thread budget (its CPU share) that is recorded with its result: the same sweep with the same
threads per cell gives the same records in-process and on Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from probe.cache import cache_root
from probe.errors import ProbeError
from probe.outputs import working_dir, write_json
from probe.progress import progress_bar

log = logging.getLogger("probe")

Work = Callable[[dict, int], dict]


@dataclass(frozen=True)
class Cell:
    """One configuration (a JSON-able dict) and one seed."""
    config: dict = field(hash=False)
    seed: int = 0

    def __post_init__(self):
        if "seed" in self.config:
            raise ValueError("a cell's seed goes in Cell.seed, not in its config")

    @property
    def spec(self) -> dict:
        """What `work` receives and the record stores: the config with the seed."""
        return {**self.config, "seed": self.seed}

    @property
    def key(self) -> str:
        """A short, filesystem-safe id: the scalar config values, then a hash of the whole spec."""
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:10]
        words = [str(v) for _, v in sorted(self.config.items()) if isinstance(v, (str, int, float, bool))]
        prefix = re.sub(r"[^A-Za-z0-9.=+]+", "_", "-".join([*words, f"s{self.seed}"]))[:48].strip("._")
        return f"{prefix}-{digest}"


def run_sweep(cells: Sequence[Cell], work: Work, out: Path, *, command: str, ray: str | None = None,
              threads: int | None = None, gpus_per_cell: float = 0, progress: bool = True) -> list[dict]:
    """Run every cell not finished yet in `out` and return all cell records in the order of `cells`.

    `work(spec, threads)` must be a top-level function (Ray pickles it) returning a JSON-able dict. `ray`: None
    runs the cells one after another in this process with `threads` (default: all cores); "local" starts a Ray
    cluster on this machine's cores, "auto" or an address joins one; each task takes `threads` (default 1) CPUs
    and `gpus_per_cell` GPUs. A record is {"key", "config", "threads", "result", "seconds"}."""
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("a sweep lists the same cell twice")
    ray_module = _import_ray() if ray is not None else None
    out = working_dir(out, command=command)
    records = {cell.key: record for cell in cells if (record := _finished(out, cell)) is not None}
    todo = [cell for cell in cells if cell.key not in records]
    with progress_bar(progress) as bar:
        task = bar.add_task(command, total=len(cells), completed=len(records))

        def finished(record: dict) -> None:
            path = _cell_path(out, record["key"])
            write_json(path, record)
            records[record["key"]] = json.loads(path.read_text())
            bar.update(task, advance=1)

        def current(text: str) -> None:
            bar.update(task, description=text)

        if ray_module is None:
            _run_here(todo, work, threads or os.cpu_count() or 1, finished, current)
        else:
            _run_on_ray(ray_module, ray, todo, work, threads or 1, gpus_per_cell, finished, current)
    log.info(f"{command}: {len(cells) - len(todo)} cells reused, {len(todo)} computed, in {out}")
    return [records[key] for key in keys]


def run_cell(work: Work, spec: dict, key: str, threads: int) -> dict:
    """One cell with `threads` torch threads: its record."""
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


def _finished(out: Path, cell: Cell) -> dict | None:
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
    try:
        import ray
    except ImportError:
        raise ProbeError("--ray needs Ray, which is not installed: pip install -e '.[ray]' (or pip install ray)"
                         ) from None
    return ray


def _run_here(cells: list[Cell], work: Work, threads: int, finished: Callable[[dict], None],
              current: Callable[[str], None]) -> None:
    for cell in cells:
        current(cell.key)
        finished(run_cell(work, cell.spec, cell.key, threads))


def _run_on_ray(ray, address: str, cells: list[Cell], work: Work, threads: int, gpus: float,
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
    pending = {remote.remote(work, cell.spec, cell.key, threads): cell.key for cell in cells}
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
