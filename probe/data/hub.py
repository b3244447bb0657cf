"""Hugging Face Hub names for `--backbone diffusers`, `sd`, `transformers`, `dit`, `pixart`, `sd3` and `flux`:
`owner/name` resolves to a snapshot folder of huggingface_hub's cache (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE,
HF_ENDPOINT and HF_TOKEN as it reads them), fetching only the files the backbone reads: configs, safetensors weights
(one file or a sharded index and its shards), the tokenizers, the scheduler config and (transformers)
preprocessor_config.json; no safety checker, .bin/.ckpt, fp16/non_ema variants, flax or onnx. The backbone identity
is the digest of those files, so a snapshot and the same files in a folder share the activation cache."""

from __future__ import annotations

import re
from pathlib import Path

from probe.errors import ProbeError
from probe.utils.extras import require

_NAME = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


def _weights(folder: str, stem: str) -> list[str]:
    """`{stem}.safetensors` in `folder`, or its sharded index and shards (`{stem}-00001-of-00002.safetensors`)."""
    return [f"{folder}{stem}.safetensors", f"{folder}{stem}.safetensors.index.json",
            f"{folder}{stem}-?????-of-?????.safetensors"]


PATTERNS = {
    "diffusers": ["model_index.json", "config.json", *_weights("", "diffusion_pytorch_model"), "scheduler_config.json",
                  "unet/config.json", *_weights("unet/", "diffusion_pytorch_model"),
                  "scheduler/scheduler_config.json"],
    "sd": ["model_index.json", "unet/config.json", *_weights("unet/", "diffusion_pytorch_model"),
           "vae/config.json", *_weights("vae/", "diffusion_pytorch_model"),
           "text_encoder/config.json", *_weights("text_encoder/", "model"), "tokenizer/*",
           "scheduler/scheduler_config.json"],
    "transformers": ["config.json", *_weights("", "model"), "preprocessor_config.json"],
}
PATTERNS["sd"] += ["text_encoder_2/config.json", *_weights("text_encoder_2/", "model"), "tokenizer_2/*"]  # SDXL


def _pipeline(*texts: str) -> list[str]:
    """A diffusion transformer pipeline: transformer/, vae/, scheduler/ and the text encoders / tokenizers named."""
    files = ["model_index.json", "transformer/config.json", *_weights("transformer/", "diffusion_pytorch_model"),
             "vae/config.json", *_weights("vae/", "diffusion_pytorch_model"), "scheduler/scheduler_config.json"]
    for suffix in texts:
        files += [f"text_encoder{suffix}/config.json", *_weights(f"text_encoder{suffix}/", "model"),
                  f"tokenizer{suffix}/*"]
    return files


PATTERNS.update(dit=_pipeline(), pixart=_pipeline(""), sd3=_pipeline("", "_2", "_3"), flux=_pipeline("", "_2"))
# never fetched, whatever the patterns above match (a guard for their future edits)
IGNORE = ["safety_checker/*", "feature_extractor/*", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx",
          "*.onnx_data", "*.h5", "*.fp16.*", "*.non_ema.*", "*.ema.*"]


def is_repo_id(text: str) -> bool:
    """Whether `text` reads as a hub repo id `owner/name` (one slash, hub-legal characters). The caller asks only
    when no such local path exists."""
    return bool(_REPO_ID.fullmatch(text))


def _transport_error() -> type[Exception]:
    """The HTTP client's base error of the installed huggingface_hub (httpx2 since 2.x, requests before)."""
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            return getattr(__import__(module), name)
        except (ImportError, AttributeError):
            continue
    return OSError


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hub_snapshot(repo_id: str, kind: str, *, revision: str | None = None, progress: bool = True) -> Path:
    """The local snapshot folder of `repo_id` at `revision` (default: main) holding the files `--backbone kind`
    reads, fetched into the Hugging Face cache if missing (none when they are cached or offline). A failure the
    user can fix (offline and not cached, unknown repo or revision, gated repo, network error) is a ProbeError of
    one line naming the repo, the revision and the way out."""
    if kind not in PATTERNS:
        raise ValueError(f"kind {kind!r}: one of {sorted(PATTERNS)}")
    if not is_repo_id(repo_id):
        raise ProbeError(f"{repo_id!r} is neither a folder nor a Hugging Face Hub id (owner/name)")
    require("huggingface_hub", purpose=f"--backbone {kind} with a hub name")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import tqdm

    class Quiet(tqdm):  # huggingface_hub's bars, all disabled (silent_tqdm lacks methods snapshot_download calls)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    where = f"Hub repo {repo_id} (revision {revision or constants.DEFAULT_REVISION})"
    cache = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    way_out = (f"on a connected machine rerun this command (it fetches only the files probe reads) or `hf download "
               f"{repo_id}{f' --revision {revision}' if revision else ''}`, then copy the cache here; or pass "
               "--checkpoint a local folder")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=PATTERNS[kind],
                                        ignore_patterns=IGNORE, tqdm_class=None if progress else Quiet))
    except GatedRepoError:  # before RepositoryNotFoundError, its parent class
        raise ProbeError(f"{where} is gated on the Hugging Face Hub: accept its terms on https://huggingface.co/"
                         f"{repo_id} and log in (`hf auth login` or HF_TOKEN), or pass --checkpoint a local folder"
                         ) from None
    except RepositoryNotFoundError:
        raise ProbeError(f"no folder {repo_id} here, and {where} is not on the Hugging Face Hub: check the name (log "
                         "in with `hf auth login` or HF_TOKEN if it is private), or pass --checkpoint a local folder"
                         ) from None
    except RevisionNotFoundError:
        raise ProbeError(f"{where}: the revision is not on the Hugging Face Hub: give a branch, tag or commit of "
                         f"{repo_id}") from None
    except IncompleteSnapshotError as error:
        raise ProbeError(f"{where}: the cached snapshot {error.snapshot_path} lacks files probe reads and the Hub "
                         f"cannot be reached: {way_out}") from None
    except LocalEntryNotFoundError as error:
        reason = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else _first_line(error.__cause__ or error)
        raise ProbeError(f"no folder {repo_id} here, and {where} is not in the Hugging Face cache ({cache}) and the "
                         f"Hub cannot be reached ({reason}): {way_out}") from None
    except (HfHubHTTPError, _transport_error(), OSError) as error:
        raise ProbeError(f"{where}: download failed ({_first_line(error)}): check the connection and rerun (files "
                         f"already fetched stay in {cache}), or pass --checkpoint a local folder") from None
    if not any(folder.rglob("*.safetensors")):
        raise ProbeError(f"{where} has no safetensors weights in the places --backbone {kind} reads (probe loads no "
                         ".bin or .ckpt): pick a revision that has them (such as refs/pr/N of the Hub's safetensors "
                         "conversion) or pass --checkpoint a local folder")
    return folder
