"""What ONE image's extraction costs per latent-diffusion family at its RELEASED configuration, with random weights
built from the published config.json (no download): SDXL's UNet, SD3.5-medium's, PixArt-Sigma-XL-2-1024-MS's and
DiT-XL-2-256's transformers, each with its pipeline's VAE; FLUX.1-dev from its config only (built on the meta device:
parameters and weight memory per dtype; its 12B parameters do not fit this bench's ~10 GB).

    OMP_NUM_THREADS=2 python bench/bench_transformer_costs.py [--families sdxl,dit,pixart,sd3,flux] [--dtype auto]

Per family: parameters and weight memory at float32 / bfloat16 of the denoiser and of the VAE; then, in a child
process that reports its own peak RSS, the backbone's own extraction (probe.backbones: the VAE encoding in float32,
x_t at the default segment cell's step, the denoiser's forward with the default segment cells hooked, stopped after
the deepest one) of one image at the model's native size, wall time split into the VAE and the denoiser. The
denoiser computes in float32 when its weights take at most 6 GB, else in bfloat16 (`--dtype` forces one). The prompt
is not encoded: random embeddings of the pipeline's shapes stand in for the text encoders' outputs (they run once
per prompt, then are freed). Weights are N(0, 0.02) from a generator seeded with 0. Prints one JSON line per family
and a Markdown table; nothing is asserted. On a GPU the same extraction is:

    probe features --backbone sd3 --checkpoint stabilityai/stable-diffusion-3.5-medium --images DIR --out OUT \\
        --device cuda --model-dtype bfloat16 [--offload model]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "act_fn": "silu",
    "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32, "norm_eps": 1e-5, "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "center_input_sample": False, "mid_block_scale_factor": 1,
}
SD35_MEDIUM = {  # stabilityai/stable-diffusion-3.5-medium transformer/config.json
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
PIXART_SIGMA = {  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/config.json
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "cross_attention_dim": 1152, "caption_channels": 4096, "sample_size": 128, "patch_size": 2,
    "interpolation_scale": 2, "use_additional_conditions": False, "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False, "norm_eps": 1e-6, "attention_bias": True, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
}
DIT_XL_2_256 = {  # facebook/DiT-XL-2-256 transformer/config.json (saved as Transformer2DModel)
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "sample_size": 32, "patch_size": 2, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
    "num_embeds_ada_norm": 1000, "attention_bias": True, "activation_fn": "gelu-approximate",
}
FLUX_DEV = {  # black-forest-labs/FLUX.1-dev transformer/config.json
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}


def vae_config(latent_channels: int, **extra) -> dict:
    """The AutoencoderKL of these pipelines (4 levels of 128, 256, 512, 512 channels): sd-vae-ft-ema (DiT), the SDXL
    VAE (SDXL, PixArt-Sigma), SD3's and FLUX's 16-channel VAE (no quant convs)."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": latent_channels, "layers_per_block": 2,
            "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "norm_num_groups": 32, **extra}


FAMILIES = {  # name: (diffusers class, config, hub name, VAE config, image side)
    "sdxl": ("UNet2DConditionModel", SDXL_UNET, "stabilityai/stable-diffusion-xl-base-1.0",
             vae_config(4, scaling_factor=0.13025, sample_size=1024), 1024),
    "sd3": ("SD3Transformer2DModel", SD35_MEDIUM, "stabilityai/stable-diffusion-3.5-medium",
            vae_config(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                       use_post_quant_conv=False, sample_size=1024), 1024),
    "pixart": ("PixArtTransformer2DModel", PIXART_SIGMA, "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
               vae_config(4, scaling_factor=0.13025, sample_size=1024), 1024),
    "dit": ("DiTTransformer2DModel", DIT_XL_2_256, "facebook/DiT-XL-2-256",
            vae_config(4, scaling_factor=0.18215, sample_size=256), 256),
    "flux": ("FluxTransformer2DModel", FLUX_DEV, "black-forest-labs/FLUX.1-dev",
             vae_config(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False, sample_size=1024), 1024),
}
KIND = {"sdxl": "sd", "sd3": "sd3", "pixart": "pixart", "dit": "dit", "flux": "flux"}
MAX_FLOAT32_WEIGHTS = 6e9  # bytes: above this the denoiser runs in bfloat16 here
RUNS = ("sdxl", "sd3", "pixart", "dit")  # FLUX.1-dev: 47.6 GB at float32, 23.8 GB at bfloat16: meta only


def empty(class_name: str, config: dict):
    """The model with its parameters on the meta device (buffers, such as the fixed positional tables, real)."""
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        return getattr(diffusers, class_name)(**config)


def sizes(model) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "float32_GB": round(params * 4 / 1e9, 2), "bfloat16_GB": round(params * 2 / 1e9, 2)}


def materialise(model, dtype: torch.dtype, generator: torch.Generator):
    """Each parameter drawn from N(0, 0.02) in float32, then cast to `dtype` (one parameter at a time)."""
    from accelerate.utils import set_module_tensor_to_device

    for name, param in list(model.named_parameters()):
        value = torch.randn(param.shape, generator=generator) * 0.02
        set_module_tensor_to_device(model, name, "cpu", value=value.to(dtype))
    return model.to(dtype).eval()


def condition(family: str, dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Random stand-ins for the encoded prompt / the class label, in the shapes the pipelines give."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    return {"dit": {"class_labels": torch.tensor([1000])},  # the null class of DiT-XL-2-256's 1000
            "pixart": {"text": randn(1, 300, 4096), "mask": torch.ones(1, 300, dtype=torch.long)},
            "sd3": {"text": randn(1, 77 + 256, 4096), "pooled": randn(1, 2048)}}[family]


def measure(family: str, dtype_name: str) -> dict:
    """One image's extraction through the family's backbone class, at the default segment cells."""
    import diffusers

    from probe.backbones import BACKBONES, BackboneSpec
    from probe.backbones.diffusers_common import decoder_layers, require_diffusers
    from probe.backbones.diffusion_transformers import DiffusionTransformerBackbone
    from probe.backbones.noise import NoisePolicy
    from probe.backbones.stable_diffusion import StableDiffusionBackbone

    require_diffusers("bench")
    class_name, config, _, vae_cfg, side = FAMILIES[family]
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    denoiser = materialise(empty(class_name, config), getattr(torch, dtype_name), generator)
    vae = materialise(empty("AutoencoderKL", vae_cfg), torch.float32, generator)
    build_seconds = time.perf_counter() - started
    noise = NoisePolicy.parse("shared", 0)
    if family == "sdxl":
        scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        backbone = StableDiffusionBackbone(
            kind="sd", unet=denoiser, scheduler=scheduler, vae=vae, prompt="",
            text=torch.randn(1, 77, 2048, generator=generator).to(denoiser.dtype),
            pooled=torch.randn(1, 1280, generator=generator).to(denoiser.dtype), dtype=dtype_name,
            layers=decoder_layers(denoiser, "unet/config.json"), image_size=side, digest="bench", noise=noise,
            input_activations=False, device="cpu")
    else:
        cls: type[DiffusionTransformerBackbone] = BACKBONES[KIND[family]]
        backbone = cls(transformer=denoiser, vae=vae, scheduler_config={"num_train_timesteps": 1000},
                       scheduler=None if cls.flow else diffusers.DDPMScheduler(), files=[], image_size=side,
                       noise=noise, dtype=dtype_name, device="cpu",
                       condition=condition(family, denoiser.dtype, generator), describe={})
    backbone.choose_cells(BackboneSpec(KIND[family]), "segment")
    encode, seconds = backbone.encode, {}

    def timed_encode(images):
        start = time.perf_counter()
        out = encode(images)
        seconds["vae"] = time.perf_counter() - start
        return out

    backbone.encode = timed_encode
    image = torch.rand(1, 3, side, side, generator=generator) * 2 - 1
    step = backbone.steps[0]
    start = time.perf_counter()
    maps = backbone(image, ["bench"], step)
    total = time.perf_counter() - start
    return {"dtype": dtype_name, "image": side, "cells": backbone.names,
            "features": {name: list(value.shape) for name, value in maps.items()},
            "build_s": round(build_seconds, 1), "vae_encode_s": round(seconds["vae"], 1),
            "denoiser_s": round(total - seconds["vae"], 1), "extraction_s": round(total, 1),
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def cells_text(names: list[str]) -> str:
    """`t250_block9..t250_block18` as `blocks 9-18 at t 250` (one step, consecutive blocks), else the names."""
    steps = {name.split("_")[0] for name in names}
    blocks = [int(name.split("block")[1]) for name in names]
    if len(steps) != 1 or blocks != list(range(blocks[0], blocks[-1] + 1)):
        return ", ".join(names) or "-"
    span = f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}"
    return f"{span} at t {steps.pop()[1:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        family, dtype = args.child.split(":")
        print(json.dumps(measure(family, dtype)))
        return
    rows = []
    for family in args.families.split(","):
        class_name, config, hub, vae_cfg, side = FAMILIES[family]
        row = {"family": family, "hub": hub, "class": class_name, **sizes(empty(class_name, config)),
               "vae": sizes(empty("AutoencoderKL", vae_cfg))}
        if family in RUNS:
            dtype = args.dtype if args.dtype != "auto" else (
                "float32" if row["float32_GB"] * 1e9 <= MAX_FLOAT32_WEIGHTS else "bfloat16")
            child = subprocess.run([sys.executable, __file__, "--child", f"{family}:{dtype}"], capture_output=True,
                                   text=True)
            if child.returncode:
                row["error"] = child.stderr.strip().splitlines()[-1]
            else:
                row.update(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| family (hub) | denoiser parameters | float32 | bfloat16 | VAE parameters | run dtype | image | "
          "default cells | VAE encode s | denoiser s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ran = [r.get(k, "-") for k in ("dtype", "image")] + [cells_text(r.get("cells", []))] + [
            r.get(k, "-") for k in ("vae_encode_s", "denoiser_s", "peak_rss_GB")]
        print(f"| {r['family']} ({r['hub']}) | {r['parameters'] / 1e9:.2f} B | {r['float32_GB']} GB | "
              f"{r['bfloat16_GB']} GB | {r['vae']['parameters'] / 1e6:.1f} M | " + " | ".join(map(str, ran)) + " |")


if __name__ == "__main__":
    main()
