"""Massive activations: the few channels of a feature map whose values are orders of magnitude above all others.

Sun et al. 2024 ("Massive Activations in Large Language Models") call an activation massive when its magnitude is
about 1,000 times the median magnitude of its hidden state (and above 100). DiTF (Gan et al. 2025, "Unleashing
Diffusion Transformers for Visual Correspondence by Modulating Massive Activations") finds them in diffusion
transformers in a few fixed channels across all image tokens, and discards those channels before matching. Under
cosine similarity such a channel outweighs all the others together, so a nearest-neighbour match follows it instead
of the image's content; without it the match is what the other channels say.

The rule here is Sun et al.'s relative one, per channel: channel c is massive when its largest |activation| over all
the maps given (every image, every position) is at least `ratio` times the median |activation| of all of them, the
nonzero ones (a map with exact zeros, after a ReLU say, keeps its scale). Their absolute floor (100) is left out: the
features of other models live at other scales. Pass every map a comparison will use (both images of a pair, or a
whole set) so that each of them drops the same channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from probe.errors import ProbeError

MASSIVE_RATIO = 1000.0  # Sun et al. 2024: about 1,000 times the median magnitude
Maps = TypeVar("Maps", torch.Tensor, np.ndarray)


def massive_channels(maps: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
                     ratio: float = MASSIVE_RATIO) -> list[int]:
    """The massive channels of `maps`, ascending: those whose largest |activation| is at least `ratio` times the
    median nonzero |activation| of all the maps (the module's rule). `maps`: one (C, h, w) or (N, C, h, w) array or
    tensor, or a sequence of them with the same C (sizes may differ). [] when every value is 0."""
    if ratio <= 1:
        raise ProbeError(f"massive-activation ratio {ratio}: give a number above 1 (Sun et al. use {MASSIVE_RATIO:g})")
    parts = [maps] if isinstance(maps, (torch.Tensor, np.ndarray)) else list(maps)
    if not parts:
        raise ProbeError("massive_channels: no feature maps given")
    flat = []
    for part in parts:
        values = (torch.from_numpy(np.array(part, dtype=np.float32)) if isinstance(part, np.ndarray)
                  else torch.as_tensor(part).detach().float()).abs()
        if values.ndim not in (3, 4):
            raise ProbeError(f"feature maps of shape {tuple(values.shape)}: pass (C, h, w) or (N, C, h, w)")
        flat.append(values.reshape(-1, *values.shape[-3:]).transpose(0, 1).reshape(values.shape[-3], -1))
    channels = {len(f) for f in flat}
    if len(channels) > 1:
        raise ProbeError(f"feature maps with {sorted(channels)} channels: pass maps of one cell")
    magnitudes = torch.cat(flat, dim=1)
    nonzero = magnitudes[magnitudes > 0]
    if not len(nonzero):
        return []
    peaks = magnitudes.amax(dim=1)
    return torch.nonzero(peaks >= ratio * nonzero.median()).flatten().tolist()


def drop_channels(maps: Maps, channels: Sequence[int]) -> Maps:
    """`maps` ((C, h, w) or (N, C, h, w), a tensor or an array) without `channels`, as the same type; the other
    channels keep their order. Cosine similarity on the rest is as if the dropped channels were zeroed."""
    count = maps.shape[-3]
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise ProbeError(f"channel {bad[0]} is out of range: the feature maps have channels 0..{count - 1}")
    dropped = set(channels)
    keep = [c for c in range(count) if c not in dropped]
    if isinstance(maps, torch.Tensor):
        return maps.index_select(-3, torch.tensor(keep, dtype=torch.long, device=maps.device))
    return np.take(maps, keep, axis=-3)
