"""guided-diffusion's diffusion process: beta schedules, respacing, q_sample, timestep scaling, DDIM steps and
inversion, and the two samplers (ancestral DDPM through every step, DDIM in K steps)."""

from __future__ import annotations

import itertools
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
        self.learn_sigma = flags.learn_sigma
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)
        previous = np.append(1.0, alphas_cumprod[:-1])  # guided-diffusion's posterior q(x_{t-1} | x_t, x_0)
        self.posterior_variance = self.betas * (1.0 - previous) / (1.0 - alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(previous) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - previous) * np.sqrt(1.0 - self.betas) / (1.0 - alphas_cumprod)

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

    # --- deterministic DDIM (eta 0): one step, a walk along a schedule, and the inversion ---------------------

    def eps(self, unet: torch.nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        """The UNet's noise prediction for x at step index `step` (the first C output channels: with learn_sigma
        the rest are the variance)."""
        tt = torch.full((len(x),), int(step), dtype=torch.long, device=x.device)
        return unet(x, self.model_timesteps(tt))[:, :x.shape[1]]

    def ddim_step(self, x: torch.Tensor, eps: torch.Tensor, step: int, to_step: int | None,
                  clip: bool = False) -> torch.Tensor:
        """One eta-0 DDIM move of x from step index `step` to `to_step` (either direction; None: the clean end,
        abar = 1) given the model's eps at `step`: x0 = (x - sqrt(1 - abar) eps) / sqrt(abar), then
        sqrt(abar') x0 + sqrt(1 - abar') eps. With `clip` (sampling), x0 is clamped to [-1, 1] and eps recomputed
        from it, as guided-diffusion's clip_denoised. float32 coefficients."""
        abar = torch.from_numpy(self.alphas_cumprod).float()
        a_t = abar[step]
        a_to = abar[to_step] if to_step is not None else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps

    def ddim_walk(self, unet: torch.nn.Module, x: torch.Tensor, schedule: list[int | None],
                  clip: bool = False, on_step=None) -> torch.Tensor:
        """x (at step schedule[0]) moved along `schedule` by DDIM steps, the eps of each step predicted at the
        step it leaves: increasing schedules invert, decreasing ones sample (a final None ends at abar = 1).
        `on_step()` is called after each step."""
        for step, to_step in itertools.pairwise(schedule):
            x = self.ddim_step(x, self.eps(unet, x, step), step, to_step, clip)
            if on_step is not None:
                on_step()
        return x

    def ddim_invert(self, unet: torch.nn.Module, x0: torch.Tensor, t: int, count: int | None = None) -> torch.Tensor:
        """x_t by deterministic DDIM inversion of x0 (taken as the state at step 0) in `count` even steps
        (None: every step 0, 1, ..., t). Sampling back along the reversed schedule
        (`ddim_walk(unet, x_t, inversion_schedule(t, count)[::-1])`) approximately recovers x0."""
        self.check_step(t)
        return self.ddim_walk(unet, x0, inversion_schedule(t, count))


    # --- sampling -------------------------------------------------------------------------------------------

    def p_sample_step(self, unet: torch.nn.Module, x: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} as guided-diffusion's p_sample with clip_denoised: x0 predicted from
        eps and clamped to [-1, 1], the posterior mean, and `noise` (ignored at step 0) scaled by the model's
        standard deviation: the learned range between the posterior variance and beta with learn_sigma, else
        guided-diffusion's default fixed-large variance (beta, the posterior variance at step 0)."""
        tt = torch.full((len(x),), int(step), dtype=torch.long, device=x.device)
        output = unet(x, self.model_timesteps(tt))
        channels = x.shape[1]
        eps = output[:, :channels]
        x0 = (self._at(1.0 / self.sqrt_alphas_cumprod, tt, x) * x
              - self._at(np.sqrt(1.0 / self.alphas_cumprod - 1), tt, x) * eps).clamp(-1, 1)
        mean = self._at(self.posterior_mean_coef1, tt, x) * x0 + self._at(self.posterior_mean_coef2, tt, x) * x
        if step == 0:
            return mean
        if self.learn_sigma:
            fraction = (output[:, channels:] + 1) / 2
            low = self._at(self.posterior_log_variance_clipped, tt, x)
            log_variance = fraction * self._at(np.log(self.betas), tt, x) + (1 - fraction) * low
        else:
            log_variance = self._at(np.log(np.append(self.posterior_variance[1], self.betas[1:])), tt, x)
        return mean + torch.exp(0.5 * log_variance) * noise

    @torch.no_grad()
    def ddpm_sample(self, unet: torch.nn.Module, generators: list[torch.Generator], shape: tuple[int, int, int],
                    device: str | torch.device = "cpu", on_step=None) -> torch.Tensor:
        """Ancestral samples through every step T-1, ..., 0, one image per generator: its starting noise and every
        step's noise are drawn from its own generator (on the CPU), so an image does not depend on which others
        share its batch. Returns (len(generators), *shape) in [-1, 1]. `on_step()` is called after each step."""
        x = per_image_noise(generators, shape, device)
        for step in reversed(range(self.num_steps)):
            noise = per_image_noise(generators, shape, device) if step > 0 else torch.zeros_like(x)
            x = self.p_sample_step(unet, x, step, noise)
            if on_step is not None:
                on_step()
        return x.clamp(-1, 1)

    @torch.no_grad()
    def ddim_sample(self, unet: torch.nn.Module, noise: torch.Tensor, count: int, on_step=None) -> torch.Tensor:
        """Deterministic (eta 0) DDIM samples from `noise` (N, C, H, W) in `count` steps from T-1 to 0 (evenly
        spaced, rounded) and on to x0, x0 clipped to [-1, 1] at every step. Returns (N, C, H, W) in [-1, 1].
        `on_step()` is called after each step."""
        if not 1 <= count <= self.num_steps:
            raise ProbeError(f"DDIM with {count} steps: give 1..{self.num_steps} (the model's diffusion steps)")
        schedule = [int(t) for t in np.linspace(self.num_steps - 1, 0, count).round()] + [None]
        return self.ddim_walk(unet, noise, schedule, clip=True, on_step=on_step).clamp(-1, 1)


def per_image_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: str | torch.device) -> torch.Tensor:
    """(len(generators), *shape) standard normal noise, image i drawn (on the CPU) from generators[i]: an image's
    noise does not depend on which others share its batch."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def inversion_schedule(t: int, count: int | None = None) -> list[int]:
    """The steps 0 = p_0 < p_1 < ... < p_k = t a DDIM inversion from x0 to step t visits: k = min(count, t) even
    jumps (p_i = i t / k rounded half up; None: every step). t = 0 gives [0] (x0 itself, no jump)."""
    if count is not None and count < 1:
        raise ProbeError(f"DDIM inversion needs at least 1 step, not {count}")
    if t < 0:
        raise ProbeError(f"DDIM inversion to step {t}: steps are >= 0")
    k = t if count is None else min(count, t)
    if k == 0:
        return [0]
    return [(2 * i * t + k) // (2 * k) for i in range(k + 1)]
