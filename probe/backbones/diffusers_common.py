"""What the diffusers UNet families share (`diffusers`, a pixel-space UNet2DModel, and `sd`, Stable Diffusion's
conditional UNet on VAE latents): the optional extra, the scheduler's forward process and the UNet backbone itself.
diffusers' own model classes run the network.

Cells `t{t}_block{b}`: the layers of the UNet's `up_blocks`, numbered in order from the deepest (block 0). Layer
`up{i}.{j}` of `up_blocks[i]` is its j-th resnet, then its attention when the block has one, then its upsampler
when j is the block's last layer: the same unit as guided-diffusion's output_blocks, so the google/ddpm-ema 256x256
models have 6 up blocks x 3 layers = 18 blocks as the paper's ADM and `--blocks 5,6,7,8,12` is the same depth.
`--blocks` also takes the `up{i}.{j}` names. x_t = the scheduler's `add_noise(x0, noise, t)`, noise drawn by the
toolkit's NoisePolicy (shared seeded noise by default, as for ADM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, mean_captures, refuse_options, run_until, select_layers, select_steps
from probe.backbones.folders import read_config
from probe.backbones.noise import NoisePolicy, default_cells, forward_noise
from probe.errors import ProbeError
from probe.utils.extras import require

# up-block classes whose forward is "for each layer: resnet, then attention; then the upsampler"
LAYERED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "CrossAttnUpBlock2D",
                     "SimpleCrossAttnUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")


def require_diffusers(kind: str):
    """diffusers and transformers (the optional extra), quiet; one line naming the install otherwise."""
    diffusers = require("diffusers", "transformers", purpose=f"--backbone {kind}")
    import transformers
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    return diffusers


def load_scheduler(config_path: Path):
    """DDPMScheduler from the folder's scheduler config: the forward process q(x_t | x0) and its `add_noise`,
    which the DDPM, DDIM and PNDM schedulers of these pipelines share (same betas, same formula)."""
    from diffusers import DDPMScheduler

    read_config(config_path, "pass the folder as diffusers saved it")
    try:
        return DDPMScheduler.from_pretrained(config_path.parent, local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise ProbeError(f"{config_path}: not a scheduler config DDPMScheduler can read ({error})") from None


def square_size(config: dict, path: Path) -> int:
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        size = size[0]
    if not isinstance(size, int):
        raise ProbeError(f"{path}: sample_size {size!r} is not one square size; probe takes square images")
    return size


@dataclass(frozen=True)
class DecoderLayer:
    """Layer `name` (up{i}.{j}) of a UNet's up_blocks: its input is `first`'s input, its output `last`'s output."""

    name: str
    first: torch.nn.Module
    last: torch.nn.Module


def decoder_layers(unet: torch.nn.Module, config_path: Path) -> list[DecoderLayer]:
    """The layers of `unet.up_blocks` in order: per block, resnet j, then attention j (a block with one attention
    after its resnets, AttnSkipUpBlock2D, has it in its last layer), then the upsampler in the last layer."""
    layers = []
    for i, block in enumerate(unet.up_blocks):
        kind = type(block).__name__
        if kind not in LAYERED_UP_BLOCKS:
            raise ProbeError(f"{config_path}: up block {i} is a {kind}, which probe cannot split into layers; "
                             f"supported: {', '.join(LAYERED_UP_BLOCKS)}")
        resnets = list(block.resnets)
        attentions = list(getattr(block, "attentions", None) or [])
        upsamplers = getattr(block, "upsamplers", None)
        upsampler = upsamplers[-1] if upsamplers else getattr(block, "resnet_up", None)
        for j, resnet in enumerate(resnets):
            last, final = resnet, j == len(resnets) - 1
            if len(attentions) == len(resnets):
                last = attentions[j]
            elif attentions and final:
                last = attentions[-1]
            if final and upsampler is not None:
                last = upsampler
            layers.append(DecoderLayer(f"up{i}.{j}", resnet, last))
    return layers


class DiffusersBackbone(Backbone):
    """Decoder layers of a diffusers UNet at steps t, on x_t = scheduler.add_noise(x0, noise, t). Subclasses give
    `encode` (image -> x0; pixels here) and `run_unet` (the UNet's forward)."""

    layer_title = "decoder block (up_blocks layer)"
    normalisation = "x / 255 * 2 - 1 (diffusers pipelines)"

    def __init__(self, *, kind: str, unet, scheduler, layers: list[DecoderLayer], image_size: int, digest: str,
                 noise: NoisePolicy, input_activations: bool, device: str):
        self.kind, self.unet, self.scheduler, self.decoder = kind, unet, scheduler, layers
        self.image_size, self.digest, self.noise, self.input_activations = image_size, digest, noise, input_activations
        self.device = torch.device(device)
        self.all_layers = [f"block{b}" for b in range(len(layers))]
        self.blocks: list[int] = []
        self.cells: list[Cell] = []

    @staticmethod
    def check_options(spec) -> NoisePolicy:
        """Refuse the options a diffusers backbone does not take; its noise policy."""
        refuse_options(spec, ("--model-flags", "--image-size"),
                       "reads its model and image size from the folder's config.json")
        return forward_noise(spec)

    def choose_cells(self, spec, purpose: str) -> None:
        """Cells from --blocks (indices, ranges, block{b} or up{i}.{j} names) and --steps of T =
        num_train_timesteps, or the purpose's defaults scaled to this depth and T."""
        up_names = [layer.name for layer in self.decoder]
        text = spec.layers and ",".join(f"block{up_names.index(p.strip())}" if p.strip() in up_names else p
                                        for p in spec.layers.split(","))
        steps_total = self.scheduler.config.num_train_timesteps
        blocks, steps = self.default_cells(purpose, steps_total)
        layers = select_layers(text, self.all_layers, [f"block{b}" for b in blocks])
        self.blocks = [self.all_layers.index(layer) for layer in layers]
        self.cells = [Cell(layer, t) for t in select_steps(spec.steps, steps_total, steps) for layer in layers]

    def default_cells(self, purpose: str, steps_total: int) -> tuple[list[int], list[int]]:
        """(blocks, steps) for `purpose` when --blocks / --steps are not given: the paper's, scaled."""
        return default_cells(purpose, len(self.decoder), steps_total)

    def layer_map(self) -> dict[str, str]:
        """{block{b}: up{i}.{j}} for every layer."""
        return {f"block{b}": layer.name for b, layer in enumerate(self.decoder)}

    @property
    def identity(self) -> dict:
        return {"backbone": self.kind, "version": self.version, "checkpoint": self.digest, "noise": str(self.noise),
                "seed": self.noise.seed, "input_activations": self.input_activations}

    def passes_per_image(self, step: int | None) -> int:
        """UNet passes one image costs at a step: the noise draws (K for mean-of-K; forward_noise refuses DDIM
        inversion)."""
        return self.noise.draws

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """x0 for the UNet from [-1, 1] images on the device."""
        return images

    def run_unet(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.unet(x_t, timesteps)

    def x_t(self, x0: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        timesteps = torch.full((len(x0),), step, dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0, noise.to(x0.device, x0.dtype), timesteps)

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        x0 = self.encode(images.to(self.device, torch.float32))
        timesteps = torch.full((len(x0),), step, dtype=torch.long, device=self.device)
        inputs = [self.x_t(x0, noise, step) for noise in self.noise.noises(stems, tuple(x0.shape[1:]))]
        pick = (lambda layer: layer.first) if self.input_activations else (lambda layer: layer.last)
        modules = {b: pick(self.decoder[b]) for b in self.blocks}
        last = modules[max(self.blocks)]
        means = mean_captures(modules, lambda x: run_until(last, self.input_activations,
                                                           lambda: self.run_unet(x, timesteps)),
                              inputs, self.input_activations)
        return {Cell(f"block{b}", step).name: means[b].cpu() for b in self.blocks}
