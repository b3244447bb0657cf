"""The one error type users can cause (the CLI prints it as one line and exits 2), the end of a --dry-run, and a
Ctrl-C that counts the activation files it leaves in the cache."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class ProbeError(Exception):
    """Bad input: a path, a value or a flag. The message names it and says how to fix it."""


class DryRun(Exception):
    """Raised once a --dry-run printed its plan (probe.sweeps.plan): nothing computed, nothing written; the CLI exits 0."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C carrying `files`: the activation files the interrupted work wrote to the cache, where they stay and a
    rerun reuses them (the CLI says so)."""

    def __init__(self, files: int):
        super().__init__(files)
        self.files = files


@contextlib.contextmanager
def counting_files(count: Callable[[], int]) -> Iterator[None]:
    """Within the block a Ctrl-C comes out as Interrupted, counting the files `count()` gives when it comes (the
    cached files that the block's owner wrote) besides those an inner Interrupted counts."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        raise Interrupted(count() + (interrupt.files if isinstance(interrupt, Interrupted) else 0)) from interrupt
