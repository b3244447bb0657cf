"""MAE pre-training on a folder of images (the paper's MAE baseline), with resumable checkpoints.

The recipe of facebookresearch/mae: AdamW (betas 0.9, 0.95, weight decay 0.05 except on biases and norms),
learning rate 1.5e-4 * batch / 256 unless given, mask ratio 0.75, per-patch normalised pixel targets,
ImageNet-normalised inputs with random horizontal flips. Simplified: a constant learning rate after an
optional linear warm-up (no cosine decay, so a run resumed with more steps continues seamlessly) and no
random resized crops. Every random draw (weights, batches, flips, masks) comes from one seeded generator.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from probe.errors import ProbeError
from probe.models.vit import MAEConfig, MaskedAutoencoder, imagenet_normalize, resolve_device
from probe.training.ddpm import load_image_folder, save_atomic
from probe.utils.outputs import working_dir, write_json
from probe.utils.progress import progress_bar

CHECKPOINT = "checkpoint.pt"  # full training state for resume
MAE_WEIGHTS = "mae.pt"  # {"model": MaskedAutoencoderViT-layout state dict}, what load_mae reads


@dataclass
class MAETrainConfig:
    steps: int = 20000
    batch_size: int = 64
    lr: float | None = None  # None: base_lr * batch_size / 256
    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    save_every: int = 500
    seed: int = 0
    flip: bool = True

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAE's split: no weight decay on biases and 1-D (norm) parameters; frozen position tables left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_mae(images: Path, model_config: MAEConfig, out: Path, config: MAETrainConfig, resume: bool = False,
              device: str = "cpu", progress: bool = True) -> Path:
    """Train an MAE; every `save_every` steps write checkpoint.pt and mae.pt (authors' {"model": ...} format).

    With `resume`, training continues from out/checkpoint.pt (model, optimiser, generator and step), so a
    killed run loses at most one checkpoint interval. Returns the path of mae.pt.
    """
    out = Path(out)
    state_path = out / CHECKPOINT
    if state_path.exists() and not resume:
        raise ProbeError(f"{state_path} exists: pass --resume to continue that run or choose another --out")
    if config.steps < 1 or config.batch_size < 1 or config.save_every < 1:
        raise ProbeError(f"MAE training needs steps, batch size and save interval >= 1 (got {config.steps}, "
                         f"{config.batch_size}, {config.save_every}): fix the training options")
    working_dir(out, command="mae train", inputs=[images])
    data = load_image_folder(images, model_config.img_size)
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(config.seed)
    model = MaskedAutoencoder(model_config, gen, config.mask_ratio, config.norm_pix_loss).to(dev).train()
    lr = config.learning_rate
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=lr, betas=(0.9, 0.95))
    step = 0
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location=dev, weights_only=True)
        if saved.get("mae_config") != asdict(model_config):
            raise ProbeError(f"{state_path} was trained with model config {saved.get('mae_config')}, not "
                             f"{asdict(model_config)}: resume with the same model options or choose another --out")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step = int(saved["step"])
    write_json(out / "config.json", {"mae": asdict(model_config), "train": asdict(config)})
    with open(out / "loss.csv", "a") as log, progress_bar(progress) as bar:
        if step == 0:
            log.write("step,loss,seconds\n")
        started = time.time()
        losses = []
        task = bar.add_task("training MAE", total=config.steps, completed=step)
        while step < config.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else lr
            idx = torch.randint(len(data), (config.batch_size,), generator=gen)
            x = data[idx]
            if config.flip:
                flip = torch.rand(config.batch_size, generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss, _, _ = model(imagenet_normalize(x.to(dev)), gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(task, completed=step, description=f"training MAE  loss {np.mean(losses[-100:]):.4f}")
            if step % config.save_every == 0 or step == config.steps:
                log.write(f"{step},{np.mean(losses):.5f},{time.time() - started:.1f}\n")
                log.flush()
                losses = []
                save_atomic({"model": model.state_dict(), "probe_config": asdict(model_config)}, out / MAE_WEIGHTS)
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                             "step": step, "mae_config": asdict(model_config)}, state_path)
    return out / MAE_WEIGHTS
