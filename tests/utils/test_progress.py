"""The bars' console: the API shows bars by default in a notebook only, and a notebook without ipywidgets (where
rich's own display only warns) gets the bar drawn as on a terminal, rewritten in place."""

import functools
import importlib.util

import pytest
from rich.console import Console

import probe.utils.progress as progress


@pytest.mark.parametrize("widgets", [True, False])
def test_a_notebook_console_draws_live_with_or_without_ipywidgets(widgets, monkeypatch):
    monkeypatch.setattr(progress, "Console", functools.partial(Console, force_jupyter=True))  # as in a kernel
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: (found("rich") if widgets else None) if name == "ipywidgets"
                        else found(name, *args))
    console = progress.progress_console()
    assert (console.is_jupyter, console.is_terminal) == ((True, False) if widgets else (False, True))
    assert progress.in_notebook() is True and progress.show_progress(None) is True
    assert progress.show_progress(False) is False


def test_outside_a_notebook_bars_are_off_by_default_and_on_when_asked():
    assert progress.in_notebook() is False  # pytest is no Jupyter kernel
    assert progress.show_progress(None) is False and progress.show_progress(True) is True
    assert progress.progress_console().is_jupyter is False
