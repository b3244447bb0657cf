"""`--backbone sd`: Stable Diffusion (1.x / 2.x) from a pipeline folder as diffusers saves it (unet/, vae/,
text_encoder/, tokenizer/, scheduler/). The image goes through the VAE encoder (the mean of its latent
distribution times the scaling factor), noise is added in latent space at step t, and the UNet2DConditionModel
runs conditioned on `--prompt` (default empty), encoded once with the pipeline's CLIP tokenizer and text encoder
as the pipeline does. Cells: the conditional UNet's up_blocks layers (diffusers_unet.py), at latent resolution
(1/8 of the image side for SD; the sampler upsamples them like any other feature map)."""

from __future__ import annotations

from pathlib import Path

import torch

from probe.backbones.base import loaded
from probe.backbones.diffusers_unet import (DiffusersBackbone, LatentCache, decoder_layers, file_stats, files_digest,
                                            load_pretrained, load_scheduler, read_config, require_diffusers,
                                            square_size, weight_files)
from probe.errors import ProbeError

LAYOUT = ("a Stable Diffusion pipeline folder as diffusers saves it (unet/, vae/, text_encoder/, tokenizer/, "
          "scheduler/), or the pipeline's hub name (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)")


def pipeline_files(folder: Path) -> dict[str, list[Path]]:
    """Every file the sd backbone reads, by part, checked in order (the first missing one is named)."""
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone sd takes {LAYOUT}")
    unet_config = folder / "unet" / "config.json"
    kind = read_config(unet_config, f"--backbone sd takes {LAYOUT}").get("_class_name")
    if kind != "UNet2DConditionModel":
        raise ProbeError(f"{unet_config} describes a {kind}, not Stable Diffusion's UNet2DConditionModel: "
                         f"{'use --backbone diffusers for a UNet2DModel, or ' if kind == 'UNet2DModel' else ''}"
                         f"pass {LAYOUT}")
    fix = f"--backbone sd needs {LAYOUT}"
    parts = {"unet": [unet_config, *weight_files(folder / "unet", "diffusion_pytorch_model", fix)]}
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


def encode_prompt(folder: Path, prompt: str, device: str) -> torch.Tensor:
    """(1, tokens, width): the text encoder's last hidden state for the prompt padded to the tokenizer's
    model_max_length, as StableDiffusionPipeline.encode_prompt computes it (no attention mask, no clip skip)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise ProbeError(f"{folder / 'tokenizer'}: CLIPTokenizer could not load it ({error})") from None
    encoder = load_pretrained(CLIPTextModel, folder / "text_encoder", device)
    tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids.to(device))[0].detach()


class StableDiffusionBackbone(DiffusersBackbone):
    """Decoder layers of Stable Diffusion's conditional UNet on VAE latents noised at t."""

    kind = "sd"

    def __init__(self, *, vae, text: torch.Tensor, prompt: str, **common):
        super().__init__(**common)
        self.vae, self.text, self.prompt = vae, text, prompt
        self.latents = LatentCache()

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> StableDiffusionBackbone:
        noise = cls.check_options(spec)
        if spec.checkpoint is None:
            raise ProbeError(f"--backbone sd needs --checkpoint DIR: {LAYOUT}")
        folder, prompt = Path(spec.checkpoint), spec.prompt or ""
        parts = pipeline_files(folder)
        require_diffusers(spec.kind)
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet, vae, scheduler = loaded(
            parts["unet"][1], ["sd", file_stats([f for files in parts.values() for f in files]), spec.device],
            lambda: (load_pretrained(UNet2DConditionModel, folder / "unet", spec.device),
                     load_pretrained(AutoencoderKL, folder / "vae", spec.device),
                     load_scheduler(parts["scheduler"][0])))
        text = loaded(parts["text"][1], ["prompt", prompt, file_stats(parts["text"]), spec.device],
                      lambda: encode_prompt(folder, prompt, spec.device))
        if vae.config.latent_channels != unet.config.in_channels:
            raise ProbeError(f"{folder}: the VAE gives {vae.config.latent_channels} latent channels, the UNet takes "
                             f"{unet.config.in_channels}; the folder mixes two pipelines")
        scale = 2 ** (len(vae.config.block_out_channels) - 1)  # the pipeline's vae_scale_factor
        backbone = cls(kind=spec.kind, unet=unet, scheduler=scheduler, vae=vae, text=text, prompt=prompt,
                       layers=decoder_layers(unet, parts["unet"][0]),
                       image_size=square_size(dict(unet.config), parts["unet"][0]) * scale,
                       digest=files_digest([f for files in parts.values() for f in files]), noise=noise,
                       input_activations=spec.input_activations, device=spec.device)
        backbone.choose_cells(spec, purpose)
        return backbone

    @property
    def identity(self) -> dict:
        return {**super().identity, "prompt": self.prompt}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's mean times the scaling factor (each batch of pixels encoded once, then reused)."""
        return self.latents.get(images, lambda x: self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor)

    def run_unet(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.unet(x_t, timesteps, encoder_hidden_states=self.text.expand(len(x_t), -1, -1))
