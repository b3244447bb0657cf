"""Writing a command's results: everything goes to a temporary folder beside --out, renamed into place at the end,
so a failed run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def output_dir(out: Path):
    """Yield a fresh temporary folder; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def write_json(path: Path, data: dict) -> None:
    def default(value):
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        if isinstance(value, (np.ndarray, Path)):
            return value.tolist() if isinstance(value, np.ndarray) else str(value)
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    Path(path).write_text(json.dumps(data, indent=2, default=default))
