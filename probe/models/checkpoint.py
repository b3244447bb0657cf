"""Reading checkpoints: hashing, torch.load with weights_only, the authors' wrappers, strict key checks."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from probe.errors import ProbeError


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]




def checkpoint_family(state: dict) -> str | None:
    """A guess at what network a state dict belongs to, from its key names (None when unrecognised)."""
    keys = set(state)
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys):
        return "an MAE/ViT checkpoint (patch_embed/blocks keys)"
    if "conv1.weight" in keys or any(k.startswith("layer1.") for k in keys):
        return "a SwAV/ResNet checkpoint (conv1/layer1..layer4 keys)"
    if any(k.startswith(("input_blocks.", "output_blocks.")) for k in keys):
        return "a guided-diffusion UNet checkpoint (input_blocks/output_blocks keys)"
    return None


def read_checkpoint(checkpoint: str | Path | dict, what: str) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state dict, source name, wrapper) from a path or a dict, loaded with weights_only.

    Unwraps the authors' `{"model": ...}` (MAE) and `{"state_dict": ...}` (SwAV) formats and strips
    DataParallel's `module.` prefix. `wrapper` is the outer dict (empty for a bare state dict).
    """
    if isinstance(checkpoint, dict):
        loaded, source = checkpoint, "the given state dict"
    else:
        path = Path(checkpoint)
        source = f"checkpoint {path}"
        if not path.is_file():
            raise ProbeError(f"{source} does not exist: pass the path of {what} .pt/.pth file")
        try:
            # The MAE trainer stores its argparse flags beside the weights; they are plain data.
            with torch.serialization.safe_globals([argparse.Namespace]):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated or foreign files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProbeError(f"{source} cannot be read ({reason[:160]}): the file is truncated or not a torch "
                             f"checkpoint; download {what} again") from None
    wrapper: dict = {}
    state = loaded
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                wrapper, state = loaded, loaded[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProbeError(f"{source} is not a state dict of tensors: give {what} saved as "
                         f"{{'model': state_dict}}, {{'state_dict': state_dict}} or a bare state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, source, wrapper


def _describe_keys(label: str, items: list[str], limit: int = 4) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{label}: {', '.join(items[:limit])}{more}"


def strict_problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, each as one phrase (empty when it fits)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} (model {tuple(expected[k].shape)}, checkpoint {tuple(state[k].shape)})"
                  for k in expected if k in state and expected[k].shape != state[k].shape]
    return [_describe_keys(label, items) for label, items in
            (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or install a CUDA build of torch")
    return dev
