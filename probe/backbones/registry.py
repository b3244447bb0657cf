"""The registry behind `--backbone NAME`: every family's class by kind, and build_backbone.

`purpose` picks a family's default cells when `layers` / `steps` are not given: "segment" (the paper's
segmenter), "grid" (every layer), "kmeans" (a few layers for a figure) or "features" (the export).
"""

from __future__ import annotations

from probe.backbones.adm import ADMBackbone
from probe.backbones.base import Backbone
from probe.backbones.diffusers_unet import DiffusersUNetBackbone
from probe.backbones.diffusion_transformers import DiTBackbone, FluxBackbone, PixArtBackbone, SD3Backbone
from probe.backbones.mae import MAEBackbone
from probe.backbones.pixels import PixelBackbone
from probe.backbones.spec import DTYPE_BACKBONES, TEXT_BACKBONES, BackboneSpec, check_offload, check_tokens
from probe.backbones.stable_diffusion import StableDiffusionBackbone
from probe.backbones.swav import SwAVBackbone
from probe.backbones.vision_transformers import TransformersBackbone
from probe.errors import ProbeError

BACKBONES = {
    "ddpm": ADMBackbone,  # a guided-diffusion checkpoint (default: the shipped default DDPM)
    "random": ADMBackbone,  # the same UNet with seeded random weights
    "pixels": PixelBackbone,
    "mae": MAEBackbone,
    "swav": SwAVBackbone,
    "swav_w2": SwAVBackbone,
    "diffusers": DiffusersUNetBackbone,  # a diffusers UNet2DModel folder (google/ddpm-ema-*); needs the extra
    "sd": StableDiffusionBackbone,  # a Stable Diffusion 1.x/2.x or SDXL pipeline folder; needs the extra
    "dit": DiTBackbone,  # diffusion transformers (diffusion_transformers.py): a DiT pipeline folder
    "pixart": PixArtBackbone,  # PixArt-alpha / PixArt-Sigma
    "sd3": SD3Backbone,  # Stable Diffusion 3 / 3.5
    "flux": FluxBackbone,  # FLUX.1
    "transformers": TransformersBackbone,  # a transformers vision model folder (DINOv2/v3, CLIP, SigLIP, ViT-MAE, ViT)
}
PURPOSES = ("segment", "grid", "kmeans", "features")


def build_backbone(spec: BackboneSpec, purpose: str = "segment", native_size: int | None = None) -> Backbone:
    """The backbone `spec` names, with its cells chosen for `purpose`. `native_size`: the data's image size, for
    backbones whose input size is free (pixels, swav)."""
    if spec.kind not in BACKBONES:
        raise ProbeError(f"--backbone {spec.kind!r}: use one of {', '.join(BACKBONES)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    if spec.image_size is not None and spec.image_size < 8:
        raise ProbeError(f"--image-size {spec.image_size}: give 8 or more pixels")
    if spec.kind == "dit" and spec.prompt is not None:
        raise ProbeError("--prompt: the dit backbone is class-conditional (use --class-label N); drop --prompt")
    if spec.prompt is not None and spec.kind not in TEXT_BACKBONES:
        raise ProbeError(f"--prompt: the {spec.kind} backbone takes no text prompt (only --backbone "
                         f"{', '.join(TEXT_BACKBONES)}); drop --prompt")
    if spec.class_label is not None and spec.kind in TEXT_BACKBONES:
        raise ProbeError(f"--class-label: the {spec.kind} backbone is text-conditioned (use --prompt); drop "
                         "--class-label")
    if spec.class_label is not None and spec.kind != "dit":
        raise ProbeError(f"--class-label: the {spec.kind} backbone takes no class label (only --backbone dit); drop "
                         "--class-label")
    check_offload(spec.kind, spec.offload)
    check_tokens(spec.kind, spec.tokens)
    if spec.model_dtype is not None and spec.kind not in DTYPE_BACKBONES:
        raise ProbeError(f"--model-dtype: the {spec.kind} backbone computes in float32 (only --backbone "
                         f"{', '.join(DTYPE_BACKBONES)} take --model-dtype); drop --model-dtype")
    spec.require_libraries()
    return BACKBONES[spec.kind].build(spec, purpose, native_size)
