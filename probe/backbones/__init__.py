"""Backbones by name: the one registry behind `--backbone NAME`.

    backbone = build_backbone(BackboneSpec(kind="mae", checkpoint=Path("mae.pth")), purpose="segment")
    backbone.cells, backbone.image_size, backbone.identity, backbone(images, stems, step)

`purpose` picks a family's default cells when `layers` / `steps` are not given: "segment" (the paper's
segmenter), "grid" (every layer), "kmeans" (a few layers for a figure) or "features" (the export).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from probe.backbones.adm import ADMBackbone, NoisePolicy, default_model_files
from probe.backbones.base import Backbone, Cell, check_cell_syntax, identity_hash
from probe.backbones.diffusers_unet import DiffusersUNetBackbone
from probe.backbones.mae import MAEBackbone
from probe.backbones.pixels import PixelBackbone
from probe.backbones.stable_diffusion import StableDiffusionBackbone
from probe.backbones.swav import SwAVBackbone
from probe.errors import ProbeError

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "Cell", "NoisePolicy", "build_backbone", "check_cell_syntax",
           "default_model_files", "identity_hash"]

BACKBONES = {
    "ddpm": ADMBackbone,  # a guided-diffusion checkpoint (default: the shipped default DDPM)
    "random": ADMBackbone,  # the same UNet with seeded random weights
    "pixels": PixelBackbone,
    "mae": MAEBackbone,
    "swav": SwAVBackbone,
    "swav_w2": SwAVBackbone,
    "diffusers": DiffusersUNetBackbone,  # a diffusers UNet2DModel folder (google/ddpm-ema-*); needs the extra
    "sd": StableDiffusionBackbone,  # a Stable Diffusion pipeline folder; needs the extra
}
PURPOSES = ("segment", "grid", "kmeans", "features")


@dataclass
class BackboneSpec:
    """Everything a user says about a backbone; `build_backbone` turns it into one. `layers` and `steps` are the
    --blocks / --steps texts (None: the purpose's default); options a family does not take must stay unset."""

    kind: str = "ddpm"
    checkpoint: Path | None = None
    model_flags: str | Path | dict | None = None
    layers: str | None = None
    steps: str | None = None
    noise: str | None = None
    seed: int = 0
    input_activations: bool = False
    image_size: int | None = None
    device: str = "cpu"
    prompt: str | None = None  # sd only: the text the UNet is conditioned on (None: the empty prompt)
    revision: str | None = None  # a hub model's revision (branch, tag or commit), for a hub name as checkpoint

    def to_dict(self) -> dict:
        """JSON-ready, for manifests (a Path becomes a string)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict, **changes) -> BackboneSpec:
        """The spec `to_dict` wrote (a manifest's, a sweep cell's), with `changes` applied."""
        spec = cls(**{**data, **changes})
        if spec.checkpoint is not None:
            spec.checkpoint = Path(spec.checkpoint)
        return spec


def build_backbone(spec: BackboneSpec, purpose: str = "segment", native_size: int | None = None) -> Backbone:
    """The backbone `spec` names, with its cells chosen for `purpose`. `native_size`: the data's image size, for
    backbones whose input size is free (pixels, swav)."""
    if spec.kind not in BACKBONES:
        raise ProbeError(f"--backbone {spec.kind!r}: use one of {', '.join(BACKBONES)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    if spec.image_size is not None and spec.image_size < 8:
        raise ProbeError(f"--image-size {spec.image_size}: give 8 or more pixels")
    if spec.prompt is not None and spec.kind != "sd":
        raise ProbeError(f"--prompt: the {spec.kind} backbone takes no text prompt (only --backbone sd); drop --prompt")
    return BACKBONES[spec.kind].build(spec, purpose, native_size)
