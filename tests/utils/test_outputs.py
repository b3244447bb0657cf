"""Every --out case of probe.utils.outputs: what is written, what is refused, and that the user's files are untouched."""

import errno
import json
import os
from pathlib import Path

import pytest

from probe.utils import outputs
from probe.errors import ProbeError
from probe.utils.outputs import MARKER, atomic_write, output_dir, working_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the marker included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_result(out: Path, text: str = "new", **options) -> None:
    with output_dir(out, command="segment", **options) as tmp:
        (tmp / "metrics.json").write_text(text)
        (tmp / "predictions").mkdir()
        (tmp / "predictions" / "a.npy").write_text(text)


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return folder


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_new_and_empty_folders_receive_the_result_with_a_marker(tmp_path):
    write_result(tmp_path / "runs" / "new")
    (tmp_path / "empty").mkdir()
    write_result(tmp_path / "empty")
    for out in (tmp_path / "runs" / "new", tmp_path / "empty"):
        assert (out / "metrics.json").read_text() == "new" and (out / "predictions" / "a.npy").read_text() == "new"
        marker = json.loads((out / MARKER).read_text())
        assert marker["command"] == "segment" and marker["files"] == ["metrics.json", "predictions"]
        assert marker["mode"] == "result" and marker["version"]
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "runs") == []


def test_a_previous_result_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    write_result(out, "old")
    before = snapshot(out)
    with pytest.raises(ProbeError, match="holds a previous result of `probe segment`: pass --overwrite"):
        write_result(out, "new")
    assert snapshot(out) == before
    write_result(out, "new", overwrite=True)
    assert (out / "metrics.json").read_text() == "new" and leftovers(tmp_path) == []


def test_a_result_holding_a_file_probe_did_not_write_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    write_result(out, "old")
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    with pytest.raises(ProbeError, match="holds notes.txt, which probe did not write"):
        write_result(out, "new", overwrite=True)
    assert snapshot(out) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_user_files_is_refused_untouched(tmp_path, overwrite):
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(ProbeError, match=r"holds files probe did not write \(figures, \.\.\.\): choose a new"):
        write_result(folder, overwrite=overwrite)
    assert snapshot(folder) == before and leftovers(tmp_path) == []


def test_current_home_parent_of_input_and_file_are_refused(tmp_path, monkeypatch):
    folder = user_folder(tmp_path)
    monkeypatch.chdir(folder)
    with pytest.raises(ProbeError, match="--out . is the current folder"):
        write_result(Path("."), overwrite=True)
    with pytest.raises(ProbeError, match="--out .. holds the current folder"):
        write_result(Path(".."), overwrite=True)
    empty_here = tmp_path / "empty_here"
    empty_here.mkdir()
    monkeypatch.chdir(empty_here)
    with pytest.raises(ProbeError, match="is the current folder"):  # even when empty
        write_result(Path("."))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ProbeError, match="is your home folder"):
        write_result(Path("~"))
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    with pytest.raises(ProbeError, match=f"holds the input {data / 'train'}"):
        write_result(tmp_path / "data", inputs=[None, data / "train"])
    with pytest.raises(ProbeError, match="holds the input"):
        write_result(data / "train", inputs=[data / "train"])
    with pytest.raises(ProbeError, match="is a file: give a folder name"):
        write_result(folder / "thesis.tex")
    assert snapshot(folder) == {"figures/plot.pdf": b"%PDF", "thesis.tex": b"years of work"}
    assert sorted(p.name for p in home.iterdir()) == [] and list(empty_here.iterdir()) == []


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_command_leaves_out_as_it_was(tmp_path, failure):
    out = tmp_path / "out"
    write_result(out, "old")
    before = snapshot(out)
    with pytest.raises(type(failure)):
        with output_dir(out, command="segment", overwrite=True) as tmp:
            (tmp / "metrics.json").write_text("half")
            raise failure
    assert snapshot(out) == before and leftovers(tmp_path) == []
    with pytest.raises(type(failure)):
        with output_dir(tmp_path / "fresh", command="segment") as tmp:
            raise failure
    assert not (tmp_path / "fresh").exists() and leftovers(tmp_path) == []


def test_the_old_result_comes_back_when_the_new_one_cannot_be_moved_in(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_result(out, "old")
    before = snapshot(out)
    rename = os.rename

    def failing_rename(src, dst):
        if Path(dst) == out and ".partial-" in Path(src).name:
            raise OSError(errno.EIO, "I/O error")
        return rename(src, dst)

    monkeypatch.setattr(outputs.os, "rename", failing_rename)
    with pytest.raises(OSError, match="I/O error"):
        write_result(out, "new", overwrite=True)
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_an_out_on_another_filesystem_is_swapped_by_contents(tmp_path, monkeypatch):
    """A mount point cannot be renamed (EXDEV/EBUSY): the new result is copied in and the old names removed."""
    out = tmp_path / "mounted"
    write_result(out, "old")
    (out / "predictions" / "b.npy").write_text("old only")
    rename = os.rename

    def no_rename_of_out(src, dst):
        if Path(src) == out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(src, dst)

    monkeypatch.setattr(outputs.os, "rename", no_rename_of_out)
    write_result(out, "new", overwrite=True)
    assert sorted(snapshot(out)) == sorted([MARKER, "metrics.json", "predictions/a.npy"])
    assert (out / "metrics.json").read_text() == "new" and leftovers(tmp_path) == [] and leftovers(out) == []


def test_working_folders_resume_only_for_their_own_command(tmp_path):
    run = working_dir(tmp_path / "run", command="ddpm train")
    (run / "checkpoint.pt").write_text("step 10")
    assert working_dir(run, command="ddpm train") == run and (run / "checkpoint.pt").read_text() == "step 10"
    with pytest.raises(ProbeError, match="holds a result of `probe ddpm train`"):
        working_dir(run, command="sweep")
    with pytest.raises(ProbeError, match="is the run folder of `probe ddpm train`"):
        write_result(run, overwrite=True)
    write_result(tmp_path / "result")
    with pytest.raises(ProbeError, match="holds a result of `probe segment`"):
        working_dir(tmp_path / "result", command="ddpm train")
    folder = user_folder(tmp_path)
    with pytest.raises(ProbeError, match="holds files probe did not write"):
        working_dir(folder, command="ddpm train")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "weights.pt"
    atomic_write(path, lambda p: p.write_text("old"))

    def failing(p: Path) -> None:
        p.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]
