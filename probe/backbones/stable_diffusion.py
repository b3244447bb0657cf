"""`--backbone sd`: Stable Diffusion (1.x / 2.x) from a pipeline folder as diffusers saves it (unet/, vae/,
text_encoder/, tokenizer/, scheduler/). The image goes through the VAE encoder (the mean of its latent
distribution times the scaling factor), noise is added in latent space at step t, and the UNet2DConditionModel
runs conditioned on `--prompt` (default empty), encoded once with the pipeline's CLIP tokenizer and text encoder
as the pipeline does. Cells: the conditional UNet's up_blocks layers (diffusers_common.py), at latent resolution
(1/8 of the image side for SD; the sampler upsamples them like any other feature map).

SDXL (a UNet whose config has `addition_embed_type` "text_time"; base and refiner) is detected from unet/config.json:
the prompt is encoded as StableDiffusionXLPipeline does (text_encoder's and text_encoder_2's penultimate hidden
states concatenated, text_encoder_2's projected pooled embedding; the refiner has only text_encoder_2), the added
conditions are `text_embeds` = that pooled embedding and `time_ids` = (S, S, 0, 0, S, S) for the S x S image
(original size, crop top-left, target size), and the latents are (VAE mean - latents_mean) x scaling / latents_std
when the VAE config has them, else VAE mean x scaling (0.13025). Its default segment cell is DIFT's (Tang et al.,
NeurIPS 2023): the output of up_blocks[1] at t = 261. `--model-dtype` is the dtype the UNet and text encoders compute
in (the VAE stays float32, as the SDXL pipeline upcasts it). `--offload model|sequential`: accelerate's CPU offload of
the UNet, the VAE and the text encoders (probe.backbones.latent_diffusion.offloaded); same numbers, same identity.
Extraction batches images: about 16k latent positions per forward (4 images at 512, 1 at 1024)."""

from __future__ import annotations

from pathlib import Path

import torch

from probe.backbones.base import loaded
from probe.backbones.diffusers_common import (
    DiffusersBackbone,
    decoder_layers,
    load_scheduler,
    require_diffusers,
    square_size,
)
from probe.backbones.folders import DTYPES, file_stats, files_digest, read_config, weight_files
from probe.backbones.latent_diffusion import (
    LatentCache,
    clip_embeds,
    component,
    denoiser_class,
    latent_batch_size,
    load_component,
    offloaded,
    pipeline_index,
    text_encoder,
    tokenizer_files,
    vae_latents,
    vae_scale,
)
from probe.backbones.noise import scaled_steps
from probe.backbones.spec import DIFT_STEP, DIFT_UP_BLOCK
from probe.errors import ProbeError

LAYOUT = ("a Stable Diffusion pipeline folder as diffusers saves it (unet/, vae/, text_encoder/, tokenizer/, "
          "scheduler/; SDXL also text_encoder_2/, tokenizer_2/), or the pipeline's hub name (e.g. "
          "stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0)")


def pipeline_files(folder: Path) -> dict[str, list[Path]]:
    """Every file the sd backbone reads, by part, checked in order (the first missing one is named)."""
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone sd takes {LAYOUT}")
    unet_config, _ = denoiser_class(folder, "unet", "sd", LAYOUT)
    fix = f"--backbone sd needs {LAYOUT}"
    parts = {"unet": [unet_config, *weight_files(folder / "unet", "diffusion_pytorch_model", fix)]}
    if is_xl(read_config(unet_config, fix)):
        return xl_files(folder, parts, fix)
    read_config(folder / "vae" / "config.json", fix)
    parts["vae"] = [folder / "vae" / "config.json", *weight_files(folder / "vae", "diffusion_pytorch_model", fix)]
    read_config(folder / "text_encoder" / "config.json", fix)
    tokenizer = folder / "tokenizer"
    vocabulary = ([tokenizer / "tokenizer.json"] if (tokenizer / "tokenizer.json").is_file()
                  else [tokenizer / "vocab.json", tokenizer / "merges.txt"])
    for path in vocabulary:
        if not path.is_file():
            raise ProbeError(f"{path} not found: {fix}")
    extra = [tokenizer / name for name in ("tokenizer_config.json", "special_tokens_map.json")
             if (tokenizer / name).is_file()]
    parts["text"] = [folder / "text_encoder" / "config.json",
                     *weight_files(folder / "text_encoder", "model", fix), *vocabulary, *extra]
    parts["scheduler"] = [folder / "scheduler" / "scheduler_config.json"]
    read_config(parts["scheduler"][0], fix)
    return parts


def is_xl(unet_config: dict) -> bool:
    return unet_config.get("addition_embed_type") == "text_time"


def xl_files(folder: Path, parts: dict[str, list[Path]], fix: str) -> dict[str, list[Path]]:
    """An SDXL pipeline's files: unet/, vae/, text_encoder/ + tokenizer/ (absent in the refiner, whose
    model_index.json says so), text_encoder_2/ + tokenizer_2/, scheduler/."""
    parts["vae"] = component(folder, "vae", "diffusion_pytorch_model", fix)
    index = pipeline_index(folder)
    first = not (index.get("text_encoder", [None])[0] is None and "text_encoder" in index)
    parts["text"] = ([*component(folder, "text_encoder", "model", fix), *tokenizer_files(folder / "tokenizer", fix)]
                     if first else [])
    parts["text"] += [*component(folder, "text_encoder_2", "model", fix),
                      *tokenizer_files(folder / "tokenizer_2", fix)]
    parts["scheduler"] = [folder / "scheduler" / "scheduler_config.json"]
    read_config(parts["scheduler"][0], fix)
    return parts


def encode_xl_prompt(folder: Path, prompt: str, dtype: torch.dtype, device: str,
                     offload: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeds, pooled embeds) as StableDiffusionXLPipeline.encode_prompt computes them (no clip skip):
    each encoder's penultimate hidden state, concatenated; the pooled embedding of text_encoder_2. The encoders are
    freed when this returns."""
    hidden = []
    if (folder / "text_encoder" / "config.json").is_file():
        hidden.append(clip_embeds(folder, "text_encoder", "tokenizer", "CLIPTextModel", prompt, dtype, device,
                                  offload)[0])
    last, pooled = clip_embeds(folder, "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", prompt,
                               dtype, device, offload)
    return torch.cat([*hidden, last], dim=-1), pooled


def encode_prompt(folder: Path, prompt: str, device: str, offload: str | None = None) -> torch.Tensor:
    """(1, tokens, width): the text encoder's last hidden state for the prompt padded to the tokenizer's
    model_max_length, as StableDiffusionPipeline.encode_prompt computes it (no attention mask, no clip skip)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise ProbeError(f"{folder / 'tokenizer'}: CLIPTokenizer could not load it ({error})") from None
    encoder = text_encoder(CLIPTextModel, folder / "text_encoder", torch.float32, device, offload)
    tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids.to(device))[0].detach()


class StableDiffusionBackbone(DiffusersBackbone):
    """Decoder layers of Stable Diffusion's conditional UNet on VAE latents noised at t."""

    kind = "sd"

    def __init__(self, *, vae, text: torch.Tensor, prompt: str, pooled: torch.Tensor | None = None,
                 dtype: str | None = None, **common):
        super().__init__(**common)
        self.vae, self.text, self.prompt, self.pooled = vae, text, prompt, pooled
        self.xl, self.dtype = pooled is not None, dtype
        self.latents = LatentCache()
        if self.xl:  # (original size, crop top-left, target size), as the SDXL pipeline's _get_add_time_ids
            size = self.image_size
            self.time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=text.dtype, device=self.device)

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> StableDiffusionBackbone:
        noise = cls.check_options(spec)
        if spec.checkpoint is None:
            raise ProbeError(f"--backbone sd needs --checkpoint DIR: {LAYOUT}")
        folder, prompt = Path(spec.checkpoint), spec.prompt or ""
        parts = pipeline_files(folder)
        require_diffusers(spec.kind)
        from diffusers import AutoencoderKL, UNet2DConditionModel

        dtype = spec.model_dtype or "float32"
        if dtype not in DTYPES:
            raise ProbeError(f"--model-dtype {dtype!r}: use {', '.join(DTYPES)}")
        xl = "text_encoder_2" in {f.parent.name for f in parts["text"]}
        unet, vae, scheduler = loaded(
            parts["unet"][1], ["sd", file_stats([f for files in parts.values() for f in files]), dtype, spec.device,
                               spec.offload],
            lambda: (*offloaded([load_component(UNet2DConditionModel, folder / "unet", DTYPES[dtype], spec.device,
                                                spec.offload),
                                 load_component(AutoencoderKL, folder / "vae", torch.float32, spec.device,
                                                spec.offload)], spec.offload, spec.device),
                     load_scheduler(parts["scheduler"][0])))
        pooled = None
        if xl:
            text, pooled = loaded(parts["text"][1], ["xl prompt", prompt, file_stats(parts["text"]), dtype,
                                                     spec.device],
                                  lambda: encode_xl_prompt(folder, prompt, DTYPES[dtype], spec.device, spec.offload))
        else:
            text = loaded(parts["text"][1], ["prompt", prompt, file_stats(parts["text"]), dtype, spec.device],
                          lambda: encode_prompt(folder, prompt, spec.device, spec.offload).to(DTYPES[dtype]))
        if vae.config.latent_channels != unet.config.in_channels:
            raise ProbeError(f"{folder}: the VAE gives {vae.config.latent_channels} latent channels, the UNet takes "
                             f"{unet.config.in_channels}; the folder mixes two pipelines")
        scale = vae_scale(vae)
        backbone = cls(kind=spec.kind, unet=unet, scheduler=scheduler, vae=vae, text=text, prompt=prompt,
                       pooled=pooled, dtype=spec.model_dtype,
                       layers=decoder_layers(unet, parts["unet"][0]),
                       image_size=square_size(dict(unet.config), parts["unet"][0]) * scale,
                       digest=files_digest([f for files in parts.values() for f in files]), noise=noise,
                       input_activations=spec.input_activations, device=spec.device)
        backbone.choose_cells(spec, purpose)
        return backbone

    def batch_size(self, image_side: int) -> int:
        return latent_batch_size(image_side // vae_scale(self.vae))

    def default_cells(self, purpose: str, steps_total: int) -> tuple[list[int], list[int]]:
        """SDXL's segment and features default: DIFT's cell, the output of up_blocks[1] (its last layer) at t = 261
        (scaled to T); SD 1.x/2.x keep the paper's blocks scaled to their depth (earlier runs rely on them)."""
        if not self.xl or purpose not in ("segment", "features"):
            return super().default_cells(purpose, steps_total)
        names = [layer.name for layer in self.decoder]
        block = max(b for b, name in enumerate(names) if name.startswith(f"up{DIFT_UP_BLOCK}."))
        return [block], scaled_steps((DIFT_STEP,), steps_total)

    @property
    def identity(self) -> dict:
        extra = {"variant": "sdxl"} if self.xl else {}
        if self.dtype not in (None, "float32"):
            extra["dtype"] = self.dtype
        return {**super().identity, "prompt": self.prompt, **extra}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's mean times the scaling factor (SDXL: with latents_mean / latents_std when the VAE has
        them), each batch of pixels encoded once, then reused."""
        if self.xl:
            return self.latents.get(images, lambda x: vae_latents(self.vae, x))
        return self.latents.get(images, lambda x: self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor)

    def run_unet(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
        b, dtype = len(x_t), self.text.dtype
        added = {"text_embeds": self.pooled.expand(b, -1), "time_ids": self.time_ids.expand(b, -1)} if self.xl else None
        self.unet(x_t.to(dtype), timesteps, encoder_hidden_states=self.text.expand(b, -1, -1),
                  added_cond_kwargs=added)
