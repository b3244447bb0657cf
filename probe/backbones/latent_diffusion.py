"""The plumbing the latent diffusion pipelines share (`sd` with SDXL, `dit`, `pixart`, `sd3`, `flux`): the files of a
pipeline folder as diffusers saves it (model_index.json, one sub-folder per component), loading a component in a
dtype (from_pretrained: the network is built on the meta device and filled from safetensors, no second copy),
tokenizers, the VAE encoding (the pipelines' shift and scaling, each image encoded once: LatentCache) and the prompt
encoders as the diffusers pipelines call them. Text encoders live only inside the functions that encode the prompt:
they are freed once it is encoded.

`--offload` (accelerate's hooks, as diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload): the
networks load onto the CPU and run on `--device`. `model`: a whole network moves to the device when it runs, and the
denoiser and the VAE take turns there (each moves the other out); `sequential`: the weights stay on the CPU and each
layer's are moved to the device for its forward only (a denoiser larger than the GPU; slow). Neither changes a number.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch

from probe.backbones.folders import read_config, weight_files
from probe.errors import ProbeError
from probe.utils.extras import require

# the denoiser classes probe reads, and the --backbone that reads each
DENOISERS = {"UNet2DModel": "diffusers", "UNet2DConditionModel": "sd", "DiTTransformer2DModel": "dit",
             "PixArtTransformer2DModel": "pixart", "SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
SUPPORTED = ", ".join(f"{name} (--backbone {kind})" for name, kind in DENOISERS.items())
LATENT_POSITIONS = 16384  # of the denoiser's input per extraction forward (latent_batch_size)
LATENT_CACHE_BYTES = 256 * 2**20  # encoded images kept per backbone (the VAE runs once per image, not per step)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def pipeline_index(folder: Path) -> dict:
    """model_index.json of a pipeline folder ({} when the folder has none)."""
    path = folder / "model_index.json"
    return read_config(path, "write it as diffusers saves a pipeline, or remove it") if path.is_file() else {}


def denoiser_class(folder: Path, part: str, kind: str, layout: str) -> tuple[Path, str]:
    """(config path, _class_name) of the pipeline's denoiser in `part` (unet / transformer). A class another
    --backbone reads names that backbone; an unsupported one names itself and the supported ones."""
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone {kind} takes {layout}")
    config_path = folder / part / "config.json"
    if not config_path.is_file():
        for other in ("unet", "transformer"):
            if other != part and (folder / other / "config.json").is_file():
                config_path = folder / other / "config.json"
    name = read_config(config_path, f"--backbone {kind} takes {layout}").get("_class_name")
    owner = DENOISERS.get(name)
    if owner is None:
        raise ProbeError(f"{config_path} describes a {name or 'model without _class_name'}, which probe does not "
                         f"take; supported: {SUPPORTED}")
    if owner != kind:
        raise ProbeError(f"{config_path} describes a {name}: use --backbone {owner} --checkpoint "
                         f"{config_path.parent.parent}")
    return config_path, name


def component(folder: Path, name: str, stem: str, fix: str) -> list[Path]:
    """[config.json, weights...] of the component sub-folder `name` (weights `{stem}.safetensors` or sharded)."""
    read_config(folder / name / "config.json", fix)
    return [folder / name / "config.json", *weight_files(folder / name, stem, fix)]


def tokenizer_files(folder: Path, fix: str) -> list[Path]:
    """The files a tokenizer folder holds that its tokenizer reads (one line naming the folder when it has none)."""
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not any(f.name in ("tokenizer.json", "vocab.json", "spiece.model") for f in files):
        raise ProbeError(f"{folder}: no tokenizer.json, vocab.json or spiece.model: {fix}")
    return files


def load_component(model_class, folder: Path, dtype: torch.dtype, device: str, offload: str | None = None):
    """from_pretrained (local, safetensors only, meta-device init) in `dtype`, eval mode on `device` (with
    `offload`: on the CPU, for `offloaded`); a failure is one line naming the folder."""
    library = model_class.__module__.split(".")[0]
    kwargs = {"torch_dtype": dtype} if library == "diffusers" else {"dtype": dtype}
    try:
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - the libraries raise many kinds; the user gets one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProbeError(f"{folder}: {model_class.__name__} could not load it ({first}); check that the folder is "
                         "complete and matches its config.json") from None
    return model.eval() if offload else model.to(device).eval()


def offloaded(models: list[torch.nn.Module], offload: str | None, device: str) -> list[torch.nn.Module]:
    """`models` (on the CPU) run on `device` through accelerate's offload hooks (`offload`: model or sequential,
    see the module's docstring); unchanged when `offload` is None. With `model`, the networks take turns on the
    device: each one's forward (the VAE's encode too) first moves the one before it, cyclically, back to the CPU."""
    if offload is None:
        return models
    accelerate = require("accelerate", purpose=f"--offload {offload}")
    cpu_offload, cpu_offload_with_hook = accelerate.cpu_offload, accelerate.cpu_offload_with_hook

    if offload == "sequential":
        return [cpu_offload(model, execution_device=torch.device(device)) for model in models]
    hooks = []
    for model in models:
        hooks.append(cpu_offload_with_hook(model, torch.device(device), prev_module_hook=hooks[-1] if hooks else None)[1])
    if len(hooks) > 1:
        hooks[0].hook.prev_module_hook = hooks[-1]
    return models


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # noqa: BLE001
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProbeError(f"{folder}: the tokenizer could not load ({first})") from None


def vae_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """x0 as the img2img pipelines make it: the VAE encoder's mean, then (x - latents_mean) * scaling / latents_std
    when the VAE config has those (SDXL-style), else (x - shift_factor) * scaling_factor (SD3 and FLUX have a
    shift; SD, SDXL, DiT and PixArt none). The VAE runs in float32."""
    config = vae.config
    latents = vae.encode(images.to(next(vae.parameters()).dtype)).latent_dist.mean.float()
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(config.latents_std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        return (latents - mean) * config.scaling_factor / std
    return (latents - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor


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


def latent_batch_size(latent_side: int) -> int:
    """Images per forward when extracting: about LATENT_POSITIONS latent positions (SD at 512 and DiT at 256: 4 and
    16 images; the 1024 models: 1), as the store gives the pixel-space UNets about 16k pixels per forward."""
    return max(1, LATENT_POSITIONS // latent_side ** 2)


def vae_scale(vae) -> int:
    """The pipelines' vae_scale_factor: 2 ** (levels - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tokens(tokenizer, prompt: str, max_length: int, device) -> dict:
    return tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                     return_tensors="pt").to(device)


def text_encoder(model_class, folder: Path, dtype: torch.dtype, device: str, offload: str | None):
    """A text encoder loaded for one prompt, on `device` or through `offload`."""
    return offloaded([load_component(model_class, folder, dtype, device, offload)], offload, device)[0]


def clip_embeds(folder: Path, encoder_part: str, tokenizer_part: str, encoder_class: str, prompt: str,
                dtype: torch.dtype, device: str, offload: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden_states[-2], output[0]) of a CLIP text encoder on the prompt padded to model_max_length, as
    StableDiffusionXLPipeline and StableDiffusion3Pipeline encode it (no clip skip): the penultimate layer's
    tokens, and the pooled (projected, for CLIPTextModelWithProjection) embedding."""
    import transformers

    tokenizer = load_tokenizer(folder / tokenizer_part)
    encoder = text_encoder(getattr(transformers, encoder_class), folder / encoder_part, dtype, device, offload)
    ids = tokens(tokenizer, prompt, tokenizer.model_max_length, device).input_ids
    with torch.no_grad():
        out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2].detach(), out[0].detach()


def clip_pooled(folder: Path, prompt: str, dtype: torch.dtype, device: str, offload: str | None = None) -> torch.Tensor:
    """FluxPipeline's CLIP part: CLIPTextModel's pooler_output on the prompt padded to model_max_length."""
    from transformers import CLIPTextModel

    tokenizer = load_tokenizer(folder / "tokenizer")
    encoder = text_encoder(CLIPTextModel, folder / "text_encoder", dtype, device, offload)
    ids = tokens(tokenizer, prompt, tokenizer.model_max_length, device).input_ids
    with torch.no_grad():
        return encoder(ids, output_hidden_states=False).pooler_output.detach()


def t5_embeds(folder: Path, encoder_part: str, tokenizer_part: str, prompt: str, max_length: int,
              dtype: torch.dtype, device: str, masked: bool, offload: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state, attention mask) of T5EncoderModel on the prompt padded to `max_length`: with the
    attention mask given to the encoder (`masked`: PixArt) or not (SD3, FLUX), as those pipelines call it."""
    from transformers import T5EncoderModel

    tokenizer = load_tokenizer(folder / tokenizer_part)
    encoder = text_encoder(T5EncoderModel, folder / encoder_part, dtype, device, offload)
    text = tokens(tokenizer, prompt, max_length, device)
    with torch.no_grad():
        out = encoder(text.input_ids, attention_mask=text.attention_mask if masked else None)[0]
    return out.detach(), text.attention_mask
