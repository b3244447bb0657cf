"""The forward diffusion process of guided-diffusion: beta schedules, respacing, q_sample, timestep scaling."""

from __future__ import annotations

import math

import numpy as np
import torch

from probe.errors import ProbeError
from probe.models.flags import ModelFlags


def betas_for(schedule: str, steps: int) -> np.ndarray:
    """float64 betas: 'linear' (1e-4..0.02, scaled to 1000 steps) or 'cosine' (Nichol & Dhariwal)."""
    if schedule == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if schedule == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])
    raise ProbeError(f"unknown noise_schedule {schedule!r}: use linear or cosine")


def space_timesteps(steps: int, spacing: str) -> list[int]:
    """The original timesteps a respaced process keeps: 'ddimN' (even stride) or section counts '10,20'."""
    if spacing.startswith("ddim"):
        count = int(spacing[len("ddim"):])
        for stride in range(1, steps):
            if len(range(0, steps, stride)) == count:
                return list(range(0, steps, stride))
        raise ProbeError(f"timestep_respacing {spacing}: no even stride gives {count} of {steps} steps")
    counts = [int(c) for c in spacing.split(",")]
    size, extra = divmod(steps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if section < count:
            raise ProbeError(f"timestep_respacing {spacing}: cannot take {count} steps from a section of {section}")
        stride = 1 if count <= 1 else (section - 1) / (count - 1)
        kept += [start + round(stride * j) for j in range(count)]
        start += section
    return sorted(set(kept))


class Diffusion:
    """q(x_t | x_0) for a model's flags. Step indices t refer to the (possibly respaced) process."""

    def __init__(self, flags: ModelFlags):
        base_betas = betas_for(flags.noise_schedule, flags.diffusion_steps)
        self.original_steps = flags.diffusion_steps
        if flags.timestep_respacing:
            kept = space_timesteps(flags.diffusion_steps, flags.timestep_respacing)
        else:
            kept = list(range(flags.diffusion_steps))
        self.timestep_map = np.array(kept)
        kept_cumprod = np.cumprod(1.0 - base_betas)[self.timestep_map]
        self.betas = 1 - kept_cumprod / np.append(1.0, kept_cumprod[:-1])
        alphas_cumprod = np.cumprod(1.0 - self.betas)  # recomputed from the betas, as guided-diffusion does
        self.alphas_cumprod = alphas_cumprod
        self.rescale_timesteps = flags.rescale_timesteps
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)

    @property
    def num_steps(self) -> int:
        return len(self.timestep_map)

    def check_step(self, t: int) -> None:
        if not 0 <= t < self.num_steps:
            raise ProbeError(f"step {t} is out of range: this model's diffusion has steps 0..{self.num_steps - 1}")

    @staticmethod
    def _at(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as float32, broadcast over the image dimensions (as guided-diffusion does)."""
        picked = torch.from_numpy(values).to(like.device)[t].float()
        return picked.reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values the UNet sees for step indices t, as the authors' extractor passes them:
        `diffusion._scale_timesteps(t)` called on the bare UNet. Without respacing that is t, times
        1000 / T with rescale_timesteps; with respacing guided-diffusion leaves mapping and scaling to a model
        wrapper the extractor does not use, so the UNet sees the respaced index t itself."""
        if self.rescale_timesteps and len(self.timestep_map) == self.original_steps:
            return t.float() * (1000.0 / self.original_steps)
        return t
