"""The backbone contract: a source of named feature maps at native resolution.

A backbone lists its cells (a layer label and, for diffusion models, a step t), says its input size and input
normalisation, exposes a versioned `identity` (everything that determines its activations: cache keys and
manifests), and maps a batch of images to `{cell name: (B, C, h, w)}`. Everything downstream (the store, the
sampler, segment, grid, kmeans, features, predict) sees only this contract.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
import torch

from probe.backbones.spec import check_cell_syntax
from probe.errors import ProbeError
from probe.models.vit import imagenet_normalize

T = TypeVar("T")
K = TypeVar("K")


@dataclass(frozen=True)
class Cell:
    """One feature map: a layer (e.g. `block5`, `layer2.0`, `rgb3x3`) at a diffusion step (None: no steps)."""

    layer: str
    step: int | None = None

    @property
    def name(self) -> str:
        return self.layer if self.step is None else f"t{self.step}_{self.layer}"


class Backbone(ABC):
    """A source of named feature maps. Subclasses set `kind` (the registry name), `layer_title` (what a layer
    is, for figures), `normalisation`, `image_size` and `cells`, and implement `identity` and `features`."""

    kind: ClassVar[str]
    layer_title: ClassVar[str] = "layer"
    normalisation: ClassVar[str]
    version: ClassVar[int] = 2  # bumped whenever the same identity would give other activations (2: padded batches)
    released: bool = False  # see release
    image_size: int
    cells: list[Cell]
    all_layers: list[str]  # every layer the network has, in depth order

    @property
    @abstractmethod
    def identity(self) -> dict:
        """Everything that determines the activations (JSON-serialisable), including kind and version."""

    @abstractmethod
    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        """{cell name: (B, C, h, w) float32 on the CPU} for the chosen cells at `step`; `images` (B, 3, H, W) are
        in [-1, 1] (the toolkit's loaded form): each backbone applies its own input normalisation."""

    def __call__(self, images: torch.Tensor, stems: list[str], step: int | None = None) -> dict[str, torch.Tensor]:
        if self.released:
            raise ProbeError(f"this {self.kind} backbone's networks were released after extraction: build it again")
        if step not in self.steps:
            raise ProbeError(f"step {step} is not among this backbone's steps {self.steps}")
        with torch.no_grad():
            return self.features(images, stems, step)

    def batch_features(self, images: list[np.ndarray], stems: list[str], step: int | None,
                       batch_size: int) -> dict[str, torch.Tensor]:
        """As calling the backbone on the (3, H, W) `images` stacked, in one forward padded with blank images to
        `batch_size`: kernels round differently at another batch size (about 1e-5), but not with other images beside,
        so an image's activations depend on the batch size only, never on which images it was extracted with."""
        blanks = [np.zeros_like(images[0])] * (batch_size - len(images))
        acts = self(torch.from_numpy(np.stack(list(images) + blanks)), list(stems) + [""] * len(blanks), step)
        return {name: act[:len(images)] for name, act in acts.items()}

    @property
    def names(self) -> list[str]:
        return [cell.name for cell in self.cells]

    @property
    def steps(self) -> list[int | None]:
        """The distinct steps of the cells, in order ([None] for a backbone without steps)."""
        return list(dict.fromkeys(cell.step for cell in self.cells))

    @property
    def layers(self) -> list[str]:
        """The distinct layers of the cells, in depth order."""
        return list(dict.fromkeys(cell.layer for cell in self.cells))

    def release(self) -> None:
        """Free the networks once every feature a run needs is extracted, so that training and prediction do not
        hold them: drops the torch modules this backbone holds and the networks `loaded` keeps for this process.
        The description (cells, names, identity, image size) stays; extracting again needs a new backbone."""
        _LOADED.clear()
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.nn.Module):
                setattr(self, name, None)
        self.released = True

    def batch_size(self, image_side: int) -> int:
        """Images per forward when the store extracts: about 16k input pixels (16 images at 32 x 32, 1 at 256 x 256);
        the latent backbones count latent positions instead."""
        return max(1, 16384 // image_side ** 2)

    def names_for_step(self, step: int | None) -> list[str]:
        return [cell.name for cell in self.cells if cell.step == step]

    def cell_name(self, layer: str, step: int | None) -> str:
        return Cell(layer, step).name

    def layer_index(self, layer: str) -> int:
        """A layer's depth position among all of the network's layers."""
        return self.all_layers.index(layer)

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Every chosen layer's (C, h, w), from one forward of one blank image at the backbone's first step."""
        step = self.steps[0]
        out = self(torch.zeros(1, 3, self.image_size, self.image_size), ["plan"], step)
        return {cell.layer: tuple(int(n) for n in out[cell.name].shape[1:]) for cell in self.cells
                if cell.step == step}

    def passes_per_image(self, step: int | None) -> int:
        """Forward passes one image costs at `step` (1; the backbones with a noise policy say more)."""
        return 1

    def reseeded(self, seed: int) -> Backbone | None:
        """This backbone as built with another `seed`, when that needs no new build (None: build it anew)."""
        return None


_LOADED: dict[tuple, object] = {}
LOADED_LIMIT = 4  # networks kept per process (a sweep's worker reuses them across cells)


def loaded(checkpoint: Path | None, options: object, load: Callable[[], T]) -> T:
    """`load()`, once per process for the same checkpoint file (path, size, modification time) and options: a
    sweep's cells reuse the network instead of reading it again. Networks are only ever used for inference."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        return load()  # the loader says what is missing, in one line
    stat = Path(checkpoint).stat() if checkpoint is not None else None
    key = (str(checkpoint), stat and (stat.st_size, stat.st_mtime_ns), json.dumps(options, sort_keys=True, default=str))
    if key not in _LOADED:
        if len(_LOADED) >= LOADED_LIMIT:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load()
    return _LOADED[key]


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def refuse_options(spec, options: tuple[str, ...], why: str) -> None:
    """One line for the first of `options` (--steps, --image-size, ...: BackboneSpec fields by their flag) that
    `spec` sets but its family does not take, saying `why`."""
    for option in options:
        if getattr(spec, option.lstrip("-").replace("-", "_")):
            raise ProbeError(f"{option}: the {spec.kind} backbone {why}; drop {option}")


def select_layers(text: str | None, available: list[str], default: list[str], what: str = "blocks") -> list[str]:
    """Layers chosen by --blocks: `all`, indices into `available` (`5,6`), ranges (`0-17`) or names (`block5`,
    `layer2.0`), in depth order; None gives `default`."""
    if not text:
        return list(default)
    check_cell_syntax(text, what)
    if text.strip().lower() == "all":
        return list(available)
    chosen: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match:
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if high >= len(available):
                raise ProbeError(f"--{what} {high} is out of range: this model has {what} 0..{len(available) - 1}")
            chosen.update(available[low:high + 1])
        elif part in available:
            chosen.add(part)
        else:
            raise ProbeError(f"--{what} {part!r} is not a layer of this model: use 0..{len(available) - 1} or a name "
                             f"among {', '.join(available[:3])}, ..., {available[-1]}")
    return [layer for layer in available if layer in chosen]


def select_steps(text: str | None, diffusion_steps: int, default: list[int]) -> list[int]:
    """Steps chosen by --steps (`50,150,250`, `0-10`, `all`), sorted; None gives `default`."""
    if not text:
        return list(default)
    check_cell_syntax(text, "steps")
    if text.strip().lower() == "all":
        return list(range(diffusion_steps))
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ProbeError(f"--steps {text!r}: {part!r} is not a number; write e.g. 50,150,250")
        values.update(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
    bad = [v for v in sorted(values) if v >= diffusion_steps]
    if bad:
        raise ProbeError(f"--steps {bad[0]} is out of range: this model has steps 0..{diffusion_steps - 1}")
    return sorted(values)


@contextlib.contextmanager
def capture(modules: dict[str, torch.nn.Module], inputs: bool = False):
    """Record each module's output (or its first input) into a dict during the with-block; hooks removed after.
    A module returning a tuple (diffusers' transformer blocks with return_dict=False) is recorded by its first
    element."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for key, module in modules.items():
        if inputs:
            handles.append(module.register_forward_pre_hook(lambda m, args, k=key: captured.__setitem__(k, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, k=key: captured.__setitem__(
                k, out[0] if isinstance(out, tuple) else out)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def mean_captures(modules: dict[K, torch.nn.Module], run: Callable[[torch.Tensor], object],
                  inputs: list[torch.Tensor], capture_inputs: bool = False) -> dict[K, torch.Tensor]:
    """Each module's output (or input) during `run(x)`, in float32, averaged over the x in `inputs` (the noise
    draws of one step)."""
    sums: dict[K, torch.Tensor] = {}
    for x in inputs:
        with capture(modules, capture_inputs) as captured:
            run(x)
        for key, act in captured.items():
            sums[key] = act.float() if key not in sums else sums[key] + act.float()
    return {key: sums[key] / len(inputs) for key in modules}


class Enough(Exception):
    """Raised by a hook once the last chosen layer has run: the rest of the network is skipped."""


def run_until(module: torch.nn.Module, before: bool, forward) -> None:
    """`forward()`, stopped once `module` is reached (`before`: when its input is ready) or has run."""
    def stop(*_):
        raise Enough

    handle = module.register_forward_pre_hook(stop) if before else module.register_forward_hook(stop)
    try:
        forward()
    except Enough:
        pass
    finally:
        handle.remove()


def imagenet_input(images: torch.Tensor) -> torch.Tensor:
    """The toolkit's [-1, 1] images as the baselines take them (mae, swav, deeplab): ImageNet-normalised [0, 1]."""
    return imagenet_normalize((images.float() + 1) * 127.5)
