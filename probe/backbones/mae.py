"""The paper's MAE baseline: encoder blocks of a ViT trained as a masked autoencoder (facebookresearch/mae
checkpoints, `{"model": MaskedAutoencoderViT state dict}`). Cells `block{b}`: a block's output tokens, cls token
dropped, patch tokens on the patch grid. Input: the [0, 1] image normalised with ImageNet's mean and std."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, imagenet_input, loaded, refuse_options, select_layers
from probe.backbones.spec import LAST_LAYERS
from probe.errors import ProbeError
from probe.models.checkpoint import file_hash
from probe.models.flags import parse_flags
from probe.models.vit import load_mae

DEFAULT_WEIGHTS = "default_mae.pt"


def default_weights() -> Path:
    path = Path(str(resources.files("probe") / "weights" / DEFAULT_WEIGHTS))
    if not path.is_file():
        raise ProbeError(f"--backbone mae needs --checkpoint: the package holds no default MAE ({path})")
    return path


class MAEBackbone(Backbone):
    kind = "mae"
    layer_title = "encoder block"
    normalisation = "ImageNet mean/std of x / 255"

    def __init__(self, checkpoint: Path, num_heads: int | None, blocks: list[int] | None, purpose: str,
                 device: str = "cpu"):
        self.checkpoint = Path(checkpoint)
        self.encoder = loaded(self.checkpoint, [num_heads, device],
                              lambda: load_mae(self.checkpoint, num_heads=num_heads, device=device))
        self.device = torch.device(device)
        config = self.encoder.config
        self.config = config
        self.image_size = config.img_size
        self.all_layers = [f"block{b}" for b in range(config.depth)]
        self.blocks = blocks
        self.digest = loaded(self.checkpoint, "sha256", lambda: file_hash(self.checkpoint))

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> MAEBackbone:
        refuse_options(spec, ("--steps", "--noise", "--image-size", "--input-activations"),
                       "has no diffusion steps and takes the checkpoint's image size")
        flags = parse_flags(spec.model_flags) if spec.model_flags else {}
        unknown = sorted(set(flags) - {"num_heads"})
        if unknown:
            raise ProbeError(f"--model-flags --{unknown[0]}: the mae backbone takes only --num_heads N "
                             "(everything else is read from the checkpoint)")
        backbone = cls(spec.checkpoint or default_weights(), flags.get("num_heads"), None, purpose, spec.device)
        depth = backbone.config.depth
        last = [f"block{b}" for b in range(max(0, depth - LAST_LAYERS), depth)]
        defaults = {"segment": last, "features": last, "grid": backbone.all_layers,
                    "kmeans": [f"block{b}" for b in sorted({round((depth - 1) * f) for f in (0.25, 0.5, 0.75, 1)})]}
        layers = select_layers(spec.layers, backbone.all_layers, defaults[purpose])
        backbone.blocks = [backbone.all_layers.index(layer) for layer in layers]
        backbone.cells = [Cell(layer) for layer in layers]
        return backbone

    @property
    def identity(self) -> dict:
        c = self.config
        return {"backbone": self.kind, "version": self.version, "checkpoint": self.digest,
                "architecture": {"img_size": c.img_size, "patch_size": c.patch_size, "embed_dim": c.embed_dim,
                                 "depth": c.depth, "num_heads": c.num_heads}}

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        outputs = self.encoder.forward_blocks(imagenet_input(images.to(self.device)), self.blocks)
        return {f"block{b}": outputs[b].float().cpu() for b in self.blocks}
