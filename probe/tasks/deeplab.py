"""`probe deeplab` (the paper's DatasetDDPM): a DeepLabV3 trained on a labelled dataset folder, e.g. one that
`probe synthesize` wrote, with the authors' recipe (random init, Adam lr 1e-3, batch 8, 20 epochs, cross-entropy);
the epoch whose mIoU on a real validation split is best (the authors: the real training images) is kept and scored
on the real test split with the authors' mIoU. `probe predict` segments new images with the saved model.

The run folder (`--out`) is written as training goes: checkpoint.pt after every epoch (a killed run continues
with --resume from the last finished epoch), best.pt, history.csv and history.png; at the end model/ (weights.pt
and manifest.json: what `probe predict --ensemble` loads), metrics.json and per_class.csv. Training images are read
a batch at a time, so memory does not grow with their number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from probe import plots
from probe.backbones.base import imagenet_input
from probe.data.layout import LabeledImage, find_split_dir, list_images, load_labeled_image, native_size
from probe.data.sources import Source, to_uint8_image
from probe.errors import ProbeError
from probe.metrics import SegmentationScore
from probe.models.checkpoint import resolve_device
from probe.models.deeplabv3 import DeepLabConfig, DeepLabV3
from probe.tasks.segment import split_number
from probe.utils.outputs import atomic_write, check_out, output_dir, working_dir, write_json
from probe.utils.progress import progress_bar
from probe.utils.runtime import runtime_info

MODEL_KIND = "deeplabv3"  # the manifest's "model" entry, which `probe predict` dispatches on
CHECKPOINT, BEST, HISTORY, RUN = "checkpoint.pt", "best.pt", "history.csv", "run.json"


@dataclass
class DeepLabOptions:
    arch: str = "resnet101"
    width: int = 64  # ResNet stem / first-stage width (torchvision: 64); small values for tests
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    val_number: int | None = None  # real training images that pick the epoch (None: the paper's split, else all)
    test_number: int | None = None  # real test images, the first N by name (None: up to segment's split_number)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ProbeError(f"--epochs {self.epochs}, --batch-size {self.batch_size}, lr {self.lr}: give 1 or more "
                             "epochs, batches of 2 or more images (batch norm) and a positive learning rate")
        DeepLabConfig(2, self.arch, self.width)


class TrainFolder:
    """The train split of a dataset folder, read a batch at a time as `load_labeled_split` reads it."""

    def __init__(self, root: Path, source: Source):
        self.paths = list_images(find_split_dir(root, "train"))
        self.source = source
        self.resolution = native_size(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images in [-1, 1] and (B, H, W) int64 labels."""
        batch = [load_labeled_image(self.paths[i], self.resolution, self.source.num_classes, self.source.ignore_label)
                 for i in indices]
        return (torch.from_numpy(np.stack([im.image for im in batch])),
                torch.from_numpy(np.stack([im.labels for im in batch])))


def new_model(num_classes: int, options: DeepLabOptions) -> DeepLabV3:
    return DeepLabV3(DeepLabConfig(num_classes, options.arch, options.width), torch.Generator().manual_seed(options.seed))


@torch.no_grad()
def predict(model: DeepLabV3, images: list[LabeledImage], device: torch.device, batch_size: int = 8) -> list[np.ndarray]:
    """(H, W) int64 label maps: the argmax of the logits, in eval mode."""
    model.eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.stack([im.image for im in images[start:start + batch_size]])).to(device)
        predictions += list(model(imagenet_input(batch)).argmax(1).cpu().numpy().astype(np.int64))
    return predictions


def score(model: DeepLabV3, images: list[LabeledImage], source: Source, device: torch.device
          ) -> tuple[SegmentationScore, list[np.ndarray]]:
    scorer = SegmentationScore(source.num_classes, source.ignore_label)
    predictions = predict(model, images, device)
    for image, pred in zip(images, predictions):
        scorer.update(pred, image.labels)
    return scorer, predictions


def train_epoch(model: DeepLabV3, optimizer: torch.optim.Optimizer, folder: TrainFolder, source: Source,
                options: DeepLabOptions, epoch: int, device: torch.device, bar, task) -> float:
    """One epoch over a fresh shuffle (seeded by (seed, epoch)), full batches only; the mean batch loss. Dropout
    draws from torch's generator forked and seeded the same way, so a resumed epoch repeats an uninterrupted one."""
    sequence = np.random.SeedSequence([options.seed, epoch])
    order = np.random.default_rng(sequence).permutation(len(folder))
    batches = len(folder) // options.batch_size
    bar.reset(task, total=batches, description=f"epoch {epoch + 1}/{options.epochs}")
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(sequence.generate_state(1)[0]))
        for b in range(batches):
            images, labels = folder.batch(order[b * options.batch_size:(b + 1) * options.batch_size])
            logits = model(imagenet_input(images.to(device)))
            loss = F.cross_entropy(logits, labels.to(device), ignore_index=source.ignore_label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"epoch {epoch + 1}/{options.epochs}  loss {np.mean(losses):.4f}")
    return float(np.mean(losses))


def _check_run(out: Path, options: DeepLabOptions, train_data: Path, source: Source, resume: bool) -> None:
    """A new run needs a folder without a checkpoint; --resume needs this command's run of the same settings
    (only --epochs may grow)."""
    if not (out / CHECKPOINT).is_file():
        return
    if not resume:
        raise ProbeError(f"{out / CHECKPOINT} exists: pass --resume to continue that run or choose another --out")
    previous = json.loads((out / RUN).read_text())
    current = _run_record(options, train_data, source)
    changed = [k for k in current if k != "options" and previous.get(k) != current[k]]
    changed += [f"--{k.replace('_', '-')}" for k, v in current["options"].items()
                if k != "epochs" and previous["options"].get(k) != v]
    if changed:
        raise ProbeError(f"--resume: {out} was trained with other settings ({changed[0]} differs); rerun with that "
                         "run's options or choose another --out")


def _run_record(options: DeepLabOptions, train_data: Path, source: Source) -> dict:
    return {"options": asdict(options), "train_data": str(Path(train_data).resolve()), "test_data": source.name,
            "class_names": source.class_names}


def run_deeplab(train_data: Path, source: Source, options: DeepLabOptions, out: Path, *, resume: bool = False,
                progress: bool = True) -> dict:
    """Train (or continue training) in the run folder `out`, keep the best epoch on the validation split, score it
    on the test split; returns metrics.json's content."""
    options.check()
    train_data, out = Path(train_data), Path(out).expanduser()
    check_out(out, inputs=[train_data, *source.inputs], command="deeplab")
    source.check_training_data(train_data)
    folder = TrainFolder(train_data, source)
    if len(folder) < options.batch_size:
        raise ProbeError(f"{len(folder)} training images in {train_data} < --batch-size {options.batch_size}: "
                         "give a smaller --batch-size or more images")
    # DeepLabV3 predicts at its input size: the label maps at that size, whatever the source keeps for the ensemble
    # the real sets of `probe segment` on a paper dataset: its training split picks the epoch, its test split scores
    paper_train = source.info.split_number("train") if source.info is not None else None
    val = source.split("train", folder.resolution, options.val_number, paper_train, keep_size=False,
                       option="--val-number")
    test = source.split("test", folder.resolution, options.test_number, split_number(source, "test"),
                        keep_size=False, option="--test-number")
    device = resolve_device(options.device)
    if out.is_dir():
        _check_run(out, options, train_data, source, resume)
    working_dir(out, command="deeplab", inputs=[train_data, *source.inputs])
    write_json(out / RUN, _run_record(options, train_data, source))
    model = new_model(source.num_classes, options).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    history: list[dict] = []
    if (out / CHECKPOINT).is_file():
        saved = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = pd.read_csv(out / HISTORY).to_dict("records")[:int(saved["epoch"])]
    with progress_bar(progress) as bar:
        task = bar.add_task("training", total=None)
        for epoch in range(len(history), options.epochs):
            started = time.perf_counter()
            loss = train_epoch(model, optimizer, folder, source, options, epoch, device, bar, task)
            trained = time.perf_counter()
            val_miou = 100 * score(model, val, source, device)[0].miou
            if not history or val_miou > max(row["val_miou"] for row in history):
                atomic_write(out / BEST, lambda p: torch.save(model.state_dict(), p))
            history.append({"epoch": epoch + 1, "loss": loss, "val_miou": val_miou, "train_seconds": trained - started,
                            "val_seconds": time.perf_counter() - trained})
            table = pd.DataFrame(history)
            atomic_write(out / HISTORY, lambda p: table.to_csv(p, index=False))
            atomic_write(out / CHECKPOINT, lambda p: torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}, p))
    table = pd.DataFrame(history)
    plots.training_history(table, out / "history.png", title=f"DeepLabV3-{options.arch} on {train_data.name}")
    best = table.loc[table["val_miou"].idxmax()]
    model.load_state_dict(torch.load(out / BEST, map_location=device, weights_only=True))
    scorer, predictions = score(model, test, source, device)
    per_class = {source.class_names[c]: 100 * v for c, v in zip(scorer.class_ids, scorer.iou)}
    manifest = {"model": MODEL_KIND, "config": asdict(model.config), "class_names": source.class_names,
                "palette": np.asarray(source.palette).tolist(), "ignore_label": source.ignore_label,
                "resolution": folder.resolution, "normalisation": "ImageNet mean/std of x / 255",
                "best_epoch": int(best["epoch"]), "val_miou": float(best["val_miou"]), "trained_on": str(train_data)}
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    atomic_write(out / "model" / "weights.pt", lambda p: torch.save(state, p))
    write_json(out / "model" / "manifest.json", manifest)
    metrics = {"miou": 100 * scorer.miou, "per_class": per_class, "best_epoch": int(best["epoch"]),
               "val_miou": float(best["val_miou"]), "epochs": len(table), "train_images": len(folder),
               "val_images": len(val), "test_number": len(test), "test_images": [im.stem for im in test],
               "epoch_seconds": float(table["train_seconds"].mean()), "dataset": source.name,
               "trained_on": str(train_data), "options": asdict(options), "runtime": runtime_info(options.device)}
    write_json(out / "metrics.json", metrics)
    per_class_table = pd.DataFrame({"class": list(per_class), "iou": list(per_class.values())})
    atomic_write(out / "per_class.csv", lambda p: per_class_table.to_csv(p, index=False))
    return metrics


def is_deeplab(folder: Path) -> bool:
    """Whether `folder` holds a model saved by `probe deeplab` (its manifest says so)."""
    try:
        return json.loads((Path(folder) / "manifest.json").read_text()).get("model") == MODEL_KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_deeplab(folder: Path, device: str = "cpu") -> tuple[DeepLabV3, dict]:
    """The model `run_deeplab` saved in `folder` (eval mode) and its manifest."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    model = DeepLabV3(DeepLabConfig(**manifest["config"]), torch.Generator().manual_seed(0))
    try:
        model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    except Exception as error:  # torch raises many types for a damaged file
        raise ProbeError(f"{folder / 'weights.pt'}: missing or damaged ({str(error).splitlines()[0][:160]}); "
                         "train again with probe deeplab") from None
    return model.to(resolve_device(device)).eval(), manifest


def predict_deeplab(folder: Path, images: list[LabeledImage], out: Path, device: str, progress: bool,
                    overwrite: bool = False, inputs: list[Path] = ()) -> list[str]:
    """Segment images with a saved DeepLabV3: out/predictions/<stem>.npy (uint8) and visualizations/; returns the
    stems."""
    model, manifest = load_deeplab(folder, device)
    size = manifest["resolution"]
    wrong = [im.stem for im in images if im.image.shape[-1] != size]
    if wrong:
        raise ProbeError(f"image {wrong[0]} is not {size}x{size} after loading: check --images")
    palette = np.asarray(manifest["palette"], dtype=np.uint8)
    with output_dir(out, command="predict", overwrite=overwrite, inputs=[folder, *inputs]) as tmp:
        (tmp / "predictions").mkdir()
        (tmp / "visualizations").mkdir()
        with progress_bar(progress) as bar:
            task = bar.add_task("segmenting", total=len(images))
            for image in images:
                pred = predict(model, [image], next(model.parameters()).device)[0]
                np.save(tmp / "predictions" / f"{image.stem}.npy", pred.astype(np.uint8))
                plots.segmentation_panel(to_uint8_image(image), None, pred, manifest["class_names"], palette,
                                         tmp / "visualizations" / f"{image.stem}.png", manifest["ignore_label"],
                                         title=f"{image.stem}  (DeepLabV3)")
                bar.advance(task)
    return [image.stem for image in images]
