"""The cache folder ($PROBE_CACHE, default ~/.cache/probe): where it is, how a folder is published into it
safely when several processes race, and what `probe cache info / clear` report and remove."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from probe.utils.outputs import remove_orphans, staging_folder

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("probe")

IDENTITY_FILE = "identity.json"
FLOAT32_FILE = "float32_maps.txt"  # an activation store's maps kept in float32, one "<image key>/<cell>" a line
STALE_SECONDS = 24 * 3600  # a temporary folder this old belongs to a run that was killed


def cache_root() -> Path:
    """$PROBE_CACHE, or ~/.cache/probe."""
    return Path(os.environ.get("PROBE_CACHE") or Path.home() / ".cache" / "probe").expanduser()


def activations_root() -> Path:
    """The default activation store folder: <cache root>/activations."""
    return cache_root() / "activations"


def publish_folder(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """`target`, built by `build(folder)` on first use. Safe when several processes get here at once: each
    builds in its own temporary folder and renames it to `target`, a rename that fails when `target` exists, so
    the first to finish wins and the others use its folder. A `target` that `complete` rejects (left by an older
    version or by hand) is moved aside and rebuilt."""
    target = Path(target)
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        log.warning(f"{target} is incomplete; rebuilding it")
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        try:
            os.rename(target, trash / target.name)
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(trash, ignore_errors=True)
    staging = staging_folder(target)
    try:
        build(staging)
        os.rename(staging, target)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not complete(target):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale(folder: Path, prefix: str) -> None:
    """Delete temporary folders under `folder` starting with `prefix` that no run has touched for a day."""
    for entry in folder.glob(f"{prefix}*"):
        try:
            if time.time() - entry.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            pass


def _usage(folder: Path) -> tuple[int, int, float]:
    """(files, bytes, newest modification time) under `folder`."""
    files = size = 0
    newest = folder.stat().st_mtime
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            files, size, newest = files + 1, size + stat.st_size, max(newest, stat.st_mtime)
    return files, size, newest


def _describe(identity: dict) -> str:
    """A short label for a backbone identity: its kind and what makes it unique."""
    kind = identity.get("backbone", "?")
    details = [f"{k}={identity[k]}" for k in ("checkpoint", "noise", "seed") if k in identity]
    return " ".join([kind, *details])


def stored_dtypes(folder: Path) -> str:
    """What an activation folder stores its maps in: "float16", or "float16, N maps float32" when some held values
    beyond float16's range (listed in FLOAT32_FILE)."""
    try:
        wide = len(set((folder / FLOAT32_FILE).read_text().split()))
    except FileNotFoundError:
        wide = 0
    return f"float16, {wide} map{'s' if wide != 1 else ''} float32" if wide else "float16"


def cache_entries(root: Path | None = None) -> pd.DataFrame:
    """One row per cached item: activation folders (one per backbone identity), default-domain folders, the
    downloaded datasets and synthetic datasets (unpacked) and downloaded files (checkpoints, partial downloads),
    with their size, file count, last use and (activations) stored dtypes. The downloads' records (their first
    SHA-256) are not items: they stay."""
    import pandas as pd

    root = Path(root) if root is not None else cache_root()
    rows = []
    activations = root / "activations"
    for folder in sorted(activations.iterdir()) if activations.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):  # a run's temporary store; clear_cache sweeps those
            continue
        try:
            identity = json.loads((folder / IDENTITY_FILE).read_text())
        except (OSError, ValueError):
            identity = {}
        files, size, newest = _usage(folder)
        images = sum(1 for p in folder.iterdir() if p.is_dir())
        rows.append({"kind": "activations", "name": folder.name, "backbone": _describe(identity), "images": images,
                     "files": files, "bytes": size, "last_used": newest, "path": str(folder),
                     "dtypes": stored_dtypes(folder)})
    for folder in sorted(root.glob("default-domain-*")) if root.is_dir() else []:
        files, size, newest = _usage(folder)
        rows.append({"kind": "default domain", "name": folder.name, "backbone": "", "images": 0, "files": files,
                     "bytes": size, "last_used": newest, "path": str(folder)})
    for kind, pattern in (("dataset", "datasets/*"), ("synthetic dataset", "synthetic/*")):
        for folder in sorted(root.glob(pattern)) if root.is_dir() else []:
            if folder.is_dir() and not folder.name.startswith("."):
                files, size, newest = _usage(folder)
                images = sum(1 for path in folder.rglob("*") if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
                rows.append({"kind": kind, "name": folder.name, "backbone": "", "images": images, "files": files,
                             "bytes": size, "last_used": newest, "path": str(folder)})
    downloads = root / "downloads"
    for path in sorted(downloads.rglob("*")) if downloads.is_dir() else []:
        if path.is_file() and not path.name.endswith((".json", ".lock")):
            stat = path.stat()
            kind = "partial download" if path.name.endswith(".part") else "download"
            rows.append({"kind": kind, "name": str(path.relative_to(downloads)), "backbone": "", "images": 0,
                         "files": 1, "bytes": stat.st_size, "last_used": stat.st_mtime, "path": str(path)})
    return pd.DataFrame(rows, columns=["kind", "name", "backbone", "images", "files", "bytes", "last_used", "path",
                                       "dtypes"]).fillna({"dtypes": ""})


def clear_cache(root: Path | None = None, older_than_days: float | None = None) -> pd.DataFrame:
    """Delete the cache entries (see `cache_entries`) unused for more than `older_than_days` (all when None),
    and any temporary folder left by a killed run. Returns the deleted rows."""
    root = Path(root) if root is not None else cache_root()
    entries = cache_entries(root)
    if older_than_days is not None:
        entries = entries[entries["last_used"] < time.time() - older_than_days * 86400]
    for path in entries["path"]:
        trash = Path(tempfile.mkdtemp(prefix=".deleting-", dir=Path(path).parent))
        os.rename(path, trash / "entry")  # gone from its name at once; readers with open files keep them
        shutil.rmtree(trash, ignore_errors=True)
    for parent in (root, root / "activations"):
        if parent.is_dir():
            remove_orphans(parent)  # left by killed processes of this machine (robustness's corrupted copies)
            _remove_stale(parent, ".")
    for partial in (root / "activations").glob("*/*/.*.partial*"):  # a file a killed writer left
        _remove_stale(partial.parent, partial.name)
    return entries
