"""probe: look inside diffusion models (Baranchuk et al., ICLR 2022, reproduced and extended).

The Python API, the functions behind the `probe` command (loaded on first use: `import probe` stays light):

    import probe
    backbone = probe.load_backbone()                        # the embedded default DDPM, the segmenter's cells
    train = probe.load_dataset(number=20)                   # the embedded default domain, as probe segment
    test = probe.load_dataset(split="test", number=20)
    segmenter = probe.Segmenter(backbone).fit(train)        # probe segment's defaults
    segmenter.score(test)["miou"]
    table = probe.grid(probe.load_backbone(purpose="grid"), train, test)
    probe.plots.grid_heatmap(table)                         # a matplotlib Figure
    found = probe.correspond(probe.load_backbone(purpose="grid"), "SPair-71k")   # keypoint matching per cell
"""

from __future__ import annotations

import importlib

from probe.errors import ProbeError
from probe.utils.runtime import flush_subnormals
from probe.version import __version__ as __version__

flush_subnormals()  # before torch starts a thread (each copies the setting): the commands, the API, Ray workers

__all__ = ["Backbone", "ClusterMaps", "Dataset", "ProbeError", "Segmenter", "correspond", "grid", "kmeans",
           "load_backbone", "load_dataset", "plots"]
_API = ("Backbone", "ClusterMaps", "Dataset", "Segmenter", "correspond", "grid", "kmeans", "load_backbone",
        "load_dataset")


def __getattr__(name: str):
    """The API's names, imported from probe.api (torch, faiss) on first use; `plots`, the figures."""
    if name in _API:
        api = importlib.import_module("probe.api")
        for exported in _API:
            globals()[exported] = getattr(api, exported)
        return globals()[name]
    if name == "plots":
        return importlib.import_module("probe.plots")
    raise AttributeError(f"module 'probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

