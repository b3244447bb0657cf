"""The backbone contract, over every registered backbone; MAE and SwAV parity with the authors' extractors."""

import gc
import json
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, PARITY, parity_error
from test_diffusers import changed_weights, diffusers_folders  # noqa: F401 (a fixture): tiny diffusers model folders
from test_transformers_backbones import transformers_folders, transformers_models  # noqa: F401 (fixtures)
from test_latent_diffusion import SIZE as LATENT_SIZE, pipelines  # noqa: F401 (a fixture): tiny DiT ... FLUX folders
from probe.backbones import BACKBONES, BackboneSpec, build_backbone
from probe.data.layout import load_images
from probe.errors import ProbeError

ADM = json.loads((FIXTURES / "adm_tiny32.json").read_text())
MAE = json.loads((FIXTURES / "mae_tiny32.json").read_text())
SWAV = json.loads((FIXTURES / "swav_tiny64.json").read_text())

# One small instance of every registered backbone: (spec, native size of the data).
SPECS = {
    "ddpm": (BackboneSpec("ddpm", FIXTURES / "adm_tiny32.pt", str(FIXTURES / "adm_tiny32.json"), "2,5", "50,250"), 32),
    "random": (BackboneSpec("random", None, str(FIXTURES / "adm_tiny32.json"), "2,5", "50"), 32),
    "pixels": (BackboneSpec("pixels"), 32),
    "mae": (BackboneSpec("mae", FIXTURES / "mae_tiny32.pt", "--num_heads 4", "3,4,5"), 32),
    "swav": (BackboneSpec("swav", FIXTURES / "swav_tiny64.pt"), 64),
    "swav_w2": (BackboneSpec("swav_w2", FIXTURES / "swav_tiny64.pt"), 64),
    "diffusers": (BackboneSpec("diffusers", None, None, "1,3", "10,50"), 32),  # checkpoint: diffusers_folders
    "sd": (BackboneSpec("sd", None, None, "0,3", "500"), 32),
    "transformers": (BackboneSpec("transformers", None, layers="0,2"), 32),  # checkpoint: transformers_folders
    "dit": (BackboneSpec("dit", layers="0,1", steps="100"), 32),  # checkpoint: pipelines
    "pixart": (BackboneSpec("pixart", layers="0,1", steps="100"), 32),
    "sd3": (BackboneSpec("sd3", layers="0,1", steps="100"), 32),
    "flux": (BackboneSpec("flux", layers="0,1", steps="100", image_size=LATENT_SIZE), LATENT_SIZE),
}


def built_spec(kind: str, request) -> BackboneSpec:
    """SPECS[kind]'s spec with its checkpoint: the hub families' folders come from their session fixtures."""
    spec, _ = SPECS[kind]
    if kind in ("diffusers", "sd"):
        spec = BackboneSpec(**{**vars(spec), "checkpoint": request.getfixturevalue("diffusers_folders")[kind]})
    if kind == "transformers":
        spec = BackboneSpec(**{**vars(spec), "checkpoint": request.getfixturevalue("transformers_folders")["dinov2"]})
    if kind in ("dit", "pixart", "sd3", "flux"):
        spec = BackboneSpec(**{**vars(spec), "checkpoint": request.getfixturevalue("pipelines")[kind]})
    return spec


def test_every_registered_backbone_has_a_contract_test_instance():
    from probe.backbones.spec import BACKBONE_KINDS

    assert sorted(SPECS) == sorted(BACKBONES) == sorted(BACKBONE_KINDS)  # the CLI checks names against the last


def modules_of(backbone) -> list[torch.nn.Module]:
    return [m for value in vars(backbone).values() for m in
            ([value] if isinstance(value, torch.nn.Module) else
             [getattr(value, "unet")] if hasattr(value, "unet") else []) if m is not None]


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_backbone_contract(tmp_path, kind, request):
    spec, native = built_spec(kind, request), SPECS[kind][1]
    backbone = build_backbone(spec, "segment", native)
    assert backbone.kind == kind and backbone.identity["backbone"] == kind and "version" in backbone.identity
    assert json.loads(json.dumps(backbone.identity)) == backbone.identity  # JSON as it is: cache keys, manifests
    assert backbone.names == [cell.name for cell in backbone.cells] and len(set(backbone.names)) == len(backbone.names)
    assert set(backbone.layers) <= set(backbone.all_layers)
    images = torch.rand(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = {}
    for step in backbone.steps:
        maps = backbone(images, ["a", "b"], step)
        assert sorted(maps) == sorted(backbone.names_for_step(step))
        for name, array in maps.items():
            assert array.dim() == 4 and array.shape[0] == 2 and array.dtype == torch.float32, name
            assert array.device.type == "cpu" and torch.isfinite(array).all(), name
            assert 1 <= array.shape[2] <= backbone.image_size and array.shape[2] == array.shape[3], name
            assert torch.equal(array, backbone(images, ["a", "b"], step)[name]), name  # same input, same numbers
        seen.update(maps)
    assert sorted(seen) == sorted(backbone.names)
    for module in (m for root in modules_of(backbone) for m in root.modules()):
        assert not module._forward_hooks and not module._forward_pre_hooks  # no hook left behind
    with pytest.raises(ProbeError, match="not among this backbone's steps"):
        backbone(images, ["a", "b"], 12345)

    # the identity changes with the weights (random: with the seed that draws them)
    if spec.checkpoint is not None and spec.checkpoint.is_dir():
        changed = changed_weights(spec.checkpoint, tmp_path / "changed")
        other = build_backbone(BackboneSpec(**{**vars(spec), "checkpoint": changed}), "segment", native)
        assert other.identity != backbone.identity and other.identity["checkpoint"] != backbone.identity["checkpoint"]
    elif spec.checkpoint is not None:
        changed = tmp_path / spec.checkpoint.name
        state = torch.load(spec.checkpoint, weights_only=True)
        inner = state.get("model", state.get("state_dict", state))
        key = next(k for k, v in inner.items() if v.dtype.is_floating_point and v.dim() > 1)
        inner[key] = inner[key] + 1
        torch.save(state, changed)
        other = build_backbone(BackboneSpec(**{**vars(spec), "checkpoint": changed}), "segment", native)
        assert other.identity != backbone.identity and other.identity["checkpoint"] != backbone.identity["checkpoint"]
    elif kind == "random":
        other = build_backbone(BackboneSpec(**{**vars(spec), "seed": 1}), "segment", native)
        assert other.identity != backbone.identity
        name = backbone.names[0]
        assert not torch.equal(other(images, ["a", "b"], backbone.steps[0])[name], seen[name])

    # release (a run that has extracted everything): the networks are freed, the description stays
    identity, names, size = backbone.identity, backbone.names, backbone.image_size
    networks = [weakref.ref(module) for module in modules_of(backbone)]
    assert networks or kind == "pixels"
    backbone.release()
    gc.collect()
    assert [network() for network in networks] == [None] * len(networks)
    assert (backbone.identity, backbone.names, backbone.image_size) == (identity, names, size)
    with pytest.raises(ProbeError, match=f"this {kind} backbone's networks were released after extraction"):
        backbone(images, ["a", "b"], backbone.steps[0])


def test_random_weights_come_from_the_seed_alone():
    spec, native = SPECS["random"]
    state = torch.random.get_rng_state()
    first = build_backbone(spec, "segment", native)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is not touched
    torch.manual_seed(123)  # nor read
    second = build_backbone(spec, "segment", native)
    for (name, a), b in zip(first.model.unet.state_dict().items(), second.model.unet.state_dict().values()):
        assert torch.equal(a, b), name
    assert first.identity["backbone"] == "random" and first.identity["checkpoint"] == "random-init-seed0"


def parity(arrays: dict, reference: np.lib.npyio.NpzFile, cells: dict[str, str]) -> None:
    """Every reference array equals the cell it names: max |diff| at most PARITY (1e-4) of its mean |value|."""
    for ref_name, cell in cells.items():
        ref = reference[ref_name][0]
        got = np.asarray(arrays[cell])
        assert got.shape == ref.shape, cell
        error = parity_error(got, ref)
        assert error <= PARITY, (cell, error)


@pytest.mark.parametrize("kind,fixture,spec", [
    ("mae", MAE, BackboneSpec("mae", FIXTURES / "mae_tiny32.pt", "--num_heads 4", "3,4,5")),
    ("swav", SWAV, BackboneSpec("swav", FIXTURES / "swav_tiny64.pt")),
    ("swav_w2", SWAV, BackboneSpec("swav_w2", FIXTURES / "swav_tiny64.pt", layers="0,2,layer2.0,layer2.2,layer3.0,layer3.2,layer3.4,layer4.0,layer4.2")),
])
def test_fixture_parity_through_the_api(kind, fixture, spec):
    reference = np.load(FIXTURES / fixture["features"])
    backbone = build_backbone(spec, "features", 32 if kind == "mae" else 64)
    assert backbone.names == list(fixture["cells"].values())
    image = load_images(FIXTURES / fixture["image"], backbone.image_size)[0]
    maps = backbone(torch.from_numpy(image.image[None]), [image.stem], None)
    parity({name: a[0] for name, a in maps.items()}, reference, fixture["cells"])


def run_probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True, timeout=300)


def image_dir(tmp_path: Path, fixture: dict) -> Path:
    folder = tmp_path / "images"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / fixture["image"], folder)
    return folder


def test_mae_and_swav_fixtures_through_probe_features(tmp_path):
    out = tmp_path / "mae"
    result = run_probe("features", "--backbone", "mae", "--checkpoint", FIXTURES / "mae_tiny32.pt", "--model-flags",
                       "--num_heads 4", "--images", image_dir(tmp_path / "m", MAE), "--blocks", "3,4,5",
                       "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    exported = np.load(out / "mae_tiny32.npz")
    assert sorted(exported.files) == ["block3", "block4", "block5"]
    parity(exported, np.load(FIXTURES / MAE["features"]), MAE["cells"])

    out = tmp_path / "swav"
    result = run_probe("features", "--backbone", "swav_w2", "--checkpoint", FIXTURES / "swav_tiny64.pt",
                       "--image-size", 64, "--images", image_dir(tmp_path / "s", SWAV), "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    exported = np.load(out / "swav_tiny64.npz")
    assert sorted(exported.files) == sorted(SWAV["cells"].values())  # the authors' nine cells by default
    parity(exported, np.load(FIXTURES / SWAV["features"]), SWAV["cells"])
    assert "unused for features" not in result.stderr or len(result.stderr.splitlines()) == 1


def swav_without_layer3(tmp_path: Path) -> Path:
    state = torch.load(FIXTURES / "swav_tiny64.pt", weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("module.layer3.")}
    path = tmp_path / "swav_no_layer3.pt"
    torch.save(state, path)
    return path


BAD = {
    # case: (arguments after `features --images DIR --out OUT`, words the one error line must hold)
    "mae checkpoint as swav": (["--backbone", "swav", "--checkpoint", FIXTURES / "mae_tiny32.pt"],
                               ["mae_tiny32.pt", "MAE"]),
    "swav missing a layer": (["--backbone", "swav", "--checkpoint", "{no_layer3}"], ["swav_no_layer3.pt", "layer3"]),
    "heads not dividing": (["--backbone", "mae", "--checkpoint", FIXTURES / "mae_tiny32.pt", "--model-flags",
                            "--num_heads 5"], ["num_heads 5 does not divide the width 64"]),
    "steps for mae": (["--backbone", "mae", "--checkpoint", FIXTURES / "mae_tiny32.pt", "--steps", "50"],
                      ["--steps", "no diffusion steps"]),
    "unknown backbone": (["--backbone", "vit"], ["--backbone 'vit'", "mae"]),
    "unknown cell name": (["--backbone", "swav", "--checkpoint", FIXTURES / "swav_tiny64.pt", "--blocks", "layer9.0"],
                          ["'layer9.0' is not a layer of this model"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_backbone_input(tmp_path, case):
    args, words = BAD[case]
    args = [swav_without_layer3(tmp_path) if a == "{no_layer3}" else a for a in args]
    out = tmp_path / "out"
    result = run_probe("features", "--images", image_dir(tmp_path, SWAV), "--out", out, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
