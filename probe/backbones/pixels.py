"""The raw-pixel control: each pixel's 3x3 RGB neighbourhood (27 features, zero-padded at the border)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from probe.backbones.base import Backbone, Cell, refuse_options, select_layers
from probe.errors import ProbeError


class PixelBackbone(Backbone):
    kind = "pixels"
    layer_title = "input"
    normalisation = "x / 255 * 2 - 1"

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.all_layers = ["rgb3x3"]
        self.cells = [Cell("rgb3x3")]

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> PixelBackbone:
        refuse_options(spec, ("--checkpoint", "--model-flags", "--steps", "--noise"), "reads no model and has no steps")
        select_layers(spec.layers, ["rgb3x3"], ["rgb3x3"])
        size = spec.image_size or native_size
        if not size:
            raise ProbeError("the pixels backbone needs an image size: pass --image-size")
        return cls(size)

    @property
    def identity(self) -> dict:
        return {"backbone": "pixels", "version": self.version}

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        b, c, h, w = images.shape
        patches = F.unfold(images.float(), kernel_size=3, padding=1)  # (B, 27, H*W)
        return {"rgb3x3": patches.reshape(b, c * 9, h, w)}
