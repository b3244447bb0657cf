"""The one way a command writes its results, and the one atomic-write helper.

A command's `--out` is only ever written through `output_dir` (results built in a temporary folder beside it,
moved in at the end) or `working_dir` (a resumable run folder, written as the run goes). Both refuse, before
any work starts, a folder that holds files probe did not write, the current folder, the home folder, a folder
holding an input or inside an input folder, and a file. A folder probe wrote carries a marker file (`probe-run.json`: command, version,
time, the names it wrote); `output_dir` replaces such a folder only with `overwrite`, and never deletes a name
the marker does not list. A sweep's working folder's marker also keeps the sweep's result-determining options,
the names its runs wrote and every run's command line and cells (`probe.sweeps.runner`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from probe.errors import ProbeError
from probe.version import __version__

MARKER = "probe-run.json"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a fresh temporary file beside `path` (unique per writer, same suffix), then rename it to
    `path`: readers see the old file or the new one, never a part. On any error or interrupt the temporary file
    is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is drawn before the file exists, so an interrupt at any point leaves no file behind (with mkstemp,
    # a Ctrl-C between the file's creation and the `try` left it there).
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial{path.suffix}"
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON, atomically; numpy scalars and arrays and paths are converted."""
    def default(value):
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        if isinstance(value, (np.ndarray, Path)):
            return value.tolist() if isinstance(value, np.ndarray) else str(value)
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    text = json.dumps(data, indent=2, default=default)
    atomic_write(Path(path), lambda p: p.write_text(text))


def new_folder_mode() -> int:
    """The permissions os.mkdir gives a new folder in this process: 0o777 less the umask."""
    umask = os.umask(0o022)  # the only way to read it is to set it; put back at once
    os.umask(umask)
    return 0o777 & ~umask


def staging_folder(target: Path) -> Path:
    """A fresh temporary folder beside `target`, named `.{name}.partial-{host}-{pid}-…`, with the permissions of a
    folder made by mkdir (new_folder_mode; not mkdtemp's 0700), since it becomes `target`: every --out gets the same
    permissions, whether written in place (working_dir) or swapped in (output_dir). Such folders left by processes
    of this machine that are gone (killed with SIGKILL, a power cut) are deleted first."""
    target = Path(target)
    remove_orphans(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{socket.gethostname()}-{os.getpid()}-",
                                    dir=target.parent))
    staging.chmod(new_folder_mode())
    return staging


def remove_orphans(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the staging folders (`staging_folder`) under `folder` of processes of this machine that are gone:
    those beside `name`, or all. Returns what was deleted."""
    host = socket.gethostname()
    removed = []
    for stale in Path(folder).glob(f".{glob.escape(name) if name else '*'}.partial-{glob.escape(host)}-*"):
        pid = stale.name.partition(f".partial-{host}-")[2].split("-")[0]
        if stale.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder probe wrote, or None."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _refuse(out: Path, reason: str, fix: str = "choose a new or empty folder") -> ProbeError:
    return ProbeError(f"--out {out} {reason}: {fix}; probe never writes into a folder it did not make")


def check_out(out: Path, *, overwrite: bool = False, inputs: Sequence[Path | None] = (),
              command: str | None = None) -> None:
    """Raise ProbeError unless `out` may receive a command's results (see the module docstring).

    `command` set: a working folder of that command is accepted as it is (a resumed run)."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    here = Path.cwd().resolve()
    if resolved == here:
        raise _refuse(out, "is the current folder", "name a new folder, e.g. --out runs/result")
    if resolved in here.parents:
        raise _refuse(out, "holds the current folder", "name a new folder, e.g. --out runs/result")
    if resolved == Path.home().resolve():
        raise _refuse(out, "is your home folder", "name a new folder, e.g. --out runs/result")
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if source == resolved or resolved in source.parents:
            raise _refuse(out, f"holds the input {given}", "write the results somewhere else")
        if source.is_dir() and source in resolved.parents:
            raise _refuse(out, f"lies inside the input folder {given}", "write the results outside it")
    if out.exists() and not out.is_dir():
        raise _refuse(out, "is a file", "give a folder name")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    marker = read_marker(out)
    if marker is None:
        raise _refuse(out, f"holds files probe did not write ({entries[0]}{', ...' if len(entries) > 1 else ''})")
    foreign = sorted(set(entries) - set(marker.get("files", [])) - {MARKER})
    if foreign and marker.get("mode") != "working":
        raise _refuse(out, f"holds {foreign[0]}, which probe did not write", "move it out or choose another folder")
    if command is not None:
        if marker.get("mode") == "working" and marker.get("command") == command:
            return
        raise _refuse(out, f"holds a result of `probe {marker.get('command')}`", "choose another folder")
    if marker.get("mode") == "working":
        raise _refuse(out, f"is the run folder of `probe {marker.get('command')}`", "choose another folder")
    if not overwrite:
        raise ProbeError(f"--out {out} holds a previous result of `probe {marker.get('command')}`: pass "
                         "--overwrite to replace it, or choose another folder")


def _marker(command: str, files: list[str], mode: str) -> dict:
    return {"command": command, "version": __version__, "mode": mode, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "argv": sys.argv[1:], "files": files}


def _swap_in(staging: Path, out: Path) -> None:
    """Make `staging` the folder `out`. An existing `out` is renamed aside first and deleted only after the new
    result is in place; where `out` cannot be renamed (a mount point) its contents are swapped instead."""
    if not out.exists():
        try:
            os.rename(staging, out)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ProbeError(f"--out {out} was created by someone else while probe ran: nothing was written "
                                 "there; rerun with another --out") from None
            raise
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.rename(out, aside)  # replaces the empty folder mkdtemp made
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EBUSY, errno.EPERM, errno.EACCES):
            aside.rmdir()
            raise
        aside.rmdir()
        _swap_contents(staging, out)
        return
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _swap_contents(staging: Path, out: Path) -> None:
    """`_swap_in` for an `out` that cannot be renamed: copy the new result into `out` (it may be on another
    filesystem), move the old names aside inside `out`, move the new ones in, then delete the old."""
    marker = read_marker(out) or {"files": []}
    old_names = [n for n in [*marker.get("files", []), MARKER] if (out / n).exists() or (out / n).is_symlink()]
    incoming = Path(tempfile.mkdtemp(prefix=".probe-new-", dir=out))
    aside = Path(tempfile.mkdtemp(prefix=".probe-old-", dir=out))
    try:
        shutil.copytree(staging, incoming, dirs_exist_ok=True)
        for name in old_names:
            os.rename(out / name, aside / name)
        for entry in incoming.iterdir():
            os.rename(entry, out / entry.name)
    except BaseException:
        for entry in aside.iterdir():  # the old result back in place
            if not (out / entry.name).exists():
                os.rename(entry, out / entry.name)
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    incoming.rmdir()
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def output_dir(out: Path, *, command: str, overwrite: bool = False,
               inputs: Sequence[Path | None] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; when the block succeeds it becomes `out` (with the marker),
    on any error or interrupt it is removed and `out` is left as it was. `out` is checked (`check_out`) on entry,
    so a refused folder costs no work."""
    out = Path(out).expanduser()
    check_out(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out)
    try:
        yield staging
        files = sorted(p.name for p in staging.iterdir())
        write_json(staging / MARKER, _marker(command, files, "result"))
        check_out(out, overwrite=overwrite, inputs=inputs)  # the folder may have changed while the command ran
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def update_marker(folder: Path, change: Callable[[dict], None]) -> dict:
    """Apply `change` to the marker of a folder probe wrote (a working folder's, as its run goes) and write it back
    atomically; returns the new marker."""
    marker = read_marker(folder)
    if marker is None:
        raise ProbeError(f"{folder} has no {MARKER}: it is not a folder probe wrote")
    change(marker)
    write_json(Path(folder) / MARKER, marker)
    return marker


def working_dir(out: Path, *, command: str, inputs: Sequence[Path | None] = ()) -> Path:
    """Claim `out` as the run folder of a resumable `command` (training, sweeps), written as the run goes.

    Accepted: a new or empty folder, or a run folder of the same command (resumed). Returns `out`."""
    out = Path(out).expanduser()
    check_out(out, inputs=inputs, command=command)
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:
        write_json(out / MARKER, _marker(command, [], "working"))
    return out
