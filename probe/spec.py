"""What a user says about a backbone (`BackboneSpec`), the syntax of --blocks / --steps and the ensemble's
precision. No torch here: the command checks its options with these before it loads anything."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from probe.errors import ProbeError

BACKBONE_KINDS = ("ddpm", "random", "pixels", "mae", "swav", "swav_w2", "diffusers", "sd", "transformers", "dit", "pixart",
                  "sd3", "flux")  # the registry's names (probe.backbones.BACKBONES), checked before anything loads
DTYPE_BACKBONES = ("transformers", "sd", "dit", "pixart", "sd3", "flux")  # take --model-dtype
CELL_PART = re.compile(r"(\d+)(?:-(\d+))?|[a-z]+\d[a-z0-9]*(?:\.\d+)?", re.IGNORECASE)  # 5, 0-17, block5, up1.2, rgb3x3


@dataclass
class BackboneSpec:
    """Everything a user says about a backbone; `build_backbone` turns it into one. `layers` and `steps` are the
    --blocks / --steps texts (None: the purpose's default); options a family does not take must stay unset."""

    kind: str = "ddpm"
    checkpoint: Path | None = None
    model_flags: str | Path | dict | None = None
    layers: str | None = None
    steps: str | None = None
    noise: str | None = None
    seed: int = 0
    input_activations: bool = False
    image_size: int | None = None
    device: str = "cpu"
    prompt: str | None = None  # sd only: the text the UNet is conditioned on (None: the empty prompt)
    revision: str | None = None  # a hub model's revision (branch, tag or commit), for a hub name as checkpoint
    model_dtype: str | None = None  # transformers, sd, dit, pixart, sd3, flux: the dtype the network computes in
    class_label: int | None = None  # dit only: the class the model is conditioned on (None: the null class)

    def to_dict(self) -> dict:
        """JSON-ready, for manifests (a Path becomes a string). `revision`, `model_dtype` and `class_label` are left
        out while unset, so the specs (and sweep cell keys) of the backbones without them stay what they were before
        these options existed."""
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for optional in ("revision", "model_dtype", "class_label"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict, **changes) -> BackboneSpec:
        """The spec `to_dict` wrote (a manifest's, a sweep cell's), with `changes` applied."""
        spec = cls(**{**data, **changes})
        if spec.checkpoint is not None:
            spec.checkpoint = Path(spec.checkpoint)
        return spec


def check_cell_syntax(text: str | None, what: str) -> None:
    """Fail on a malformed --blocks / --steps value before anything is loaded (names are checked later)."""
    if not text or text.strip().lower() == "all":
        return
    for part in text.split(","):
        if not CELL_PART.fullmatch(part.strip()):
            raise ProbeError(f"--{what} {text!r}: {part.strip()!r} is not a number, a range or a layer name; "
                             "write e.g. 5,6,7 or 0-17 or all")


PRECISIONS = ("float32", "bfloat16")  # of the ensemble's first-layer products; "auto" picks one by hardware
AUTHORS_BATCH_SIZE = 64  # the authors' pixels per step, in every epoch: the default training rule everywhere


def training_rule(early_batch_size: int | None, batch_size: int = AUTHORS_BATCH_SIZE) -> str:
    """What metrics.json says of the ensemble's training rule, from the early batch a fit used (None or
    `batch_size`: the authors' rule throughout)."""
    if early_batch_size in (None, batch_size):
        return f"authors (batches of {batch_size})"
    return (f"early batches of {early_batch_size} in epochs 0-3 (lr x {early_batch_size}/{batch_size}), then "
            f"{batch_size} (not the authors')")


def check_precision(precision: str, batched: bool = True) -> None:
    """Fail on a precision the ensemble cannot use: unknown, or bfloat16 for the sequential reference."""
    if precision not in (*PRECISIONS, "auto"):
        raise ProbeError(f"precision {precision!r}: use auto, float32 or bfloat16")
    if not batched and precision == "bfloat16":
        raise ProbeError("precision bfloat16 needs the batched ensemble: drop --sequential or use float32")


def check_kind(kind: str, option: str = "--backbone") -> None:
    if kind not in BACKBONE_KINDS:
        raise ProbeError(f"{option} {kind!r}: use one of {', '.join(BACKBONE_KINDS)}")
