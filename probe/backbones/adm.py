"""guided-diffusion's ADM UNet as a backbone: decoder blocks (output_blocks) at diffusion steps t.

`ddpm` loads a checkpoint (the shipped default DDPM without one); `random` is the same architecture with
weights drawn from a generator seeded by --seed, the control that says what the training bought.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, capture, loaded, mean_captures, select_layers, select_steps
from probe.backbones.noise import NoisePolicy, default_cells
from probe.errors import ProbeError
from probe.models import LoadedModel, UNet, load_model
from probe.models.diffusion import Diffusion, inversion_schedule
from probe.models.flags import parse_flags, resolve_flags

DEFAULT_WEIGHTS = "default_ddpm.pt"
DEFAULT_FLAGS = "default_ddpm.json"
INVERSION_CACHE_BYTES = 512 * 2**20  # inverted x_t kept per backbone so the chain to t continues from an earlier t


def default_model_files() -> tuple[Path, Path]:
    """The shipped default DDPM: (EMA state dict, flags JSON)."""
    folder = resources.files("probe") / "weights"
    weights, flags = Path(str(folder / DEFAULT_WEIGHTS)), Path(str(folder / DEFAULT_FLAGS))
    if not weights.is_file():
        raise ProbeError(f"the default model {weights} is missing from the package: reinstall probe, or pass --checkpoint")
    return weights, flags


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

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """The chosen decoder blocks' (C, h, w) from one forward of the flags' UNet on torch's meta device (shapes
        only: no weights are read, no arithmetic is done)."""
        size = self.image_size
        with torch.device("meta"):
            unet = UNet(self.model.flags)
            modules = {f"block{b}": unet.output_blocks[b] for b in self.blocks}
            with torch.no_grad(), capture(modules, self.input_activations) as captured:
                unet(torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long), last_block=max(self.blocks))
        return {layer: tuple(int(n) for n in captured[layer].shape[1:]) for layer in modules}

    def passes_per_image(self, step: int | None) -> int:
        """UNet passes one image costs at `step`: the noise draws (K for mean-of-K), or for DDIM inversion the
        inversion's steps (at most: a chain continues from an earlier step)."""
        if self.noise.kind == "ddim-inversion":
            return len(inversion_schedule(step, self.noise.inversion_steps))
        return self.noise.draws

    def reseeded(self, seed: int) -> ADMBackbone:
        """This backbone as built with another `seed`: its identity changes only in its noise seed (and a random
        UNet's in its weights' seed), so the description is copied rather than the weights drawn again."""
        other = copy.copy(self)
        other.noise = replace(self.noise, seed=seed)
        if self.kind == "random":
            other.model = replace(self.model, checkpoint_hash=f"random-init-seed{seed}")
        return other

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
