"""The tests' own caches (conftest): no test, session or module fixture, nor a subprocess they start, uses the user's
~/.cache/probe or Hugging Face home, where a job of theirs may be running."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.utils.cache import cache_root


@pytest.fixture(scope="module")
def module_cache() -> tuple[Path, str]:
    """What a module fixture sees: it runs before any test's own cache exists."""
    return cache_root(), os.environ["HF_HOME"]


def test_every_test_and_fixture_has_a_temporary_cache(module_cache, tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    probe_cache, hf_home = module_cache
    assert base in probe_cache.parents and base in Path(hf_home).parents  # the session's, not the user's
    assert cache_root() == tmp_path / "cache" and os.environ["HF_HOME"] == str(tmp_path / "hf")
    from huggingface_hub import constants

    assert constants.HF_HUB_CACHE == str(tmp_path / "hf" / "hub") and constants.HF_HUB_OFFLINE is True
    code = "from probe.utils.cache import cache_root; from huggingface_hub import constants; " \
        "print(cache_root()); print(constants.HF_HUB_CACHE)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.splitlines() == [str(tmp_path / "cache"), str(tmp_path / "hf" / "hub")]  # what a subprocess sees
