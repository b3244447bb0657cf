"""The optional libraries (pip extras of pyproject.toml): the one way the toolkit imports them, so that a missing
one is a `ProbeError` of one line naming the `pip install` that adds it, never a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from probe.errors import ProbeError

# each optional library, by its import name, and the extra of pyproject.toml that installs it
EXTRAS = {"diffusers": "diffusers", "transformers": "diffusers", "huggingface_hub": "diffusers",
          "accelerate": "diffusers", "safetensors": "diffusers", "ray": "ray"}


def install_command(extra: str) -> str:
    """The command that installs `extra` into this checkout, e.g. ``pip install -e ".[diffusers]"``."""
    return f'pip install -e ".[{extra}]"'


def require(*modules: str, purpose: str) -> ModuleType:
    """Import the optional libraries `modules` (names of `EXTRAS`) and return the first. When any is missing (or
    fails to import for a missing dependency of its own), one ProbeError line: `purpose` needs them, and the
    install command of their extras."""
    unknown = [name for name in modules if name.split(".")[0] not in EXTRAS]
    if unknown:
        raise ValueError(f"{unknown[0]} is not an optional library of probe.utils.extras.EXTRAS")
    loaded, missing = [], []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        extras = dict.fromkeys(EXTRAS[name.split(".")[0]] for name in missing)
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise ProbeError(f"{purpose} needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed: "
                         f"{' && '.join(install_command(extra) for extra in extras)}")
    return loaded[0]
