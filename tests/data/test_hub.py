"""Hugging Face Hub ids for `--backbone diffusers` and `--backbone sd` (probe.data.hub), without a network: every test
runs with HF_HUB_OFFLINE=1, HF_ENDPOINT on a closed local port and HF_HOME / HF_HUB_CACHE in its tmp folder, which
it fills in huggingface_hub's cache layout (models--org--name/blobs/, snapshots/<commit>/ of symlinks, refs/<branch>,
trees/<commit>.json) with the tiny diffusers models of test_diffusers.py."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects
from test_diffusers import DDPM_SIZE, SD_SIZE, images, save_ddpm, save_sd, write_images

from probe.backbones import BackboneSpec, build_backbone
from probe.data.hub import IGNORE, PATTERNS, hub_snapshot, is_repo_id
from probe.errors import ProbeError
from probe.features.store import ActivationStore

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers, nothing leaves the machine
COMMIT, COMMIT_V2 = "1" * 40, "2" * 40
LFS = (".safetensors", ".bin", ".ckpt")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_models")
    return {"ddpm": save_ddpm(root / "ddpm"), "ddpm_v2": save_ddpm(root / "ddpm_v2", seed=1),
            "sd": save_sd(root / "sd")}


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp, offline. huggingface_hub reads these variables once, at import: this
    process needs its constants patched too (a subprocess takes the environment)."""
    home = tmp_path / "hf"
    cache = home / "hub"
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", NOWHERE), ("HF_HOME", str(home)),
                        ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, value)
    for name, value in (("HF_HUB_OFFLINE", True), ("ENDPOINT", NOWHERE), ("HF_HOME", str(home)),
                        ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setattr(constants, name, value)
    monkeypatch.chdir(tmp_path)  # no folder named like the repo ids here
    return cache


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, refs=("main",),
               listed: dict[str, bytes] | None = None) -> Path:
    """`files` stored as huggingface_hub stores a download: the content in blobs/ (named by its sha256 for LFS
    files, its git blob id otherwise), snapshots/<commit>/<path> a relative symlink to it, refs/<ref> the commit.
    `listed`: the repo's whole file list at that commit, written as the tree listing a download caches."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path, data in files.items():
        blob = repo / "blobs" / (hashlib.sha256(data).hexdigest() if path.endswith(LFS) else git_blob_id(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    if listed is not None:
        (repo / "trees").mkdir(exist_ok=True)
        tree = {path: {"size": len(data), "blob_id": git_blob_id(data),
                       **({"lfs_sha256": hashlib.sha256(data).hexdigest(), "lfs_size": len(data)}
                          if path.endswith(LFS) else {})} for path, data in listed.items()}
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    return repo / "snapshots" / commit


def ddpm_repo(folder: Path) -> dict[str, bytes]:
    """A google/ddpm-ema-like repo: the UNet2DModel folder at the root, its pipeline index, a pickled duplicate of
    the weights and files no backbone reads."""
    return {**folder_files(folder), "model_index.json": b'{"_class_name": "DDPMPipeline"}',
            "diffusion_pytorch_model.bin": b"pickled duplicate", "README.md": b"# tiny ddpm",
            "safety_checker/config.json": b"{}", "unet/diffusion_pytorch_model.non_ema.safetensors": b"other"}


def sd_repo(folder: Path) -> dict[str, bytes]:
    """A stable-diffusion-v1-5-like repo: the pipeline folder and what SD 1.5 holds beside it."""
    extras = ["safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
              "feature_extractor/preprocessor_config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
              "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
              "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors",
              "text_encoder/pytorch_model.bin", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt",
              "v1-inference.yaml", "unet/diffusion_flax_model.msgpack", "README.md"]
    return {**folder_files(folder), "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
            **{path: f"not read: {path}".encode() for path in extras}}


def test_patterns_select_exactly_the_files_each_backbone_reads(models):
    repo = sd_repo(models["sd"])
    chosen = set(filter_repo_objects(sorted(repo), allow_patterns=PATTERNS["sd"], ignore_patterns=IGNORE))
    assert chosen == {"model_index.json", *(f"{part}/{name}" for part, names in (
        ("unet", ["config.json", "diffusion_pytorch_model.safetensors"]),
        ("vae", ["config.json", "diffusion_pytorch_model.safetensors"]),
        ("text_encoder", ["config.json", "model.safetensors"]),
        ("tokenizer", ["vocab.json", "merges.txt", "tokenizer_config.json"]),
        ("scheduler", ["scheduler_config.json"])) for name in names)}
    flat = set(filter_repo_objects(sorted(ddpm_repo(models["ddpm"])), allow_patterns=PATTERNS["diffusers"],
                                   ignore_patterns=IGNORE))
    assert flat == {"model_index.json", "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"}
    sharded = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model-00002-of-00002.safetensors", "scheduler/scheduler_config.json"]
    variants = ["unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "unet/diffusion_pytorch_model.fp16.bin",
                "vqvae/diffusion_pytorch_model.safetensors", "unet/flax_model.msgpack", "unet/model.onnx"]
    assert list(filter_repo_objects(sharded + variants, allow_patterns=PATTERNS["diffusers"],
                                    ignore_patterns=IGNORE)) == sharded


def test_hub_snapshot_is_the_cached_commit_holding_the_backbone_s_files(models, hub_cache):
    snapshot = cache_repo(hub_cache, "org/tiny-ddpm", ddpm_repo(models["ddpm"]), refs=("main",))
    cache_repo(hub_cache, "org/tiny-ddpm", ddpm_repo(models["ddpm_v2"]), commit=COMMIT_V2, refs=("v2",))
    folder = hub_snapshot("org/tiny-ddpm", "diffusers", progress=False)
    assert folder == hub_cache / "models--org--tiny-ddpm" / "snapshots" / COMMIT
    for path, data in folder_files(models["ddpm"]).items():  # the backbone's files, through the symlinks
        assert (folder / path).read_bytes() == data, path
    assert (folder / "config.json").is_symlink()
    v2 = hub_snapshot("org/tiny-ddpm", "diffusers", revision="v2")
    assert v2 == snapshot.parent / COMMIT_V2 and hub_snapshot("org/tiny-ddpm", "diffusers", revision=COMMIT_V2) == v2
    weights = "diffusion_pytorch_model.safetensors"
    assert (v2 / weights).read_bytes() == (models["ddpm_v2"] / weights).read_bytes() != (folder / weights).read_bytes()


def test_a_snapshot_with_exactly_the_chosen_files_is_complete_and_one_less_is_not(models, hub_cache):
    """As a download by probe leaves it: the tree listing names the whole repo, the snapshot holds only the files
    the patterns chose. huggingface_hub checks the listing against the patterns offline."""
    repo = sd_repo(models["sd"])
    chosen = {p: repo[p] for p in filter_repo_objects(sorted(repo), allow_patterns=PATTERNS["sd"],
                                                      ignore_patterns=IGNORE)}
    snapshot = cache_repo(hub_cache, "org/tiny-sd", chosen, listed=repo)
    assert hub_snapshot("org/tiny-sd", "sd") == snapshot
    assert not (snapshot / "safety_checker").exists()
    (snapshot / "vae" / "config.json").unlink()
    with pytest.raises(ProbeError) as error:
        hub_snapshot("org/tiny-sd", "sd")
    message = str(error.value)
    assert "org/tiny-sd (revision main)" in message and str(snapshot) in message and "lacks files" in message
    assert "hf download org/tiny-sd" in message and "\n" not in message


def run_probe(cwd: Path, *args) -> subprocess.CompletedProcess:
    """The installed command, in `cwd`, with this test's environment (the HF variables included)."""
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


CLI_CASES = {  # kind: (repo id, the tiny model, its repo's files, image size, options)
    "diffusers": ("org/tiny-ddpm", "ddpm", ddpm_repo, DDPM_SIZE, ["--blocks", "1,4", "--steps", "10,80"]),
    "sd": ("org/tiny-sd", "sd", sd_repo, SD_SIZE, ["--blocks", "1,3", "--steps", "10,500", "--prompt", "a cat"]),
}


@pytest.mark.parametrize("kind", sorted(CLI_CASES))
def test_probe_features_from_a_hub_id_equals_the_folder_s_and_shares_its_cache(models, hub_cache, tmp_path, kind):
    repo_id, model, repo_files, size, options = CLI_CASES[kind]
    cache_repo(hub_cache, repo_id, repo_files(models[model]))
    pictures = write_images(tmp_path / "imgs", 2, size)
    outputs = {}
    for name, checkpoint in (("hub", repo_id), ("folder", models[model])):
        outputs[name] = tmp_path / f"feats_{name}"
        result = run_probe(tmp_path, "features", "--backbone", kind, "--checkpoint", checkpoint, "--images", pictures,
                           *options, "--out", outputs[name], "--quiet")
        assert result.returncode == 0, result.stderr
    blocks, steps = options[1].split(","), options[3].split(",")
    for stem in ("im0", "im1"):
        hub, folder = np.load(outputs["hub"] / f"{stem}.npz"), np.load(outputs["folder"] / f"{stem}.npz")
        assert sorted(hub.files) == sorted(folder.files) == [f"t{t}_block{b}" for t in steps for b in blocks]
        for name in hub.files:
            assert np.array_equal(hub[name], folder[name]), (stem, name)
    # the activation cache: one identity folder for both, the folder's run reads what the hub's run stored
    from probe.data.layout import load_images

    pictures_in = load_images(pictures, size)
    root = tmp_path / "activations"
    snapshot = hub_snapshot(repo_id, kind)
    hub_backbone = build_backbone(BackboneSpec(kind, snapshot, layers=blocks[0], steps=steps[0]), "features")
    first = ActivationStore(hub_backbone, root).fill(pictures_in, progress=False)
    folder_backbone = build_backbone(BackboneSpec(kind, models[model], layers=blocks[0], steps=steps[0]), "features")
    again = ActivationStore(folder_backbone, root).fill(pictures_in, progress=False)
    assert again.files == 0 < first.files  # nothing recomputed
    assert hub_backbone.identity == folder_backbone.identity and len(list(root.iterdir())) == 1


def test_sd_from_a_hub_id_is_the_folder_s_backbone(models, hub_cache, tmp_path):
    cache_repo(hub_cache, "org/tiny-sd", sd_repo(models["sd"]))
    spec = dict(layers="all", steps="500", prompt="a cat")
    hub = build_backbone(BackboneSpec("sd", hub_snapshot("org/tiny-sd", "sd"), **spec), "features")
    folder = build_backbone(BackboneSpec("sd", models["sd"], **spec), "features")
    assert hub.identity == folder.identity and hub.image_size == SD_SIZE
    x0 = images(2, SD_SIZE)
    with torch.no_grad():
        hub_maps, folder_maps = hub(x0, ["a", "b"], 500), folder(x0, ["a", "b"], 500)
    assert sorted(hub_maps) == sorted(folder_maps) == [f"t500_block{b}" for b in range(4)]
    for name in hub_maps:
        assert torch.equal(hub_maps[name], folder_maps[name]), name
    changed = sd_repo(models["sd"])  # another commit of the repo with one config changed: another identity
    scheduler = json.loads(changed["scheduler/scheduler_config.json"])
    changed["scheduler/scheduler_config.json"] = json.dumps({**scheduler, "beta_end": 0.02}).encode()
    cache_repo(hub_cache, "org/tiny-sd", changed, commit=COMMIT_V2, refs=("main",))
    moved = build_backbone(BackboneSpec("sd", hub_snapshot("org/tiny-sd", "sd"), **spec), "features")
    assert moved.identity["checkpoint"] != folder.identity["checkpoint"]


def test_the_checkpoint_resolves_to_a_local_folder_first_then_the_hub(models, hub_cache, tmp_path):
    """probe.data.sources.backbone_spec, where the toolkit turns names into paths."""
    from probe.data.sources import backbone_spec

    cache_repo(hub_cache, "org/tiny-ddpm", ddpm_repo(models["ddpm"]))
    hub = backbone_spec(None, BackboneSpec("diffusers", Path("org/tiny-ddpm")), progress=False)
    assert hub.checkpoint == hub_snapshot("org/tiny-ddpm", "diffusers")
    shutil.copytree(models["ddpm_v2"], tmp_path / "org" / "tiny-ddpm")  # a folder of that name here wins
    local = backbone_spec(None, BackboneSpec("diffusers", Path("org/tiny-ddpm")), progress=False)
    assert local.checkpoint == Path("org/tiny-ddpm")
    assert build_backbone(local, "features").identity == \
        build_backbone(BackboneSpec("diffusers", models["ddpm_v2"]), "features").identity != \
        build_backbone(hub, "features").identity


def test_offline_and_not_cached_says_how_to_get_it(models, hub_cache, tmp_path):
    cache_repo(hub_cache, "org/tiny-ddpm", ddpm_repo(models["ddpm"]))
    for repo_id, revision in (("org/missing", None), ("org/tiny-ddpm", "v3"), ("org/tiny-ddpm", COMMIT_V2)):
        with pytest.raises(ProbeError) as error:
            hub_snapshot(repo_id, "diffusers", revision=revision)
        message = str(error.value)
        assert f"Hub repo {repo_id} (revision {revision or 'main'})" in message, message
        assert str(hub_cache / f"models--{repo_id.replace('/', '--')}") in message and "HF_HUB_OFFLINE=1" in message
        assert f"`hf download {repo_id}{f' --revision {revision}' if revision else ''}`" in message
        assert "pass --checkpoint a local folder" in message and "\n" not in message
    result = run_probe(tmp_path, "features", "--backbone", "sd", "--checkpoint", "org/missing", "--images",
                       write_images(tmp_path / "imgs", 1, 8), "--out", tmp_path / "out")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no folder org/missing here"), result.stderr
    assert "hf download org/missing" in lines[0] and not (tmp_path / "out").exists()


def http_error(kind, status: int):
    import httpx2

    request = httpx2.Request("GET", f"{NOWHERE}/api/models/org/private")
    return kind(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("case", ["not found", "gated", "revision", "connection"])
def test_hub_errors_are_one_line_saying_which(hub_cache, monkeypatch, case):
    """What snapshot_download raises online (huggingface_hub re-raises these when the cache does not hold the repo)."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    error, words = {
        "not found": (http_error(RepositoryNotFoundError, 401), ["no folder org/private here", "HF_TOKEN",
                                                                "is not on the Hugging Face Hub", "check the name"]),
        "gated": (http_error(GatedRepoError, 403), ["is gated", "https://huggingface.co/org/private", "hf auth login"]),
        "revision": (http_error(RevisionNotFoundError, 404), ["the revision is not on the Hugging Face Hub",
                                                              "branch, tag or commit"]),
        "connection": (httpx2.ReadTimeout("timed out"), ["download failed (timed out)", "rerun"]),
    }[case]

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(ProbeError) as raised:
        hub_snapshot("org/private", "sd", revision="dev")
    message = str(raised.value)
    assert "Hub repo org/private (revision dev)" in message and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_is_repo_id():
    for text in ("google/ddpm-ema-bedroom-256", "stable-diffusion-v1-5/stable-diffusion-v1-5", "org/tiny_sd.v2"):
        assert is_repo_id(text), text
    for text in ("runs/", "./a/b", "/abs/path", "a/b/c", "name", "", "a//b", "org/na me", "org/a--b", "org/a..b",
                 "-org/name", "org/name.", "~/models"):
        assert not is_repo_id(text), text
