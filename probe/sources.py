"""Where a command's images, labels and model come from: the embedded default, a paper dataset, or a folder.

Every command resolves its options through `open_source` and `make_backbone`, so the three commands see
the same data, the same model and the same features.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from probe.data import default_domain
from probe.data.layout import LabeledImage, infer_num_classes, load_labeled_split, read_class_names, resolve_dataset_root
from probe.data.registry import DatasetInfo, lookup
from probe.errors import ProbeError
from probe.extract import NoisePolicy, PixelBackbone, UNetBackbone
from probe.models import LoadedModel, load_model

log = logging.getLogger("probe")

DEFAULT_WEIGHTS = "default_ddpm.pt"
DEFAULT_FLAGS = "default_ddpm.json"
DEFAULT_IMAGE_SIZE = 32  # the shipped default DDPM's image size (default_ddpm.json)
BACKBONES = ("ddpm", "random", "pixels")


def default_model_files() -> tuple[Path, Path]:
    """The shipped default DDPM: (EMA state dict, flags JSON)."""
    folder = resources.files("probe") / "weights"
    weights, flags = Path(str(folder / DEFAULT_WEIGHTS)), Path(str(folder / DEFAULT_FLAGS))
    if not weights.is_file():
        raise ProbeError(f"the default model {weights} is missing from the package: reinstall probe, or pass --checkpoint")
    return weights, flags


@dataclass
class Source:
    """A labelled dataset and the diffusion model whose features describe it."""

    name: str
    root: Path
    class_names: list[str]
    ignore_label: int
    checkpoint: Path
    model_flags: str | Path | dict
    palette: np.ndarray
    models: dict = field(default_factory=dict, repr=False)  # loaded once per device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_model(self, device: str) -> LoadedModel:
        if device not in self.models:
            self.models[device] = load_model(self.checkpoint, self.model_flags, device)
        return self.models[device]

    @property
    def inputs(self) -> list[Path]:
        """The files and folders this source reads (an output folder must not hold them)."""
        return [self.root, self.checkpoint]

    def split(self, split: str, resolution: int, limit: int | None, at_most: int | None = None) -> list[LabeledImage]:
        """The first `limit` images of a split (an error when it holds fewer), else up to `at_most`, else all."""
        return load_labeled_split(self.root, split, resolution, self.num_classes, self.ignore_label, limit, at_most)


def _palette(n: int, given=None) -> np.ndarray:
    if given is not None and len(given) >= n:
        return np.asarray(given[:n], dtype=np.uint8)
    rng = np.random.default_rng(0)
    return rng.integers(40, 256, size=(n, 3)).astype(np.uint8)


def open_source(dataset: str | None = None, data_root: Path | None = None, data: Path | None = None,
                checkpoint: Path | None = None, model_flags: str | None = None) -> Source:
    """Resolve the data options: none (embedded default), --dataset NAME --data-root DIR, or --data DIR."""
    if dataset and data:
        raise ProbeError("--dataset and --data both given: use --dataset NAME --data-root DIR, or --data DIR")
    if dataset:
        info: DatasetInfo = lookup(dataset)
        if data_root is None:
            raise ProbeError(f"--dataset {dataset} needs --data-root DIR, the folder holding {info.name}/")
        root = resolve_dataset_root(info, Path(data_root))
        if checkpoint is None:
            raise ProbeError(f"--dataset {dataset} needs --checkpoint: the {info.checkpoint} DDPM ({info.source})")
        return Source(info.name, root, read_class_names(root, info.num_classes, info), info.ignore_label,
                      Path(checkpoint), model_flags or info.model_flags, _palette(info.num_classes, info.palette))
    if data:
        root = Path(data)
        if not root.is_dir():
            raise ProbeError(f"--data {root} is not a folder: pass a dataset folder with train/ and test/ (or real/train, real/test)")
        if checkpoint is None:
            checkpoint, model_flags = default_model_files()
            log.info(f"--data without --checkpoint: using the embedded default DDPM, which sees images resized to "
                     f"{DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE}; pass --checkpoint for your own model")
        classes = read_class_names(root, infer_num_classes(root))
        palette_file = root / "palette.json"
        given = json.loads(palette_file.read_text()) if palette_file.is_file() else None
        return Source(root.name, root, classes, 255, Path(checkpoint), model_flags, _palette(len(classes), given))
    root = default_domain.default_domain_dir()
    weights, flags = default_model_files() if checkpoint is None else (Path(checkpoint), model_flags)
    return Source("default", root, list(default_domain.CLASSES), 255, weights, flags, default_domain.PALETTE)


def make_backbone(source: Source, kind: str, blocks: list[int] | None, steps: list[int] | None, seed: int,
                  noise: str = "shared", input_activations: bool = False, device: str = "cpu"):
    """The feature backbone: the trained UNet ('ddpm'), the same UNet with seeded random weights ('random'),
    or each pixel's 3x3 RGB neighbourhood ('pixels'). blocks/steps None take `default_blocks`/`default_steps`."""
    if kind not in BACKBONES:
        raise ProbeError(f"--backbone {kind!r}: use one of {', '.join(BACKBONES)}")
    model = source.load_model(device)
    if kind == "pixels":
        return PixelBackbone(model.flags.image_size)
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_model(None, model.flags.to_dict(), device)
        model.checkpoint_hash = f"random-init-seed{seed}"
    policy = NoisePolicy.parse(noise, seed)
    return UNetBackbone(model, blocks if blocks is not None else default_blocks(model.flags.decoder_blocks),
                        steps if steps is not None else default_steps(model.flags.diffusion_steps), policy,
                        input_activations)


PAPER_BLOCKS = (5, 6, 7, 8, 12)
PAPER_STEPS = (50, 150, 250)


def default_blocks(decoder_blocks: int) -> list[int]:
    """The paper's blocks {5,6,7,8,12} of 18, at the same relative depth for other models:
    round(b * (n - 1) / 17), duplicates dropped."""
    return sorted({round(b * (decoder_blocks - 1) / 17) for b in PAPER_BLOCKS})


def default_steps(diffusion_steps: int) -> list[int]:
    """The paper's steps {50,150,250} of 1000, scaled to the model's number of diffusion steps."""
    return sorted({round(t * diffusion_steps / 1000) for t in PAPER_STEPS})


def to_uint8_image(image: LabeledImage) -> np.ndarray:
    """(H, W, 3) uint8 from the model input in [-1, 1]."""
    return np.clip(np.round((image.image.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)
