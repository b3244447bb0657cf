"""Backbones by name: the backbone contract (base), the torch-free description a user gives (spec), the registry
(registry) and one module per family. Families never import each other: what they share lives in noise (steps and
noise), folders (model folders), diffusers_common (the diffusers UNets) and latent_diffusion (the latent pipelines).
Nothing outside this package branches on a backbone's kind.

    backbone = build_backbone(BackboneSpec(kind="mae", checkpoint=Path("mae.pth")), purpose="segment")
    backbone.cells, backbone.image_size, backbone.identity, backbone(images, stems, step)

The names below load their module on first use, so `from probe.backbones import BackboneSpec` imports no torch.
"""

from __future__ import annotations

from probe.utils.lazy import lazy_names

_HOMES = {"BACKBONES": "registry", "PURPOSES": "registry", "build_backbone": "registry",
          "Backbone": "base", "Cell": "base", "identity_hash": "base",
          "BackboneSpec": "spec", "check_cell_syntax": "spec",
          "NoisePolicy": "noise", "default_model_files": "adm"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
