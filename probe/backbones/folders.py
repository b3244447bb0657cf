"""The files of a model folder as diffusers and transformers save it: its JSON configs, its safetensors weights (one
file or a sharded index and its shards), one digest of their contents (the backbone identity) and what identifies
them for the per-process model cache; the --model-dtype names they load in (the extra that reads them:
probe.utils.extras)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from probe.backbones.base import loaded
from probe.errors import ProbeError
from probe.models.checkpoint import file_hash

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --model-dtype


def read_config(path: Path, fix: str) -> dict:
    """The JSON config at `path`; a missing or unreadable one is one line ending in `fix`."""
    if not path.is_file():
        raise ProbeError(f"{path} not found: {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProbeError(f"{path} is not a JSON config ({error}): {fix}") from None


def weight_files(folder: Path, stem: str, fix: str) -> list[Path]:
    """The safetensors files from_pretrained reads in `folder`: `{stem}.safetensors`, or a sharded index and its
    shards."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(read_config(index, fix).get("weight_map", {}).values()))
        missing = [folder / s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ProbeError(f"{missing[0]} not found (listed in {index}): {fix}")
        return [index, *(folder / s for s in shards)]
    raise ProbeError(f"{single} not found: {fix}")


def files_digest(files: list[Path]) -> str:
    """One hash of the files' contents, in order (each file hashed once per process): moving or renaming the
    folder keeps it, changing any weight or config changes it."""
    digests = [loaded(path, "sha256", lambda p=path: file_hash(p)) for path in files]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def file_stats(files: list[Path]) -> list:
    """What identifies the files for the per-process model cache (path, size, modification time)."""
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
