"""One progress-bar style for every long loop (rich), silent when progress is off, and the API's default: bars in a
notebook, none in scripts.

rich draws a live bar in Jupyter through an ipywidgets Output; without ipywidgets it only warns on every refresh, so
there the bar is drawn as on a terminal, one line rewritten after a carriage return (as tqdm's text bar), which
Jupyter's output shows in place."""

from __future__ import annotations

import importlib.util

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


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (rich's own test: an IPython ZMQ shell, Colab, Databricks)."""
    return Console().is_jupyter


def show_progress(progress: bool | None) -> bool:
    """The API's `progress` argument: True or False as given; None (its default) shows bars in a notebook, where a
    sweep of many minutes otherwise looks hung, and none in scripts and tests."""
    return in_notebook() if progress is None else bool(progress)


def progress_console() -> Console:
    """The console bars draw on: stderr; in a notebook without ipywidgets, stderr as a terminal (the bar's line
    rewritten in place; rich's own notebook display needs ipywidgets)."""
    console = Console(stderr=True)
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        return Console(stderr=True, force_jupyter=False, force_terminal=True)
    return console


def progress_bar(enabled: bool = True) -> Progress:
    """A rich Progress to use as a context manager; `disable=True` keeps the API but prints nothing."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), disable=not enabled, transient=False,
        console=progress_console() if enabled else Console(stderr=True),
    )


def download_bar(enabled: bool = True) -> Progress:
    """A rich Progress for one transfer: bytes done of the total, rate, time left."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False, console=progress_console() if enabled else Console(stderr=True),
    )
