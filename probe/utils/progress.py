"""One progress-bar style for every long loop (rich), silent when progress is off."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich Progress to use as a context manager; `disable=True` keeps the API but prints nothing."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), disable=not enabled, transient=False, console=Console(stderr=True),
    )


def download_bar(enabled: bool = True) -> Progress:
    """A rich Progress for one transfer: bytes done of the total, rate, time left."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False, console=Console(stderr=True),
    )
