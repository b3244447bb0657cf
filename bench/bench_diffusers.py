"""Benchmark `--backbone diffusers` and `--backbone sd` at the real shapes, with random weights of the real
configurations (no download): the google/ddpm-ema-bedroom-256 UNet2DModel and Stable Diffusion 1.5's UNet, VAE and
CLIP ViT-L/14 text encoder (its tokenizer is a small vocabulary written here: the prompt is encoded once, so its
cost does not matter).

    OMP_NUM_THREADS=2 python bench/bench_diffusers.py [--images 2] [--segment-members 2]

Each measurement runs in a child process, which reports its own peak RSS: loading (from_pretrained of the saved
folder, hashing its files), extraction seconds per image and step (batch 1, as the activation store runs images of
128 px and more; the paper's segmenter blocks), for sd the VAE encoding on its own; then `probe segment --backbone
sd` at 512x512 (1 train, 1 test image, one step) through the installed command's entry point. Prints one JSON line
per measurement; nothing is asserted. The dense approach would hold images x D x 512 x 512 float32 features.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DDPM_EMA_256 = {  # google/ddpm-ema-bedroom-256 (and church, cat, celebahq): config.json
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "layers_per_block": 2, "act_fn": "silu",
    "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": False, "downsample_padding": 0,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, "flip_sin_to_cos": False,
    "freq_shift": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-6, "norm_num_groups": 32,
    "time_embedding_type": "positional", "attention_head_dim": None,
}
SD15_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "center_input_sample": False,
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_scale_factor": 1,
    "norm_eps": 1e-5, "norm_num_groups": 32,
}
SD15_VAE = {  # vae/config.json
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "norm_num_groups": 32,
}
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
             "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}


def write_models(root: Path) -> tuple[Path, Path]:
    """(the ddpm-ema-256 folder, the SD 1.5 pipeline folder), random weights from seed 0."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    ddpm = root / "ddpm-ema-bedroom-256"
    diffusers.UNet2DModel(**DDPM_EMA_256).save_pretrained(ddpm)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(ddpm)
    sd = root / "sd15"
    diffusers.UNet2DConditionModel(**SD15_UNET).save_pretrained(sd / "unet")
    diffusers.AutoencoderKL(**SD15_VAE).save_pretrained(sd / "vae")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD15_TEXT)).save_pretrained(sd / "text_encoder")
    diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                            steps_offset=1).save_pretrained(sd / "scheduler")
    tokenizer = sd / "tokenizer"
    tokenizer.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{c}</w>": 2 + i for i, c in enumerate("abcdefgh")}}
    (tokenizer / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return ddpm, sd


def write_dataset(folder: Path, size: int) -> Path:
    """1 train and 1 test face-parts image at `size` (the project's generator), labels beside them."""
    from probe.data.default_domain import CLASSES, image_rng, render

    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        image, labels = render(image_rng(0, split, 0), size)
        Image.fromarray(image).save(folder / split / "000.png")
        np.save(folder / split / "000.npy", labels)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_features(kind: str, folder: str, n_images: int, step: int) -> dict:
    """Load, then extract the segmenter's default cells at one step for n images, one at a time."""
    from probe.backbones import BackboneSpec, build_backbone

    start = time.perf_counter()
    backbone = build_backbone(BackboneSpec(kind, Path(folder), steps=str(step)), "segment")
    load = time.perf_counter() - start
    size = backbone.image_size
    images = torch.rand(n_images, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = {"kind": kind, "image_size": size, "cells": backbone.names, "load_s": round(load, 1)}
    if kind == "sd":
        start = time.perf_counter()
        with torch.no_grad():
            backbone.encode(images[:1])  # cached: the extraction below reuses it for image 0
        result["vae_encode_s_per_image"] = round(time.perf_counter() - start, 2)
    times = []
    for i in range(n_images):
        start = time.perf_counter()
        maps = backbone(images[i:i + 1], [f"im{i}"], step)
        times.append(time.perf_counter() - start)
    result["extract_s_per_image_step"] = [round(t, 2) for t in times]
    result["features"] = sum(m.shape[1] for m in maps.values())
    result["native_sizes"] = sorted({m.shape[-1] for m in maps.values()})
    result["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return result


def child_segment(folder: str, data: str, out: str, members: int) -> dict:
    """`probe segment --backbone sd` in this process, through the command's entry point."""
    from probe.cli import main

    start = time.perf_counter()
    argv = ["probe", "segment", "--backbone", "sd", "--checkpoint", folder, "--data", data, "--steps", "50",
            "--members", str(members), "--out", out, "--quiet"]
    sys.argv = argv
    try:
        main()
    except SystemExit as done:
        if done.code not in (0, None):
            return {"failed": done.code}
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"command": " ".join(argv[:-3] + ["--out", "OUT"]), "wall_s": round(time.perf_counter() - start, 1),
            "seconds": {k: round(v, 1) for k, v in metrics["seconds"].items()}, "features": metrics["features"]["dim"],
            "cells": metrics["features"]["names"], "ensemble_iterations": metrics["ensemble_iterations"],
            "miou": round(metrics["miou"], 2), "peak_rss_gb": round(peak_rss_gb(), 2)}


def in_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"child": args[0], "failed": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--segment-members", type=int, default=2)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        name, *rest = args.child
        result = (child_features(rest[0], rest[1], int(rest[2]), int(rest[3])) if name == "features"
                  else child_segment(rest[0], rest[1], rest[2], int(rest[3])))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-diffusers-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        ddpm, sd = write_models(root)
        print(json.dumps({"wrote random-weight folders": [str(ddpm.name), str(sd.name)],
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        print(json.dumps(in_child("features", "diffusers", str(ddpm), str(args.images), "50")), flush=True)
        print(json.dumps(in_child("features", "sd", str(sd), str(args.images), "50")), flush=True)
        data = write_dataset(root / "data512", 512)
        segment = in_child("segment", str(sd), str(data), str(root / "segment"), str(args.segment_members))
        features = segment.get("features") or 0
        segment["dense_train_features_gb"] = round(1 * features * 512 * 512 * 4 / 2**30, 2)
        print(json.dumps(segment), flush=True)


if __name__ == "__main__":
    main()
