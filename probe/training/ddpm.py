"""Training a guided-diffusion-compatible DDPM (noise prediction, EMA, resumable checkpoints) and DDIM sampling."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from probe.errors import ProbeError
from probe.models import UNet, load_model
from probe.models.diffusion import Diffusion
from probe.models.flags import ModelFlags
from probe.utils.outputs import atomic_write, output_dir, working_dir
from probe.utils.progress import progress_bar

CHECKPOINT = "checkpoint.pt"  # full training state for --resume
EMA_WEIGHTS = "ema.pt"  # guided-diffusion-compatible state dict of the EMA weights


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 32
    lr: float = 2e-4
    ema_rate: float = 0.999
    save_every: int = 500
    seed: int = 0
    flip: bool = True


def load_image_folder(folder: Path, size: int) -> torch.Tensor:
    """All images of a folder as a uint8 tensor (N, 3, size, size); every image must already have that size."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ProbeError(f"no .png/.jpg images in {folder}: pass --images with a folder of training images")
    images = []
    for path in paths:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError:
            raise ProbeError(f"image {path} cannot be read: remove or replace it") from None
        if image.shape[:2] != (size, size):
            raise ProbeError(f"image {path} is {image.shape[1]}x{image.shape[0]}, the model wants {size}x{size}: resize the images or change --image_size")
        images.append(image)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def save_atomic(obj: object, path: Path) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda partial: torch.save(obj, partial))


def ddim_sample(unet: UNet, diffusion: Diffusion, n: int, seed: int, steps: int = 50, device: str = "cpu") -> torch.Tensor:
    """Deterministic DDIM (eta 0) samples in [-1, 1], shape (n, 3, H, W), from noise drawn by one generator seeded
    by `seed` (training previews, `probe ddpm sample`)."""
    size = unet.flags.image_size
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    return diffusion.ddim_sample(unet, noise, steps)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] to (N, H, W, 3) uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path: Path, columns: int = 8, scale: int = 2) -> None:
    """A contact sheet of (N, H, W, 3) uint8 images."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = image
    picture = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)
    atomic_write(path, lambda partial: picture.save(partial, format="PNG"))


def train_ddpm(images: Path, flags: ModelFlags, out: Path, config: TrainConfig, resume: bool = False,
               device: str = "cpu", progress: bool = True) -> Path:
    """Train with the noise-prediction loss; every `save_every` steps write checkpoint.pt, ema.pt and a sample grid.

    With `resume`, training continues from out/checkpoint.pt (model, EMA, optimiser, step and RNG states),
    so a killed run loses at most one checkpoint interval.
    """
    out = Path(out)
    state_path = out / CHECKPOINT
    if state_path.exists() and not resume:
        raise ProbeError(f"{state_path} exists: pass --resume to continue that run or choose another --out")
    working_dir(out, command="ddpm train", inputs=[images])
    data = load_image_folder(images, flags.image_size)
    dev = torch.device(device)
    torch.manual_seed(config.seed)  # the UNet's initialisation draws from the global generator
    unet = UNet(flags).to(dev).train()
    ema = copy.deepcopy(unet).eval()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location=dev, weights_only=True)
        unet.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step = int(saved["step"])
    (out / "flags.json").write_text(json.dumps({"flags": flags.to_dict(), "train": asdict(config)}, indent=1))
    diffusion = Diffusion(flags)
    abar = torch.from_numpy(diffusion.alphas_cumprod).float().to(dev)
    log = open(out / "loss.csv", "a")
    if step == 0:
        log.write("step,loss,seconds\n")
    started = time.time()
    losses = []
    with progress_bar(progress) as bar:
        task = bar.add_task("training DDPM", total=config.steps, completed=step)
        while step < config.steps:
            idx = torch.randint(len(data), (config.batch_size,), generator=gen)
            x0 = data[idx].float().div(127.5).sub(1)
            if config.flip:
                flip = torch.rand(config.batch_size, generator=gen) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            t = torch.randint(diffusion.num_steps, (config.batch_size,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            x0, t, noise = x0.to(dev), t.to(dev), noise.to(dev)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(x_t, diffusion.model_timesteps(t))[:, :3], noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1 - config.ema_rate)
            step += 1
            losses.append(loss.item())
            bar.update(task, completed=step, description=f"training DDPM  loss {np.mean(losses[-100:]):.4f}")
            if step % config.save_every == 0 or step == config.steps:
                log.write(f"{step},{np.mean(losses):.5f},{time.time() - started:.1f}\n")
                log.flush()
                losses = []
                save_atomic(ema.state_dict(), out / EMA_WEIGHTS)
                save_atomic({"model": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                             "generator": gen.get_state(), "step": step}, state_path)
                save_grid(to_uint8(ddim_sample(ema, diffusion, 16, seed=0, steps=25, device=device)),
                          out / f"samples_{step:06d}.png")
    log.close()
    return out / EMA_WEIGHTS


def sample_checkpoint(checkpoint: Path, flags, n: int, seed: int, steps: int, out: Path, device: str = "cpu",
                      overwrite: bool = False) -> np.ndarray:
    """DDIM samples from a checkpoint: out/samples.png (a contact sheet) and out/samples.npy; returns them as
    uint8 (N, H, W, 3)."""
    if n < 1:
        raise ProbeError(f"--n {n}: draw at least 1 sample")
    with output_dir(out, command="ddpm sample", overwrite=overwrite, inputs=[checkpoint]) as tmp:
        model = load_model(checkpoint, flags, device)
        images = to_uint8(ddim_sample(model.unet, Diffusion(model.flags), n, seed, steps, device))
        save_grid(images, tmp / "samples.png")
        np.save(tmp / "samples.npy", images)
    return images
