"""Loading guided-diffusion checkpoints into the project's ADM UNet."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import ProbeError
from probe.models.checkpoint import file_hash
from probe.models.flags import ModelFlags, parse_flags, resolve_flags
from probe.models.unet import UNet

log = logging.getLogger("probe")

__all__ = ["LoadedModel", "ModelFlags", "UNet", "load_model", "load_state_dict", "parse_flags", "resolve_flags"]


@dataclass
class LoadedModel:
    """A UNet in eval mode with the flags that built it and the hash of the checkpoint it came from."""

    unet: UNet
    flags: ModelFlags
    checkpoint_hash: str
    device: torch.device


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, loaded without running pickled code (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"checkpoint {path} does not exist: pass --checkpoint with a guided-diffusion .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbeError(f"checkpoint {path} cannot be read ({reason[:160]}): the file is truncated or not a torch state dict; download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProbeError(f"checkpoint {path} is not a state dict of tensors: save it with torch.save(model.state_dict())")
    return state


def check_keys(unet: UNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Fail loudly, listing missing keys, unexpected keys and shape mismatches."""
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (model {tuple(expected[k].shape)}, checkpoint {tuple(state[k].shape)})"
        for k in expected if k in state and expected[k].shape != state[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ProbeError(f"{source} does not fit the model flags ({'; '.join(problems)}): check --model-flags against the checkpoint")


@functools.lru_cache(maxsize=None)
def _warn_fp16_off(device_type: str) -> None:
    """Say once per process that use_fp16 has no effect off the GPU."""
    log.warning("use_fp16 is set but the device is %s: computing in float32", device_type)


def load_model(checkpoint: Path | None, flags: str | Path | dict | None = None, device: str = "cpu",
               state: dict[str, torch.Tensor] | None = None) -> LoadedModel:
    """Build the UNet from the user's flags (completed from the checkpoint's shapes) and load it strictly.

    `state` may be given instead of `checkpoint` (e.g. random weights for a control); with neither, the
    model keeps its fresh initialisation.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or install a CUDA build of torch")
    source = str(checkpoint) if checkpoint is not None else "the given weights"
    if checkpoint is not None:
        state = load_state_dict(Path(checkpoint))
    resolved = resolve_flags(parse_flags(flags), state, source)
    # Loaded weights are taken over as they are (assign=True) by a model built without memory of its own (on the meta
    # device), so the weights are held once, not twice, while loading: at the released width 2.2 GB, not 4.5.
    with torch.random.fork_rng(devices=[]), torch.device("meta") if state is not None else contextlib.nullcontext():
        unet = UNet(resolved)  # without weights to load, the fresh initialisation is the caller's choice
    if state is not None:
        check_keys(unet, state, source)
        unet.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    # torch's default (contiguous) layout, as the authors' extractor: channels-last ran a pass 5-8 % faster on CPU but
    # moved the features up to 6e-5 (max |diff| / mean |ref|) off it on an Intel Xeon and 2e-4 on an AMD EPYC, where
    # the parity check asks for 1e-4 (its GroupNorm kernel loses digits to the mean; bench/bench_unet_layout.py)
    unet.eval().to(dev)
    if resolved.use_fp16:
        if dev.type == "cuda":
            unet.convert_to_fp16()
        else:
            _warn_fp16_off(dev.type)
    digest = file_hash(Path(checkpoint)) if checkpoint is not None else "none"
    return LoadedModel(unet, resolved, digest, dev)
