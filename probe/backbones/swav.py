"""The paper's SwAV baselines: sublayers of a ResNet trained with SwAV (facebookresearch/swav checkpoints,
`{"state_dict": {"module.<key>": tensor}}`). `swav` is the ResNet-50, `swav_w2` the ResNet-50w2; both load
any Bottleneck ResNet whose widths and depths the checkpoint's shapes give. Cells `layer{L}.{j}`. Input: the
[0, 1] image normalised with ImageNet's mean and std, at --image-size (256 for the paper's datasets)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, imagenet_input, loaded, refuse_options, select_layers
from probe.errors import ProbeError
from probe.models.checkpoint import file_hash
from probe.models.resnet import load_swav


class SwAVBackbone(Backbone):
    kind = "swav"
    layer_title = "ResNet sublayer"
    normalisation = "ImageNet mean/std of x / 255"

    def __init__(self, checkpoint: Path, image_size: int, kind: str, device: str = "cpu"):
        self.checkpoint, self.kind, self.image_size = Path(checkpoint), kind, image_size
        self.network = loaded(self.checkpoint, [device], lambda: load_swav(self.checkpoint, device=device))
        self.config = self.network.config
        self.device = torch.device(device)
        self.all_layers = self.network.layer_names()
        self.digest = loaded(self.checkpoint, "sha256", lambda: file_hash(self.checkpoint))

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> SwAVBackbone:
        refuse_options(spec, ("--steps", "--noise", "--model-flags", "--input-activations"),
                       "has no diffusion steps or flags")
        if spec.checkpoint is None:
            raise ProbeError(f"--backbone {spec.kind} needs --checkpoint: a SwAV ResNet checkpoint "
                             "(e.g. swav_800ep_pretrain.pth.tar from facebookresearch/swav)")
        backbone = cls(spec.checkpoint, spec.image_size or native_size or 256, spec.kind, spec.device)
        stages = {}
        for name in backbone.all_layers:
            stages.setdefault(name.split(".")[0], []).append(name)
        every_other = [name for names in stages.values() for name in names[::2]]  # the authors' nine for ResNet-50
        defaults = {"segment": every_other, "features": every_other, "grid": backbone.all_layers,
                    "kmeans": [names[-1] for names in stages.values()]}
        backbone.cells = [Cell(layer) for layer in select_layers(spec.layers, backbone.all_layers, defaults[purpose])]
        return backbone

    @property
    def identity(self) -> dict:
        c = self.config
        return {"backbone": self.kind, "version": self.version, "checkpoint": self.digest,
                "image_size": self.image_size, "architecture": {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in asdict(c).items()}}

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        outputs = self.network.forward_layers(imagenet_input(images.to(self.device)), self.layers)
        return {layer: outputs[layer].float().cpu() for layer in self.layers}
