"""Training the probed models: probe ddpm train / sample, probe mae train."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.options import (
    Device,
    ModelFlagsOpt,
    Overwrite,
    Quiet,
    Resume,
    RunOut,
    Seed,
    check_out_folder,
    start_work,
    user_errors,
)
from probe.errors import ProbeError


@user_errors(resumable=True)
def ddpm_train(
    images: Path = typer.Option(..., "--images", help="Folder of training images at the model's size."),
    model_flags: str = typer.Option(..., "--model-flags", help="guided-diffusion flags string or JSON file."),
    out: Path = RunOut(),
    steps: int = typer.Option(20000, "--steps", help="Total training steps."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr"),
    ema_rate: float = typer.Option(0.999, "--ema-rate"),
    save_every: int = typer.Option(500, "--save-every", help="Steps between checkpoints (and sample grids)."),
    seed: int = Seed, device: str = Device,
    resume: bool = Resume,
    quiet: bool = Quiet,
):
    """Train a DDPM (noise-prediction loss, EMA) whose ema.pt loads like the paper's checkpoints.

    Example: probe ddpm train --images data/faces/pool --model-flags probe/weights/default_ddpm.json --out runs/ddpm
    """
    from probe.models.flags import ModelFlags, parse_flags

    flags = ModelFlags(**parse_flags(model_flags))
    start_work()
    from probe.training.ddpm import TrainConfig, train_ddpm

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_rate=ema_rate, save_every=save_every, seed=seed)
    path = train_ddpm(images, flags, out, config, resume, device, not quiet)
    typer.echo(f"EMA weights: {path}")


@user_errors
def ddpm_sample(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Default: the shipped default DDPM."),
    model_flags: Optional[str] = ModelFlagsOpt,
    n: int = typer.Option(32, "--n", help="Number of samples."),
    sampling_steps: int = typer.Option(50, "--sampling-steps", help="DDIM steps."),
    seed: int = Seed, device: str = Device,
    out: Path = typer.Option(Path("runs/samples"), "--out", help="Output folder: samples.png and samples.npy."),
    overwrite: bool = Overwrite,
):
    """Draw DDIM samples from a checkpoint: a PNG contact sheet and the images as an array.

    Example: probe ddpm sample --n 32 --out runs/samples
    """
    check_out_folder(out, overwrite, checkpoint)
    start_work()
    from probe.backbones import default_model_files
    from probe.training.ddpm import sample_checkpoint

    if checkpoint is None:
        checkpoint, model_flags = default_model_files()
    sample_checkpoint(checkpoint, model_flags, n, seed, sampling_steps, out, device, overwrite=overwrite)
    typer.echo(f"wrote {n} samples to {out}/samples.png")


@user_errors(resumable=True)
def mae_train(
    images: Path = typer.Option(..., "--images", help="Folder of training images at --image-size."),
    out: Path = RunOut(),
    image_size: int = typer.Option(32, "--image-size"),
    patch_size: int = typer.Option(4, "--patch-size"),
    embed_dim: int = typer.Option(128, "--embed-dim"),
    depth: int = typer.Option(12, "--depth"),
    num_heads: Optional[int] = typer.Option(None, "--num-heads", help="Default: embed-dim / 64, what --backbone mae assumes."),
    decoder_embed_dim: int = typer.Option(128, "--decoder-embed-dim"),
    decoder_depth: int = typer.Option(2, "--decoder-depth"),
    steps: int = typer.Option(2000, "--steps", help="Total training steps."),
    batch_size: int = typer.Option(256, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default: 1.5e-4 x batch / 256."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up (the shipped MAE: 200)."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"),
    save_every: int = typer.Option(100, "--save-every", help="Steps between checkpoints."),
    seed: int = Seed, device: str = Device,
    resume: bool = Resume,
    quiet: bool = Quiet,
):
    """Train an MAE (masked-patch reconstruction: mask ratio 0.75, normalised-pixel loss, AdamW 0.9/0.95, weight
    decay 0.05) on a folder of images; OUT/mae.pt loads with --backbone mae --checkpoint OUT/mae.pt. The defaults
    are the shipped default MAE's (probe/weights/default_mae.json).

    Example: probe data default --out data/faces --pool 10000 && probe mae train --images data/faces/pool --out runs/mae
    """
    if not 0 < mask_ratio < 1:
        raise ProbeError(f"--mask-ratio {mask_ratio}: give a fraction between 0 and 1, e.g. 0.75")
    start_work()
    from probe.models.vit import MAEConfig, default_heads
    from probe.training.mae import MAETrainConfig, train_mae

    heads = num_heads or default_heads(embed_dim)
    model = MAEConfig(img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=heads,
                      decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                      decoder_num_heads=default_heads(decoder_embed_dim))
    config = MAETrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, mask_ratio=mask_ratio,
                            save_every=save_every, seed=seed)
    path = train_mae(images, model, out, config, resume, device, not quiet)
    typer.echo(f"MAE weights: {path}")
