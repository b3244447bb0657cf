"""Decoder activations of a diffusion UNet: steps, blocks, noise policy and hooks.

A backbone turns a batch of images into named feature maps at their native resolution:
`t{t}_block{b}` for the UNet (every requested block of one forward per step), `rgb3x3` for the
raw-pixel control. One forward per (image batch, step) serves every requested block; hooks live only
for that forward.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from probe.diffusion import Diffusion
from probe.errors import ProbeError
from probe.models import LoadedModel
from probe.outputs import output_dir
from probe.progress import progress_bar


def feature_name(step: int, block: int) -> str:
    return f"t{step}_block{block}"


def _index_values(text: str, what: str) -> set[int] | None:
    """The integers of 'all' (None), '5,6,7' or '0-17'; an error names the bad part."""
    if text.strip().lower() == "all":
        return None
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ProbeError(f"--{what} {text!r}: {part!r} is not a number; write e.g. 5,6,7 or 0-17 or all")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        values.update(range(low, high + 1))
    return values


def check_index_syntax(text: str | None, what: str) -> None:
    """Fail on a malformed --blocks / --steps before anything is loaded (the range is checked later)."""
    if text:
        _index_values(text, what)


def parse_indices(text: str, upper: int, what: str) -> list[int]:
    """'all', '5,6,7' or '0-17' to a sorted list of ints in [0, upper); errors name the bad value."""
    values = _index_values(text, what)
    if values is None:
        return list(range(upper))
    bad = [v for v in sorted(values) if v >= upper]
    if bad:
        raise ProbeError(f"--{what} {bad[0]} is out of range: this model has {what} 0..{upper - 1}")
    return sorted(values)


@dataclass(frozen=True)
class NoisePolicy:
    """How the noise of q_sample is drawn: 'shared' (one tensor for all images and steps, as the authors),
    'per-image' (seeded by the image's name), 'mean-of-K' (activations averaged over K shared draws)."""

    kind: str = "shared"
    draws: int = 1
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int) -> NoisePolicy:
        if text in ("shared", "per-image"):
            return cls(text, 1, seed)
        match = re.fullmatch(r"mean-of-(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return cls("mean-of-K", int(match.group(1)), seed)
        raise ProbeError(f"--noise {text!r}: use shared, per-image or mean-of-K (e.g. mean-of-4)")

    def __str__(self) -> str:
        return f"mean-of-{self.draws}" if self.kind == "mean-of-K" else self.kind

    def noises(self, stems: list[str], shape: tuple[int, int, int]) -> list[torch.Tensor]:
        """One (B, C, H, W) noise tensor per draw."""
        if self.kind == "per-image":
            per_image = [torch.randn(1, *shape, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(s.encode()))) for s in stems]
            return [torch.cat(per_image)]
        gen = torch.Generator().manual_seed(self.seed)
        return [torch.randn(1, *shape, generator=gen).expand(len(stems), *shape) for _ in range(self.draws)]


@contextlib.contextmanager
def capture(modules: dict[int, torch.nn.Module], inputs: bool):
    """Record each module's output (or its input x) into a dict during the with-block; hooks removed after."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index, module in modules.items():
        if inputs:
            handles.append(module.register_forward_pre_hook(lambda m, args, i=index: captured.__setitem__(i, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, i=index: captured.__setitem__(i, out)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class UNetBackbone:
    """Activations of chosen decoder blocks (output_blocks) of a diffusion UNet at chosen steps."""

    def __init__(self, model: LoadedModel, blocks: list[int], steps: list[int], noise: NoisePolicy,
                 input_activations: bool = False):
        self.model = model
        self.diffusion = Diffusion(model.flags)
        for t in steps:
            self.diffusion.check_step(t)
        upper = model.flags.decoder_blocks
        for b in blocks:
            if not 0 <= b < upper:
                raise ProbeError(f"block {b} is out of range: this model has decoder blocks 0..{upper - 1}")
        self.blocks, self.steps, self.noise, self.input_activations = list(blocks), list(steps), noise, input_activations
        self.names = [feature_name(t, b) for t in self.steps for b in self.blocks]
        self.image_size = model.flags.image_size

    @property
    def identity(self) -> dict:
        """Everything that determines the activations, for cache keys and manifests."""
        return {"backbone": "ddpm", "checkpoint": self.model.checkpoint_hash, "flags": self.model.flags.to_dict(),
                "noise": str(self.noise), "seed": self.noise.seed, "input_activations": self.input_activations}

    def names_for_step(self, step: int) -> list[str]:
        return [feature_name(step, b) for b in self.blocks]

    def name(self, step: int, block: int) -> str:
        return feature_name(step, block)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, stems: list[str], steps: list[int] | None = None) -> dict[str, torch.Tensor]:
        """{name: (B, C, h, w) float32 on the CPU} for images (B, 3, H, W) in [-1, 1]."""
        dev = self.model.device
        x0 = images.to(dev, torch.float32)
        noises = [n.to(dev) for n in self.noise.noises(stems, tuple(images.shape[1:]))]
        modules = {b: self.model.unet.output_blocks[b] for b in self.blocks}
        result: dict[str, torch.Tensor] = {}
        for t in steps if steps is not None else self.steps:
            tt = torch.full((len(images),), t, dtype=torch.long, device=dev)
            sums: dict[int, torch.Tensor] = {}
            for noise in noises:
                with capture(modules, self.input_activations) as captured:
                    self.model.unet(self.diffusion.q_sample(x0, tt, noise), self.diffusion.model_timesteps(tt),
                                    last_block=max(self.blocks))
                for b, act in captured.items():
                    sums[b] = act.float() if b not in sums else sums[b] + act.float()
            for b in self.blocks:
                result[feature_name(t, b)] = (sums[b] / len(noises)).cpu()
        return result


class PixelBackbone:
    """The raw-pixel control: each pixel's 3x3 RGB neighbourhood (27 features, zero-padded at the border)."""

    names = ["rgb3x3"]
    steps = [0]
    blocks = [-1]  # one pseudo-cell for per-(block, step) analyses

    def __init__(self, image_size: int):
        self.image_size = image_size  # the size the images are loaded at (the model's, for a fair control)

    @property
    def identity(self) -> dict:
        return {"backbone": "pixels"}

    def names_for_step(self, step: int) -> list[str]:
        return self.names

    def name(self, step: int, block: int) -> str:
        return self.names[0]

    def __call__(self, images: torch.Tensor, stems: list[str], steps: list[int] | None = None) -> dict[str, torch.Tensor]:
        b, c, h, w = images.shape
        patches = F.unfold(images.float(), kernel_size=3, padding=1)  # (B, 27, H*W)
        return {"rgb3x3": patches.reshape(b, c * 9, h, w)}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def export_features(backbone: UNetBackbone, images: list, out, dtype: str = "float32", batch_size: int = 4,
                    progress: bool = True, overwrite: bool = False, inputs: list = ()) -> list:
    """Write `out/<stem>.npz` per image holding `t{t}_block{b}` arrays (C, h, w) at native resolution:
    the documented export format. Returns the written paths. `inputs`: the files read (never inside `out`)."""
    if dtype not in ("float32", "float16"):
        raise ProbeError(f"--dtype {dtype!r}: use float32 or float16")
    written = []
    with output_dir(out, command="features", overwrite=overwrite, inputs=inputs) as tmp, progress_bar(progress) as bar:
        task = bar.add_task("extracting features", total=len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            acts = backbone(torch.from_numpy(np.stack([im.image for im in chunk])), [im.stem for im in chunk])
            for j, image in enumerate(chunk):
                np.savez(tmp / f"{image.stem}.npz", **{name: a[j].numpy().astype(dtype) for name, a in acts.items()})
                written.append(out / f"{image.stem}.npz")
            bar.advance(task, len(chunk))
    return written
