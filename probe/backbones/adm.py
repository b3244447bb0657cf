"""guided-diffusion's ADM UNet as a backbone: decoder blocks (output_blocks) at diffusion steps t.

`ddpm` loads a checkpoint (the shipped default DDPM without one); `random` is the same architecture with
weights drawn from a generator seeded by --seed, the control that says what the training bought.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, loaded, mean_captures, select_layers, select_steps
from probe.diffusion import Diffusion, inversion_schedule
from probe.errors import ProbeError
from probe.models import LoadedModel, UNet, load_model
from probe.models.flags import parse_flags, resolve_flags
from probe.spec import FEATURE_STEPS, GRID_STEPS, KMEANS_BLOCKS, KMEANS_STEPS, PAPER_BLOCKS, PAPER_STEPS

DEFAULT_WEIGHTS = "default_ddpm.pt"
DEFAULT_FLAGS = "default_ddpm.json"
INVERSION_CACHE_BYTES = 512 * 2**20  # inverted x_t kept per backbone so the chain to t continues from an earlier t
NOISE_FORMS = ("shared, per-image, mean-of-K (e.g. mean-of-4), ddim-inversion (DDIM inversion through every step "
               "0, 1, ..., t) or ddim-inversion-K (K >= 1 even DDIM steps from 0 to t, e.g. ddim-inversion-10)")


def default_model_files() -> tuple[Path, Path]:
    """The shipped default DDPM: (EMA state dict, flags JSON)."""
    folder = resources.files("probe") / "weights"
    weights, flags = Path(str(folder / DEFAULT_WEIGHTS)), Path(str(folder / DEFAULT_FLAGS))
    if not weights.is_file():
        raise ProbeError(f"the default model {weights} is missing from the package: reinstall probe, or pass --checkpoint")
    return weights, flags


def scaled_blocks(blocks: tuple[int, ...], decoder_blocks: int) -> list[int]:
    """Blocks of the paper's 18-block decoder at the same relative depth in another: round(b * (n - 1) / 17)."""
    return sorted({round(b * (decoder_blocks - 1) / 17) for b in blocks})


def scaled_steps(steps: tuple[int, ...], diffusion_steps: int) -> list[int]:
    """Steps of T = 1000 scaled to another T (kept below T)."""
    return sorted({min(diffusion_steps - 1, round(t * diffusion_steps / 1000)) for t in steps})


def default_cells(purpose: str, decoder_blocks: int, diffusion_steps: int) -> tuple[list[int], list[int]]:
    """A diffusion backbone's default (decoder blocks, steps) for `purpose`, scaled to its depth and T."""
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


def random_unet(flags, seed: int, device: str) -> LoadedModel:
    """The UNet of `flags` with weights drawn from a generator seeded by `seed`, by torch's default rule for
    convolutions and linear layers (kaiming-uniform with a = sqrt(5), biases uniform in +-1/sqrt(fan_in)); norm
    layers keep weight 1 and bias 0. The global RNG is neither read nor advanced."""
    resolved = resolve_flags(parse_flags(flags), None, "the flags")
    with torch.random.fork_rng(devices=[]):
        unet = UNet(resolved)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in unet.modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
                continue
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            if isinstance(bias, torch.Tensor):
                bound = 1 / math.sqrt(weight[0].numel())
                bias.uniform_(-bound, bound, generator=generator)
    model = load_model(None, resolved.to_dict(), device, state=unet.state_dict())
    model.checkpoint_hash = f"random-init-seed{seed}"
    return model


class ADMBackbone(Backbone):
    """Activations of chosen decoder blocks of a guided-diffusion UNet at chosen steps: cells `t{t}_block{b}`.
    One forward per (image batch, step) serves every chosen block; hooks live only for that forward."""

    kind = "ddpm"
    layer_title = "decoder block"
    normalisation = "x / 255 * 2 - 1 (guided-diffusion)"

    def __init__(self, model: LoadedModel, blocks: list[int], steps: list[int], noise: NoisePolicy,
                 input_activations: bool = False, kind: str = "ddpm", checkpoint: Path | None = None):
        self.model, self.kind = model, kind
        self.diffusion = Diffusion(model.flags)
        for t in steps:
            self.diffusion.check_step(t)
        self.blocks, self.noise, self.input_activations = list(blocks), noise, input_activations
        self.checkpoint = checkpoint
        self.all_layers = [f"block{b}" for b in range(model.flags.decoder_blocks)]
        self.cells = [Cell(f"block{b}", t) for t in steps for b in self.blocks]
        self.image_size = model.flags.image_size
        self._chains: OrderedDict[str, tuple[tuple[int, ...], torch.Tensor]] = OrderedDict()  # see inverted

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> ADMBackbone:
        if spec.image_size is not None:
            raise ProbeError(f"--image-size: the {spec.kind} backbone takes the model's image_size; drop --image-size")
        noise = NoisePolicy.parse(spec.noise or "shared", spec.seed)
        if spec.kind == "random":
            flags = spec.model_flags if spec.model_flags is not None else default_model_files()[1]
            model = random_unet(flags, spec.seed, spec.device)
            checkpoint = None
        else:
            checkpoint, flags = (spec.checkpoint, spec.model_flags) if spec.checkpoint else default_model_files()
            model = loaded(checkpoint, [flags, spec.device], lambda: load_model(checkpoint, flags, spec.device))
        n, steps_total = model.flags.decoder_blocks, Diffusion(model.flags).num_steps
        defaults = default_cells(purpose, n, steps_total)
        available = [f"block{b}" for b in range(n)]
        layers = select_layers(spec.layers, available, [f"block{b}" for b in defaults[0]])
        steps = select_steps(spec.steps, steps_total, defaults[1])
        return cls(model, [available.index(layer) for layer in layers], steps, noise, spec.input_activations,
                   spec.kind, checkpoint)

    def release(self) -> None:
        self.model = replace(self.model, unet=None)  # the flags and checkpoint hash stay: they are the identity
        self._chains.clear()
        super().release()

    @property
    def identity(self) -> dict:
        identity = {"backbone": self.kind, "version": self.version, "checkpoint": self.model.checkpoint_hash,
                    "flags": self.model.flags.to_dict(), "noise": str(self.noise), "seed": self.noise.seed,
                    "input_activations": self.input_activations}
        return identity

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        dev = self.model.device
        x0 = images.to(dev, torch.float32)
        tt = torch.full((len(images),), step, dtype=torch.long, device=dev)
        if self.noise.kind == "ddim-inversion":
            inputs = [self.inverted(x0, step)]
        else:
            inputs = [self.diffusion.q_sample(x0, tt, n.to(dev))
                      for n in self.noise.noises(stems, tuple(images.shape[1:]))]
        modules = {b: self.model.unet.output_blocks[b] for b in self.blocks}
        means = mean_captures(modules, lambda x_t: self.model.unet(x_t, self.diffusion.model_timesteps(tt),
                                                                   last_block=max(self.blocks)),
                              inputs, self.input_activations)
        return {Cell(f"block{b}", step).name: means[b].cpu() for b in self.blocks}

    def inverted(self, x0: torch.Tensor, step: int) -> torch.Tensor:
        """x_step by DDIM inversion of the batch x0 (on the model's device) along inversion_schedule(step, K).
        The chain continues from this batch's (same pixels) last inversion when its schedule is a prefix of this
        one: with every step (K = None) the store's steps 50, 150, 250 cost 250 UNet passes, not 450, and give
        the same numbers as starting from x0 (the same operations on the same inputs). One state per batch is
        kept, the least recently used batches dropped beyond INVERSION_CACHE_BYTES (then chains restart)."""
        schedule = tuple(inversion_schedule(step, self.noise.inversion_steps))
        pixels = x0.detach().cpu().contiguous()
        key = hashlib.sha256(repr((tuple(pixels.shape), str(pixels.dtype))).encode() + pixels.numpy().tobytes()).hexdigest()
        start, x = 0, x0
        if key in self._chains:
            done, state = self._chains[key]
            if len(done) <= len(schedule) and schedule[:len(done)] == done:
                start, x = len(done) - 1, state.to(x0.device)
        x = self.diffusion.ddim_walk(self.model.unet, x, list(schedule[start:]))
        if len(schedule) > 1:
            self._chains[key] = (schedule, x.detach().to("cpu", copy=True))
            self._chains.move_to_end(key)
            while len(self._chains) > 1 and sum(s.numel() * s.element_size()
                                                for _, s in self._chains.values()) > INVERSION_CACHE_BYTES:
                self._chains.popitem(last=False)
        return x
