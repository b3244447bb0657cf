"""The sweep runner: cell files, resuming, damaged cells, Ray against in-process, missing Ray, the sweep folder."""

import json
import logging
import os
import sys

import pytest
import torch

from probe.errors import Interrupted, ProbeError
from probe.utils.outputs import MARKER
from probe.sweeps.runner import SweepCell, finish_sweep, run_sweep

CALLS = []  # the specs `count` was called with, in this process


def count(spec: dict, threads: int) -> dict:
    """Cheap and deterministic in its spec; reports the torch threads it ran with."""
    CALLS.append(spec)
    g = torch.Generator().manual_seed(spec["seed"])
    return {"value": float(torch.rand(3, generator=g).sum()) * spec["scale"], "torch_threads": torch.get_num_threads()}


def killed_at_fourth(spec: dict, threads: int) -> dict:
    if spec == CELLS[3].spec:
        raise KeyboardInterrupt  # the sweep killed while computing its 4th cell
    return count(spec, threads)


def extracting(spec: dict, threads: int) -> dict:
    """`count` with the `extraction` entry of a cell that cached 10 activation files; the 4th cell is interrupted once
    it cached 4 (probe.errors.Interrupted, as probe.tasks.segment.evaluate raises it)."""
    if spec == CELLS[3].spec:
        raise Interrupted(4)
    return {**count(spec, threads), "extraction": {"image_steps": 5, "seconds": 0.5, "files": 10}}


def mlp(spec: dict, threads: int) -> dict:
    """A small seeded MLP: real torch math, where a different thread count could change the last digits."""
    g = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(256, spec["width"], generator=g)
    for _ in range(3):
        x = torch.tanh(x @ torch.randn(spec["width"], spec["width"], generator=g) / spec["width"] ** 0.5)
    return {"sum": float(x.double().sum()), "first": x[0, :4].tolist(), "torch_threads": torch.get_num_threads(),
            "cache": os.environ.get("PROBE_CACHE")}


CELLS = [SweepCell({"scale": scale, "name": "a/b"}, seed=seed) for scale in range(3) for seed in (0, 1)]


def computed(caplog) -> int:
    line = [r.getMessage() for r in caplog.records if "computed" in r.getMessage()][-1]
    return int(line.split(" cells reused, ")[1].split()[0])


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_in_process_sweep_writes_every_cell_in_order(tmp_path):
    records = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert [r["key"] for r in records] == [c.key for c in CELLS]
    assert len({c.key for c in CELLS}) == 6 and all("/" not in c.key for c in CELLS)
    assert CELLS[0].key == SweepCell({"name": "a/b", "scale": 0}, seed=0).key  # stable: not the dict's order
    assert SweepCell({"scale": 0, "name": "a/b"}, seed=1).key != CELLS[0].key
    for cell, record in zip(CELLS, records):
        assert record["config"] == {"scale": cell.config["scale"], "name": "a/b", "seed": cell.seed}
        assert record["threads"] == 1 and record["result"]["torch_threads"] == 1
        assert json.loads((tmp_path / "sweep" / "cells" / f"{cell.key}.json").read_text()) == record
    g = torch.Generator().manual_seed(1)
    assert records[5]["result"]["value"] == pytest.approx(2 * float(torch.rand(3, generator=g).sum()))
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["cells", MARKER]
    assert not [p for p in (tmp_path / "sweep" / "cells").iterdir() if p.suffix != ".json" or p.name[0] == "."]


def test_in_process_threads_default_to_all_cores(tmp_path):
    records = run_sweep(CELLS[:1], count, tmp_path / "sweep", command="test-sweep", progress=False)
    assert records[0]["threads"] == records[0]["result"]["torch_threads"] == os.cpu_count()
    assert torch.get_num_threads() == 1  # restored


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    reference = run_sweep(CELLS, count, tmp_path / "whole", command="test-sweep", threads=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CELLS, killed_at_fourth, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    cells = tmp_path / "sweep" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == sorted(f"{c.key}.json" for c in CELLS[:3])  # no partial file
    CALLS.clear()
    records = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert CALLS == [c.spec for c in CELLS[3:]] and computed(caplog) == 3
    assert without_seconds(records) == without_seconds(reference)
    CALLS.clear()
    assert without_seconds(run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1,
                                     progress=False)) == without_seconds(reference)
    assert CALLS == [] and computed(caplog) == 0


def test_an_interrupted_sweep_names_the_activation_files_its_cells_cached(tmp_path):
    with pytest.raises(Interrupted) as interrupted:
        run_sweep(CELLS, extracting, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert interrupted.value.files == 3 * 10 + 4
    with pytest.raises(Interrupted) as again:  # the rerun reuses 3 cells: it names only the files it cached
        run_sweep(CELLS, extracting, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert again.value.files == 4


def test_a_damaged_cell_file_is_computed_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe")
    reference = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    damaged = tmp_path / "sweep" / "cells" / f"{CELLS[2].key}.json"
    damaged.write_text(damaged.read_text()[:20])
    CALLS.clear()
    records = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert CALLS == [CELLS[2].spec] and computed(caplog) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and CELLS[2].key in warnings[0] and "damaged" in warnings[0]
    assert without_seconds(records) == without_seconds(reference)
    assert json.loads(damaged.read_text())["result"] == reference[2]["result"]


def test_ray_gives_the_same_records_as_in_process(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.cloudpickle").register_pickle_by_value(sys.modules[__name__])  # workers can't import tests
    cells = [SweepCell({"width": width}, seed=seed) for width in (64, 96) for seed in (0, 1)]
    here = run_sweep(cells, mlp, tmp_path / "here", command="test-sweep", threads=1, progress=False)
    # The local cluster inherits this process's environment: a cache folder only the runner knows shows that
    # the workers are told the driver's.
    monkeypatch.setattr("probe.sweeps.runner.cache_root", lambda: tmp_path / "shared")
    on_ray = run_sweep(cells, mlp, tmp_path / "ray", command="test-sweep", ray="local", threads=1, progress=False)
    assert not ray.is_initialized()  # the runner shut down the cluster it started
    assert {r["result"].pop("cache") for r in on_ray} == {str(tmp_path / "shared")}
    assert {r["result"].pop("cache") for r in here} == {os.environ["PROBE_CACHE"]}
    assert without_seconds(on_ray) == without_seconds(here)
    assert {r["result"]["torch_threads"] for r in on_ray} == {1}
    assert sorted(p.name for p in (tmp_path / "ray" / "cells").iterdir()) == sorted(f"{c.key}.json" for c in cells)


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ProbeError) as error:
        run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", ray="local", progress=False)
    assert str(error.value) == '--ray needs ray, which is not installed: pip install -e ".[ray]"'
    assert not (tmp_path / "sweep").exists()


def test_the_sweep_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ProbeError, match="did not write"):
        run_sweep(CELLS, count, mine, command="test-sweep", progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    first = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    again = run_sweep(CELLS, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=False)
    assert again == first  # accepted again without --overwrite, every cell reused as written
    with pytest.raises(ProbeError, match="test-sweep"):
        run_sweep(CELLS, count, tmp_path / "sweep", command="other-sweep", progress=False)


def test_a_rerun_with_other_result_determining_options_is_refused_before_any_cell(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["probe", "test-sweep", "--members", "1"])
    run_sweep(CELLS[:2], count, out, command="test-sweep", threads=1, options={"--members": 1}, progress=False)
    cell_files = sorted(p.name for p in (out / "cells").iterdir())
    marker_before = (out / MARKER).read_text()
    CALLS.clear()
    changes = [({"--members": 3}, 1, "--members 1 in the sweep, 3 in this run"),
               ({"--members": 1}, 2, "--threads 1 in the sweep, 2 in this run")]
    if (os.cpu_count() or 1) > 1:  # the default: all cores in this process
        changes.append(({"--members": 1}, None, f"--threads 1 in the sweep, {os.cpu_count()} in this run"))
    for options, threads, words in changes:
        with pytest.raises(ProbeError) as error:
            run_sweep(CELLS, count, out, command="test-sweep", threads=threads, options=options, progress=False)
        message = str(error.value)
        assert words in message and "\n" not in message, message
        assert "another --out" in message and f"delete {out}" in message
    assert CALLS == [] and sorted(p.name for p in (out / "cells").iterdir()) == cell_files
    assert (out / MARKER).read_text() == marker_before  # nothing recorded either

    # more cells with the same options: allowed, only the new ones computed; an option a newer probe added is
    # recorded as this run gives it
    monkeypatch.setattr(sys, "argv", ["probe", "test-sweep", "--members", "1", "--more"])
    records = run_sweep(CELLS, count, out, command="test-sweep", threads=1, options={"--members": 1, "--new": 5},
                        progress=False)
    assert CALLS == [c.spec for c in CELLS[2:]] and [r["key"] for r in records] == [c.key for c in CELLS]
    marker = json.loads((out / MARKER).read_text())
    assert marker["options"] == {"--members": 1, "--threads": 1, "--new": 5}
    assert [run["argv"] for run in marker["runs"]] == [["test-sweep", "--members", "1"],
                                                      ["test-sweep", "--members", "1", "--more"]]
    assert [run["computed"] for run in marker["runs"]] == [[c.key for c in CELLS[:2]], [c.key for c in CELLS[2:]]]
    assert [(run["reused"], run["cells"], run["threads"], run["status"]) for run in marker["runs"]] == [
        (0, 2, 1, "cells finished"), (2, 6, 1, "cells finished")]
    assert marker["files"] == ["cells"]
    (out / "table.csv").write_text("x\n")
    finish_sweep(out, ["table.csv", "never_written.png"])
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == ["cells", "table.csv"] and marker["runs"][-1]["files"] == ["table.csv"]
    assert marker["runs"][-1]["status"] == "finished" and marker["runs"][0]["status"] == "cells finished"


def test_a_sweep_begun_when_early_batches_of_128_were_the_default_resumes_only_with_them(tmp_path):
    out = tmp_path / "sweep"
    run_sweep(CELLS[:1], count, out, command="test-sweep", threads=1, options={"--early-batch-size": None},
              progress=False)  # recorded unset, as the sweeps of a probe whose default was 128
    with pytest.raises(ProbeError, match="--early-batch-size 128 in the sweep, 64 in this run"):
        run_sweep(CELLS[:1], count, out, command="test-sweep", threads=1, options={"--early-batch-size": 64},
                  progress=False)
    run_sweep(CELLS[:2], count, out, command="test-sweep", threads=1, options={"--early-batch-size": 128},
              progress=False)


def test_an_interrupted_run_is_recorded_with_the_cells_it_finished(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CELLS, killed_at_fourth, out, command="test-sweep", threads=1, progress=False)
    run = json.loads((out / MARKER).read_text())["runs"][0]
    assert run["status"] == "interrupted" and run["computed"] == [c.key for c in CELLS[:3]] and run["ended"]


def test_cells_have_labels_a_person_reads_and_the_progress_bar_shows_them(tmp_path, capsys):
    assert SweepCell({"label": "t50_block6", "layer": "block6"}, seed=0, title="block6 t=50").label == "block6 t=50 seed 0"
    assert SweepCell({"scale": 2, "name": "a/b"}, seed=1).label == "name=a/b scale=2 seed 1"
    titled = SweepCell({"scale": 0, "name": "a/b"}, seed=0, title="pixels n=20")
    assert titled == SweepCell({"scale": 0, "name": "a/b"}, seed=0) and titled.key == CELLS[0].key  # the title is no key
    cells = [SweepCell({"scale": 1, "name": "a/b"}, seed=seed, title="pixels n=20") for seed in (0, 1)]
    run_sweep(cells, count, tmp_path / "sweep", command="test-sweep", threads=1, progress=True)
    shown = capsys.readouterr().err
    assert "test-sweep: pixels n=20 seed 1" in shown and cells[1].key not in shown, shown
