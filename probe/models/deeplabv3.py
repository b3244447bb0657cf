"""DeepLabV3 with a dilated ResNet backbone, as torchvision's `deeplabv3_resnet50/101` (no auxiliary head): the
segmentation network the authors train on synthesized data (DatasetDDPM).

Written here rather than imported because torchvision cannot be installed beside the torch this project pins
(PyPI's torchvision build fails to import beside torch 2.13.0+cpu). Module and parameter names follow
torchvision's, so a torchvision DeepLabV3 state dict loads as it is: `backbone.conv1 ... backbone.layer4`
(probe.models.resnet's ResNet with stride replaced by dilation in layer3 and layer4: output stride 8) and
`classifier.0` (ASPP: `convs.0` 1x1, `convs.1..3` 3x3 at dilations 12, 24, 36, `convs.4` image pooling,
`project`), `classifier.1..4` (3x3 conv, BN, ReLU, 1x1 conv to the classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from probe.errors import ProbeError
from probe.models.resnet import ResNet, ResNetConfig

ARCHITECTURES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
ASPP_RATES = (12, 24, 36)


@dataclass
class DeepLabConfig:
    """`width`: the ResNet's stem and first-stage bottleneck channels (64 in torchvision; stages double it, outputs
    are 4x); the ASPP channels scale with it (256 at width 64). Small widths are for tests."""

    num_classes: int
    arch: str = "resnet101"
    width: int = 64

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ProbeError(f"--arch {self.arch!r}: use {' or '.join(ARCHITECTURES)}")
        if self.num_classes < 2 or self.width < 1:
            raise ProbeError(f"DeepLabV3 with {self.num_classes} classes and width {self.width}: need >= 2 classes "
                             "and width >= 1")

    @property
    def resnet(self) -> ResNetConfig:
        w = self.width
        return ResNetConfig(ARCHITECTURES[self.arch], w, (w, 2 * w, 4 * w, 8 * w), (4 * w, 8 * w, 16 * w, 32 * w))

    @property
    def aspp_channels(self) -> int:
        return 4 * self.width


def _conv_bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv, BN, ReLU, upsampled back to the input's size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches concatenated and projected (dropout 0.5)."""

    def __init__(self, in_channels: int, rates: tuple[int, ...], out_channels: int):
        super().__init__()
        branches = [_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False))]
        branches += [_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=False))
                     for r in rates]
        self.convs = nn.ModuleList([*branches, ASPPPooling(in_channels, out_channels)])
        self.project = nn.Sequential(*_conv_bn_relu(nn.Conv2d(len(self.convs) * out_channels, out_channels, 1,
                                                              bias=False)), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """Logits (B, classes, H, W) for ImageNet-normalised images (B, 3, H, W): dilated ResNet, ASPP head, bilinear
    upsampling to the input size.

    Built without touching the global RNG: the backbone as probe.models.resnet.ResNet initialises it (Kaiming
    normal, fan out, as torchvision's resnet) and the head's convolutions by torch's default rule (Kaiming uniform,
    a = sqrt(5); the last conv's bias uniform in +-1/sqrt(fan_in)), all drawn from `generator`."""

    def __init__(self, config: DeepLabConfig, generator: torch.Generator):
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.resnet, generator, replace_stride_with_dilation=(False, True, True))
        channels, aspp = config.resnet.out_channels[-1], config.aspp_channels
        with torch.device("meta"):
            self.classifier = nn.Sequential(ASPP(channels, ASPP_RATES, aspp), nn.Conv2d(aspp, aspp, 3, padding=1, bias=False),
                                            nn.BatchNorm2d(aspp), nn.ReLU(), nn.Conv2d(aspp, config.num_classes, 1))
        self.classifier.to_empty(device="cpu")
        with torch.no_grad():
            for module in self.classifier.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                    if module.bias is not None:
                        bound = 1 / math.sqrt(module.weight[0].numel())
                        module.bias.uniform_(-bound, bound, generator=generator)
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return F.interpolate(self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
