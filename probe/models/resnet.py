"""The Bottleneck ResNet of the SwAV baselines (torchvision's resnet50, swav's resnet50w2), by state-dict key.

Module names mirror torchvision / facebookresearch/swav src/resnet50.py so that the authors' checkpoints
load strictly: conv1, bn1, layer{L}.{j}.conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/downsample.1. swav pads
the input by 1 before a padding-2 stem convolution; that is the same as torchvision's padding 3, used here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from probe.errors import ProbeError
from probe.models.checkpoint import checkpoint_family, read_checkpoint, resolve_device, strict_problems

__all__ = ["ResNet", "ResNetConfig", "load_swav"]

log = logging.getLogger("probe")
STAGES = 4
# Heads of a SwAV checkpoint that feature extraction does not use (torchvision's classifier is fc).
UNUSED_KEY = re.compile(r"^(projection_head|prototypes|fc)\.")


@dataclass
class ResNetConfig:
    """Blocks per stage, stem channels, and per stage the bottleneck width and output channels."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    out_channels: tuple[int, ...] = (256, 512, 1024, 2048)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> ResNetConfig:
        """Everything read from tensor shapes: resnet50 gives [3, 4, 6, 3] and 64 stem channels, resnet50w2 128."""
        if "conv1.weight" not in state or not any(k.startswith("layer") for k in state):
            family = checkpoint_family(state)
            looks = f"it looks like {family}" if family else f"its keys start {', '.join(sorted(state)[:4])}"
            raise ProbeError(f"{source} is not a SwAV ResNet checkpoint ({looks}): give the SwAV checkpoint saved as "
                             "{'state_dict': {'module.<key>': tensor}}")
        layers, widths, outs = [], [], []
        for stage in range(1, STAGES + 1):
            found = [int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))]
            if not found:
                raise ProbeError(f"{source} has no layer{stage} keys (missing: layer{stage}.0.conv1.weight and the rest of "
                                 f"layer{stage}): the checkpoint is incomplete or not a SwAV ResNet; download it again")
            layers.append(max(found) + 1)
            for key, into in ((f"layer{stage}.0.conv1.weight", widths), (f"layer{stage}.0.conv3.weight", outs)):
                if key not in state:
                    raise ProbeError(f"{source} is missing {key}: the checkpoint is incomplete; download it again")
                into.append(state[key].shape[0])
        return cls(tuple(layers), state["conv1.weight"].shape[0], tuple(widths), tuple(outs))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride or the dilation), 1x1 expand, each with BatchNorm; projected shortcut
    when needed."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool) and four Bottleneck stages; no head.

    Built on the meta device and materialised once, so construction never touches the global RNG:
    with `init` the convolutions are Kaiming-normal (fan out) from `generator` (seed 0 when None) and
    BatchNorms the identity; without it the weights stay unset until a load_state_dict.

    `replace_stride_with_dilation` (for layer2, layer3, layer4) is torchvision's option: a stage marked True keeps
    its input resolution and dilates its 3x3 convolutions instead (its first block at the previous dilation), so
    (False, True, True) gives output stride 8, as DeepLabV3's backbone. The parameters and their names are the same.
    """

    def __init__(self, config: ResNetConfig, generator: torch.Generator | None = None, init: bool = True,
                 replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False)):
        super().__init__()
        self.config = config
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(3, config.stem, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(config.stem)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            channels, dilation = config.stem, 1
            dilate = (False, *replace_stride_with_dilation)
            for stage, (blocks, width, out) in enumerate(zip(config.layers, config.widths, config.out_channels)):
                stride, previous = (1 if stage == 0 else 2), dilation
                if dilate[stage]:
                    stride, dilation = 1, dilation * 2
                layer = nn.Sequential(*(Bottleneck(channels if j == 0 else out, width, out, stride if j == 0 else 1,
                                                   previous if j == 0 else dilation) for j in range(blocks)))
                self.add_module(f"layer{stage + 1}", layer)
                channels = out
        self.to_empty(device="cpu")
        if init:
            self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))
        self.eval()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1: no randomness

    def layer_names(self) -> list[str]:
        return [f"layer{s + 1}.{j}" for s, n in enumerate(self.config.layers) for j in range(n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer4 feature map (B, C, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, STAGES + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x

    @torch.no_grad()
    def forward_layers(self, x: torch.Tensor, names) -> dict[str, torch.Tensor]:
        """Outputs (B, C, h, w) of sublayers "layerL.j" (or whole stages "layerL"); later layers are not run."""
        valid = self.layer_names()
        order = {name: i for i, name in enumerate(valid)}
        order.update({f"layer{s + 1}": order[f"layer{s + 1}.{n - 1}"] for s, n in enumerate(self.config.layers)})
        unknown = [n for n in names if n not in order]
        if unknown:
            raise ProbeError(f"ResNet layer {', '.join(map(str, unknown))} does not exist: choose from "
                             f"{', '.join(valid)} (or layer1..layer{STAGES})")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ProbeError(f"the ResNet takes (B, 3, H, W) images, got {tuple(x.shape)}: give RGB images")
        last = max((order[n] for n in names), default=-1)
        found = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name, block in zip(valid[: last + 1], (b for s in range(1, STAGES + 1) for b in getattr(self, f"layer{s}"))):
            x = block(x)
            found[name] = x
        stage_end = {f"layer{s + 1}": f"layer{s + 1}.{n - 1}" for s, n in enumerate(self.config.layers)}
        return {n: found[stage_end.get(n, n)] for n in names}


def load_swav(checkpoint: str | Path | dict, device: str = "cpu") -> ResNet:
    """The ResNet of a SwAV checkpoint, loaded strictly, in eval mode.

    Accepts the authors' `{"state_dict": {"module.<key>": tensor}}`, the same without "module.", a bare
    state dict, or a path to any. projection_head.*, prototypes.* and fc.* keys are unused and logged once.
    """
    state, source, _ = read_checkpoint(checkpoint, "a SwAV checkpoint")
    if "patch_embed.proj.weight" in state or "pos_embed" in state:
        raise ProbeError(f"{source} looks like an MAE/ViT checkpoint (patch_embed/pos_embed keys), not a SwAV ResNet: "
                         "load it as an MAE checkpoint")
    unused = sorted(k for k in state if UNUSED_KEY.match(k))
    used = {k: v for k, v in state.items() if not UNUSED_KEY.match(k)}
    config = ResNetConfig.from_state_dict(used, source)
    model = ResNet(config, init=False)
    problems = strict_problems(model.state_dict(), used)
    if problems:
        raise ProbeError(f"{source} does not fit a Bottleneck ResNet ({'; '.join(problems)}): give the SwAV "
                         "pre-training checkpoint, complete and unmodified")
    model.load_state_dict(used)
    if unused:
        log.info("%s: %d keys unused for features (projection head, prototypes, classifier): %s",
                 source, len(unused), ", ".join(unused))
    return model.eval().to(resolve_device(device))
