"""diffusers UNets as backbones: `diffusers`, a pixel-space UNet2DModel folder (google/ddpm-ema-*), and the shared
machinery of `sd` (stable_diffusion.py). diffusers' own model classes run the network.

Cells `t{t}_block{b}`: the layers of the UNet's `up_blocks`, numbered in order from the deepest (block 0). Layer
`up{i}.{j}` of `up_blocks[i]` is its j-th resnet, then its attention when the block has one, then its upsampler
when j is the block's last layer: the same unit as guided-diffusion's output_blocks, so the google/ddpm-ema 256x256
models have 6 up blocks x 3 layers = 18 blocks as the paper's ADM and `--blocks 5,6,7,8,12` is the same depth.
`--blocks` also takes the `up{i}.{j}` names. x_t = the scheduler's `add_noise(x0, noise, t)`, noise drawn by the
toolkit's NoisePolicy (shared seeded noise by default, as for ADM).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.backbones.adm import NoisePolicy, default_cells
from probe.backbones.base import Backbone, Cell, loaded, mean_captures, refuse_options, select_layers, select_steps
from probe.errors import ProbeError
from probe.models.checkpoint import file_hash

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[diffusers]"'
# up-block classes whose forward is "for each layer: resnet, then attention; then the upsampler"
LAYERED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "CrossAttnUpBlock2D",
                     "SimpleCrossAttnUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")
LATENT_CACHE_BYTES = 256 * 2**20  # encoded images kept per backbone (sd: the VAE runs once per image, not per step)


def require_diffusers(kind: str):
    """diffusers and transformers (the optional extra), quiet; one line naming the install otherwise."""
    try:
        import diffusers
        import transformers
    except ImportError:
        raise ProbeError(f"--backbone {kind} needs diffusers and transformers: {INSTALL}") from None
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    return diffusers


def read_config(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise ProbeError(f"{path} not found: {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProbeError(f"{path} is not a JSON config ({error}): {fix}") from None


def weight_files(folder: Path, stem: str, fix: str) -> list[Path]:
    """The safetensors files from_pretrained reads in `folder`: `{stem}.safetensors`, or a sharded index and its
    shards."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(read_config(index, fix).get("weight_map", {}).values()))
        missing = [folder / s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ProbeError(f"{missing[0]} not found (listed in {index}): {fix}")
        return [index, *(folder / s for s in shards)]
    raise ProbeError(f"{single} not found: {fix}")


def files_digest(files: list[Path]) -> str:
    """One hash of the files' contents, in order (each file hashed once per process): moving or renaming the
    folder keeps it, changing any weight or config changes it."""
    digests = [loaded(path, "sha256", lambda p=path: file_hash(p)) for path in files]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def file_stats(files: list[Path]) -> list:
    """What identifies the files for the per-process model cache (path, size, modification time)."""
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def load_pretrained(model_class, folder: Path, device: str):
    """diffusers' / transformers' `from_pretrained` on a local folder (safetensors only, no download), in eval
    mode on `device`; a failure is one line naming the folder."""
    try:
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except Exception as error:  # noqa: BLE001 - the libraries raise many kinds; the user gets one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProbeError(f"{folder}: {model_class.__name__} could not load it ({first}); check that the folder is "
                         "complete and matches its config.json") from None
    return model.to(device).eval()


def square_size(config: dict, path: Path) -> int:
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        size = size[0]
    if not isinstance(size, int):
        raise ProbeError(f"{path}: sample_size {size!r} is not one square size; probe takes square images")
    return size


def forward_noise(spec) -> NoisePolicy:
    """The noise policy of a backbone that adds noise with its scheduler: shared, per-image or mean-of-K (DDIM
    inversion needs the ADM's own sampler)."""
    noise = NoisePolicy.parse(spec.noise or "shared", spec.seed)
    if noise.kind == "ddim-inversion":
        raise ProbeError(f"--noise {noise}: the {spec.kind} backbone takes shared, per-image or mean-of-K noise "
                         "(DDIM inversion is only for --backbone ddpm)")
    return noise


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


class Enough(Exception):
    """Raised by a hook once the last chosen layer has run: the rest of the UNet is skipped."""


def run_until(module: torch.nn.Module, before: bool, forward) -> None:
    """`forward()`, stopped once `module` is reached (`before`: when its input is ready) or has run."""
    def stop(*_):
        raise Enough

    handle = module.register_forward_pre_hook(stop) if before else module.register_forward_hook(stop)
    try:
        forward()
    except Enough:
        pass
    finally:
        handle.remove()


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


class LatentCache:
    """Encoded images by their pixels, least recently used dropped beyond `limit` bytes."""

    def __init__(self, limit: int = LATENT_CACHE_BYTES):
        self.limit, self.entries = limit, OrderedDict()

    def get(self, images: torch.Tensor, encode) -> torch.Tensor:
        pixels = images.detach().cpu().contiguous()
        key = hashlib.sha256(repr(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()).hexdigest()
        if key not in self.entries:
            self.entries[key] = encode(images).detach().cpu()
            while len(self.entries) > 1 and self.size() > self.limit:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key].to(images.device)

    def size(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.entries.values())


def unet_folder(checkpoint: Path | None) -> tuple[Path, dict, Path]:
    """(the UNet2DModel folder, its config, its scheduler_config.json) from --checkpoint: the unet folder itself
    (config.json beside diffusion_pytorch_model.safetensors, the scheduler config beside it or in ../scheduler/) or
    a pipeline folder holding unet/ and scheduler/."""
    what = "a diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json)"
    if checkpoint is None:
        raise ProbeError(f"--backbone diffusers needs --checkpoint: a hub name (e.g. google/ddpm-ema-bedroom-256) or "
                         f"{what}")
    folder = Path(checkpoint)
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone diffusers takes the model's folder, {what}")
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    config_path = folder / "config.json"
    config = read_config(config_path, f"pass --checkpoint {what}, or a pipeline folder holding unet/")
    kind = config.get("_class_name")
    if kind == "UNet2DConditionModel":
        parent = folder.parent if folder.name == "unet" else folder
        raise ProbeError(f"{config_path} is a UNet2DConditionModel (text-conditioned, latent space): use --backbone "
                         f"sd --checkpoint {parent} (the pipeline folder with unet/, vae/, text_encoder/)")
    if kind != "UNet2DModel":
        raise ProbeError(f"{config_path} describes a {kind or 'model without _class_name'}, not a UNet2DModel: "
                         f"pass --checkpoint {what}")
    for scheduler in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if scheduler.is_file():
            return folder, config, scheduler
    raise ProbeError(f"{folder / 'scheduler_config.json'} not found (nor ../scheduler/scheduler_config.json): put "
                     "the pipeline's scheduler config beside config.json, or pass the pipeline folder")


def load_scheduler(config_path: Path):
    """DDPMScheduler from the folder's scheduler config: the forward process q(x_t | x0) and its `add_noise`,
    which the DDPM, DDIM and PNDM schedulers of these pipelines share (same betas, same formula)."""
    from diffusers import DDPMScheduler

    read_config(config_path, "pass the folder as diffusers saved it")
    try:
        return DDPMScheduler.from_pretrained(config_path.parent, local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise ProbeError(f"{config_path}: not a scheduler config DDPMScheduler can read ({error})") from None


class DiffusersUNetBackbone(DiffusersBackbone):
    """`--backbone diffusers`: a pixel-space UNet2DModel; x0 is the image in [-1, 1] at the config's sample_size."""

    kind = "diffusers"

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> DiffusersUNetBackbone:
        noise = cls.check_options(spec)
        folder, config, scheduler_path = unet_folder(spec.checkpoint)
        config_path = folder / "config.json"
        image_size = square_size(config, config_path)
        weights = weight_files(folder, "diffusion_pytorch_model", "put the model's safetensors weights into the "
                               "folder, or pass its hub name as --checkpoint")
        require_diffusers(spec.kind)
        from diffusers import UNet2DModel

        files = [config_path, *weights, scheduler_path]
        unet, scheduler = loaded(weights[0], ["diffusers", file_stats(files), spec.device],
                                 lambda: (load_pretrained(UNet2DModel, folder, spec.device),
                                          load_scheduler(scheduler_path)))
        backbone = cls(kind=spec.kind, unet=unet, scheduler=scheduler, layers=decoder_layers(unet, config_path),
                       image_size=image_size, digest=files_digest(files), noise=noise,
                       input_activations=spec.input_activations, device=spec.device)
        backbone.choose_cells(spec, purpose)
        return backbone
