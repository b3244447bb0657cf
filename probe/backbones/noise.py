"""What the diffusion backbones share about steps and noise: the paper's default cells scaled to another depth and T,
and the noise policy (how x_t is reached from x0)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch

from probe.backbones.spec import FEATURE_STEPS, GRID_STEPS, KMEANS_BLOCKS, KMEANS_STEPS, PAPER_BLOCKS, PAPER_STEPS
from probe.errors import ProbeError

NOISE_FORMS = ("shared, per-image, mean-of-K (e.g. mean-of-4), ddim-inversion (DDIM inversion through every step "
               "0, 1, ..., t) or ddim-inversion-K (K >= 1 even DDIM steps from 0 to t, e.g. ddim-inversion-10)")


def scaled_blocks(blocks: tuple[int, ...], decoder_blocks: int) -> list[int]:
    """Blocks of the paper's 18-block decoder at the same relative depth in another: round(b * (n - 1) / 17)."""
    return sorted({round(b * (decoder_blocks - 1) / 17) for b in blocks})


def scaled_steps(steps: tuple[int, ...], diffusion_steps: int) -> list[int]:
    """Steps of T = 1000 scaled to another T (kept below T)."""
    return sorted({min(diffusion_steps - 1, round(t * diffusion_steps / 1000)) for t in steps})


def default_cells(purpose: str, decoder_blocks: int, diffusion_steps: int) -> tuple[list[int], list[int]]:
    """A diffusion UNet's default (decoder blocks, steps) for `purpose`, scaled to its depth and T."""
    return {
        "segment": (scaled_blocks(PAPER_BLOCKS, decoder_blocks), scaled_steps(PAPER_STEPS, diffusion_steps)),
        "grid": (list(range(decoder_blocks)), scaled_steps(GRID_STEPS, diffusion_steps)),
        "kmeans": (scaled_blocks(KMEANS_BLOCKS, decoder_blocks), scaled_steps(KMEANS_STEPS, diffusion_steps)),
        "features": (list(range(decoder_blocks)), scaled_steps(FEATURE_STEPS, diffusion_steps)),
    }[purpose]


@dataclass(frozen=True)
class NoisePolicy:
    """How x_t is reached from x0: q_sample with noise drawn 'shared' (one tensor for all images and steps, as
    the authors), 'per-image' (seeded by the image's name) or 'mean-of-K' (activations averaged over K shared
    draws); or 'ddim-inversion' (no noise: deterministic eta-0 DDIM inversion of x0 with the same UNet, in
    `inversion_steps` even steps from 0 to t, None: every step; the seed has no effect but stays in the identity).
    Text forms: shared, per-image, mean-of-K, ddim-inversion, ddim-inversion-K."""

    kind: str = "shared"
    draws: int = 1
    seed: int = 0
    inversion_steps: int | None = None

    @classmethod
    def parse(cls, text: str, seed: int) -> NoisePolicy:
        if text in ("shared", "per-image"):
            return cls(text, 1, seed)
        match = re.fullmatch(r"mean-of-(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return cls("mean-of-K", int(match.group(1)), seed)
        if text == "ddim-inversion":
            return cls("ddim-inversion", 1, seed, None)
        match = re.fullmatch(r"ddim-inversion-(.*)", text)
        if match:
            value = match.group(1)
            if not re.fullmatch(r"\d+", value) or int(value) < 1:
                raise ProbeError(f"--noise {text!r}: the inversion step count {value!r} is not a whole number >= 1; "
                                 f"use {NOISE_FORMS}")
            return cls("ddim-inversion", 1, seed, int(value))
        raise ProbeError(f"--noise {text!r}: use {NOISE_FORMS}")

    def __str__(self) -> str:
        if self.kind == "ddim-inversion":
            return self.kind if self.inversion_steps is None else f"ddim-inversion-{self.inversion_steps}"
        return f"mean-of-{self.draws}" if self.kind == "mean-of-K" else self.kind

    def noises(self, stems: list[str], shape: tuple[int, int, int]) -> list[torch.Tensor]:
        """One (B, C, H, W) noise tensor per draw."""
        if self.kind == "ddim-inversion":
            raise ValueError("ddim-inversion draws no noise: x_t comes from ADMBackbone.inverted")
        if self.kind == "per-image":
            per_image = [torch.randn(1, *shape, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(s.encode()))) for s in stems]
            return [torch.cat(per_image)]
        gen = torch.Generator().manual_seed(self.seed)
        return [torch.randn(1, *shape, generator=gen).expand(len(stems), *shape) for _ in range(self.draws)]


def forward_noise(spec) -> NoisePolicy:
    """The noise policy of a backbone that adds noise with its scheduler: shared, per-image or mean-of-K (DDIM
    inversion needs the ADM's own sampler)."""
    noise = NoisePolicy.parse(spec.noise or "shared", spec.seed)
    if noise.kind == "ddim-inversion":
        raise ProbeError(f"--noise {noise}: the {spec.kind} backbone takes shared, per-image or mean-of-K noise "
                         "(DDIM inversion is only for --backbone ddpm)")
    return noise
