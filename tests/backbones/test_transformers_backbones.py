"""`--backbone transformers` on tiny random models of every supported class, built with transformers' own classes,
saved with save_pretrained (safetensors) beside a preprocessor_config.json (the image processor's own save where
one runs without torchvision, by hand otherwise), and checked against the model's own `output_hidden_states` on
the image processor's own pixel values; then the options, the refusals, the hub, the commands and `probe layers`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from typer.testing import CliRunner

from test_hub import cache_repo, folder_files, hub_cache  # noqa: F401 (a fixture): an offline hub cache in tmp

from probe.backbones import BackboneSpec, build_backbone
from probe.data.hub import IGNORE, PATTERNS
from probe.data.layout import load_images
from probe.errors import ProbeError

SIZE = 32
MEAN, STD = [0.42, 0.51, 0.38], [0.21, 0.27, 0.24]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64,
            max_position_embeddings=16)


def vision(layers: int = 2, patch: int = 8, **extra) -> dict:
    return dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                image_size=SIZE, patch_size=patch, **extra)


def by_hand(folder: Path, **entries) -> None:
    """A preprocessor_config.json written as the hub's hold them (for processors that need torchvision)."""
    config = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": MEAN, "image_std": STD, **entries}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))


def siglip2_vision() -> dict:
    config = vision(num_patches=16)
    del config["image_size"]
    return config


# name: (the model, how its preprocessor is written, prefix tokens before the patches, the vision module to call)
T = transformers
MODELS = {
    "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**vision(3, 4))),
               lambda f: T.BitImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                                image_mean=MEAN, image_std=STD).save_pretrained(f), 1),
    "dinov2_registers": (lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
                             **vision(num_register_tokens=2))),
                         lambda f: by_hand(f, size={"shortest_edge": SIZE}, do_center_crop=True,
                                           crop_size={"height": SIZE, "width": SIZE}), 3),
    "dinov3": (lambda: T.DINOv3ViTModel(T.DINOv3ViTConfig(**vision(4, num_register_tokens=4))),
               lambda f: by_hand(f, size={"height": SIZE, "width": SIZE}), 5),
    "clip_vision": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**vision())),
                    lambda f: T.CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size=SIZE, image_mean=MEAN,
                                                      image_std=STD).save_pretrained(f), 1),
    "clip": (lambda: T.CLIPModel(T.CLIPConfig(vision_config=vision(3), text_config=TEXT, projection_dim=16)),
             lambda f: T.CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size=SIZE).save_pretrained(f), 1),
    "siglip_vision": (lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**vision())),
                      lambda f: T.SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=MEAN,
                                                          image_std=STD).save_pretrained(f), 0),
    "siglip": (lambda: T.SiglipModel(T.SiglipConfig(vision_config=vision(), text_config=TEXT)),
               lambda f: T.SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(f), 0),
    "siglip2_vision": (lambda: T.Siglip2VisionModel(T.Siglip2VisionConfig(**siglip2_vision())),
                       lambda f: T.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16, image_mean=MEAN,
                                                            image_std=STD).save_pretrained(f), 0),
    "siglip2": (lambda: T.Siglip2Model(T.Siglip2Config(vision_config=siglip2_vision(), text_config=TEXT)),
                lambda f: T.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16).save_pretrained(f), 0),
    "vit_mae": (lambda: T.ViTMAEModel(T.ViTMAEConfig(**vision(), mask_ratio=0.75)),  # the hub's ratio: probe uses 0
                lambda f: T.ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=MEAN,
                                                 image_std=STD).save_pretrained(f), 1),
    "vit": (lambda: T.ViTModel(T.ViTConfig(**vision()), add_pooling_layer=False), None, 1),  # no preprocessor config
    # checkpoints with heads: their encoders
    "vit_mae_pretraining": (lambda: T.ViTMAEForPreTraining(T.ViTMAEConfig(
        **vision(), decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64)), lambda f: T.ViTImageProcessorPil(size={"height": SIZE, "width": SIZE})
                            .save_pretrained(f), 1),
    "dinov2_classifier": (lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**vision(), num_labels=3)),
                          lambda f: by_hand(f, size={"height": SIZE, "width": SIZE}), 1),
}
TOWERS = {"clip": "vision_model", "siglip": "vision_model", "siglip2": "vision_model", "vit_mae_pretraining": "vit",
          "dinov2_classifier": "dinov2"}  # the module of a full model or a model with a head that probe runs
CLASSES = {"dinov2": "Dinov2Model", "dinov2_registers": "Dinov2WithRegistersModel", "dinov3": "DINOv3ViTModel",
           "clip_vision": "CLIPVisionModel", "clip": "CLIPVisionModel", "siglip_vision": "SiglipVisionModel",
           "siglip": "SiglipVisionModel", "siglip2_vision": "Siglip2VisionModel", "siglip2": "Siglip2VisionModel",
           "vit_mae": "ViTMAEModel", "vit": "ViTModel", "vit_mae_pretraining": "ViTMAEModel",
           "dinov2_classifier": "Dinov2Model"}


def save_model(folder: Path, name: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    make, preprocessor, _ = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make().eval()
    model.save_pretrained(folder, safe_serialization=True)
    if preprocessor is not None:
        preprocessor(folder)
    return folder, model


@pytest.fixture(scope="session")
def transformers_models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Every supported class: (its save_pretrained folder, the model object that was saved)."""
    transformers.utils.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("transformers_models")
    return {name: save_model(root / name, name) for name in MODELS}


@pytest.fixture(scope="session")
def transformers_folders(transformers_models) -> dict[str, Path]:
    return {name: folder for name, (folder, _) in transformers_models.items()}


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def processor_inputs(folder: Path, pictures: Path, size: int = SIZE) -> dict:
    """The model's inputs as its own image processor makes them from the image files; by hand (the documented
    rule, the preprocessor's or ImageNet's mean and std of x / 255) where the processor needs torchvision."""
    files = sorted(pictures.glob("*.png"))
    config = folder / "preprocessor_config.json"
    kind = json.loads(config.read_text()).get("image_processor_type") if config.is_file() else None
    if kind and size == SIZE:
        processor = getattr(transformers, kind.removesuffix("Fast") + "Pil").from_pretrained(folder)
        images = [Image.open(f).convert("RGB") for f in files]
        inputs = dict(processor(images=images, return_tensors="pt"))
        return {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
    mean, std = (MEAN, STD) if config.is_file() else IMAGENET
    unit = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR),
                                                 dtype=np.float32) / 255 for f in files])).permute(0, 3, 1, 2)
    return {"pixel_values": (unit - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)}


def own_hidden_states(name: str, model, inputs: dict, **extra) -> list[torch.Tensor]:
    """The model's own output_hidden_states[b + 1] for every layer b, patch tokens only, as (B, C, h, w)."""
    tower = getattr(model, TOWERS[name]) if name in TOWERS else model
    if name.startswith("vit_mae"):
        tower.config.mask_ratio = 0.0  # as probe runs it: every patch kept, in order (noise = arange)
        grid = inputs["pixel_values"].shape[-1] // tower.config.patch_size
        extra["noise"] = torch.arange(grid * grid, dtype=torch.float32).expand(len(inputs["pixel_values"]), -1)
    with torch.no_grad():
        out = tower(**inputs, **extra, output_hidden_states=True)
    if name.startswith("vit_mae"):
        assert out.mask.sum() == 0 and torch.equal(out.ids_restore[0], torch.arange(out.ids_restore.shape[1]))
    prefix = MODELS[name][2]
    states = []
    for hidden in out.hidden_states[1:]:
        patches = hidden[:, prefix:]
        side = int(round(patches.shape[1] ** 0.5))
        states.append(patches.transpose(1, 2).reshape(len(hidden), -1, side, side))
    return states


def probe_maps(folder: Path, pictures: Path, **spec) -> tuple[dict[str, torch.Tensor], object]:
    backbone = build_backbone(BackboneSpec("transformers", folder, layers="all", **spec), "features")
    images = load_images(pictures, backbone.image_size)
    maps = backbone(torch.from_numpy(np.stack([im.image for im in images])), [im.stem for im in images])
    return maps, backbone


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cells_equal_the_model_s_own_hidden_states(transformers_models, pictures, name):
    folder, model = transformers_models[name]
    maps, backbone = probe_maps(folder, pictures)
    assert backbone.identity["class"] == CLASSES[name] and backbone.image_size == SIZE
    inputs = processor_inputs(folder, pictures)
    if "pixel_attention_mask" not in inputs:  # the same normalised input as the processor's
        torch.testing.assert_close(backbone.pixel_values(torch.from_numpy(np.stack(
            [im.image for im in load_images(pictures, SIZE)]))), inputs["pixel_values"], rtol=0, atol=1e-6)
    want = own_hidden_states(name, model, inputs)
    assert sorted(maps) == [f"block{b}" for b in range(len(want))]
    for b, reference in enumerate(want):
        got = maps[f"block{b}"]
        assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == reference.shape, name
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


runner = CliRunner()


def cli(*args):
    """The command in this process (its torch and its loaded models reused)."""
    from probe.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_probe(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_probe_features_command_equals_the_model_s_hidden_states(transformers_models, pictures, tmp_path):
    folder, model = transformers_models["dinov2"]
    out = tmp_path / "feats"
    result = run_probe("features", "--backbone", "transformers", "--checkpoint", folder, "--images", pictures,
                       "--blocks", "all", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    want = own_hidden_states("dinov2", model, processor_inputs(folder, pictures))
    for i in range(2):
        exported = np.load(out / f"im{i}.npz")
        assert sorted(exported.files) == ["block0", "block1", "block2"]
        for b, reference in enumerate(want):
            assert exported[f"block{b}"].dtype == np.float32
            np.testing.assert_allclose(exported[f"block{b}"], reference[i].numpy(), rtol=0, atol=1e-5)



def test_an_unsupported_class_is_one_line_and_exit_2(pictures, tmp_path):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    result = cli("features", "--backbone", "transformers", "--checkpoint", other, "--images", pictures,
                 "--out", tmp_path / "no")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "BertModel" in lines[0] and "model_type 'bert'" in lines[0]
    assert "Dinov2Model" in lines[0] and "ViTMAEModel" in lines[0] and "SiglipModel" in lines[0]
    assert not (tmp_path / "no").exists()


def test_image_size_interpolates_where_the_class_does(transformers_models, pictures):
    for name, size in (("dinov2", 48), ("clip_vision", 48), ("dinov3", 40), ("vit_mae", 48)):
        folder, model = transformers_models[name]
        maps, backbone = probe_maps(folder, pictures, image_size=size)
        assert backbone.image_size == size and backbone.identity["image_size"] == size
        inputs = processor_inputs(folder, pictures, size)
        extra = {"interpolate_pos_encoding": True} if name in ("clip_vision", "vit_mae") else {}
        want = own_hidden_states(name, model, inputs, **extra)
        grid = size // model.config.patch_size
        for b, reference in enumerate(want):
            assert maps[f"block{b}"].shape[-2:] == (grid, grid)
            torch.testing.assert_close(maps[f"block{b}"], reference, rtol=0, atol=1e-5)
    siglip2, _ = probe_maps(transformers_models["siglip2_vision"][0], pictures, image_size=48)
    assert siglip2["block1"].shape == (2, 32, 6, 6)
    with pytest.raises(ProbeError, match="--image-size 30 is not a multiple of the patch size 8; give e.g. 32"):
        probe_maps(transformers_models["clip_vision"][0], pictures, image_size=30)


def test_options_refused_in_one_line(transformers_folders, pictures, tmp_path):
    folder = transformers_folders["dinov2_registers"]
    cases = [(dict(steps="50"), "--steps: the transformers backbone has no diffusion steps"),
             (dict(layers="5"), r"--blocks 5 is out of range: this model has blocks 0\.\.1"),
             (dict(model_dtype="float64"), "--model-dtype 'float64': use float32, bfloat16, float16"),
             (dict(noise="per-image"), "--noise")]
    for options, message in cases:
        with pytest.raises(ProbeError, match=message):
            build_backbone(BackboneSpec("transformers", folder, **options), "segment")
    with pytest.raises(ProbeError, match="--model-dtype: the mae backbone computes in float32"):
        build_backbone(BackboneSpec("mae", model_dtype="bfloat16"), "segment")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights)
    with pytest.raises(ProbeError, match="model.safetensors not found"):
        build_backbone(BackboneSpec("transformers", no_weights), "segment")
    wrong = tmp_path / "wrong"  # a config that does not match its weights
    shutil.copytree(folder, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ProbeError, match="lack or mis-shape .* tensors Dinov2WithRegistersModel needs"):
        build_backbone(BackboneSpec("transformers", wrong), "segment")
    backbone = build_backbone(BackboneSpec("transformers", folder), "segment")
    with pytest.raises(ProbeError, match="load them at that size"):
        backbone(torch.zeros(1, 3, 16, 16), ["a"])


def test_identity_follows_files_size_and_dtype_not_the_folder_s_place(transformers_folders, pictures, tmp_path):
    folder = transformers_folders["siglip_vision"]
    maps, backbone = probe_maps(folder, pictures)
    assert set(backbone.identity) == {"backbone", "version", "class", "checkpoint", "image_size", "dtype"}
    assert backbone.identity["dtype"] == "float32"
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert build_backbone(BackboneSpec("transformers", moved), "segment").identity == backbone.identity
    (moved / "preprocessor_config.json").write_text(
        (moved / "preprocessor_config.json").read_text().replace("0.42", "0.43"))
    assert build_backbone(BackboneSpec("transformers", moved), "segment").identity["checkpoint"] != \
        backbone.identity["checkpoint"]
    half, low = probe_maps(folder, pictures, model_dtype="bfloat16")
    assert low.identity == {**backbone.identity, "dtype": "bfloat16"}
    assert next(low.model.parameters()).dtype == torch.bfloat16
    for name, array in half.items():
        assert array.dtype == torch.float32 and array.device.type == "cpu"
        assert (array - maps[name]).abs().max() < 0.1 * maps[name].abs().max() + 0.05, name
    assert BackboneSpec.from_dict(BackboneSpec("transformers", folder, model_dtype="bfloat16").to_dict()) \
        .model_dtype == "bfloat16"
    assert "model_dtype" not in BackboneSpec("ddpm").to_dict()  # the other backbones' specs (and cell keys) stay


def test_default_cells_per_purpose(transformers_folders):
    folder = transformers_folders["dinov3"]  # 4 layers
    cells = {purpose: build_backbone(BackboneSpec("transformers", folder), purpose).names
             for purpose in ("segment", "features", "grid", "kmeans")}
    every = [f"block{b}" for b in range(4)]
    assert cells == {"segment": every, "features": every, "grid": every, "kmeans": ["block1", "block2", "block3"]}
    assert build_backbone(BackboneSpec("transformers", folder, layers="0,2-3"), "segment").names == \
        ["block0", "block2", "block3"]


def test_hub_name_resolves_to_the_files_the_backbone_reads(transformers_folders, hub_cache):  # noqa: F811
    from probe.data.sources import backbone_spec

    folder = transformers_folders["clip"]
    extras = ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.fp16.safetensors", "README.md",
              "tokenizer.json", "vocab.json", "special_tokens_map.json", "onnx/model.onnx"]
    repo = {**folder_files(folder), **{path: b"not read" for path in extras}}
    assert set(filter_repo_objects(sorted(repo), allow_patterns=PATTERNS["transformers"], ignore_patterns=IGNORE)) \
        == {"config.json", "model.safetensors", "preprocessor_config.json"}
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "preprocessor_config.json"]
    assert list(filter_repo_objects(sharded + ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"],
                                    allow_patterns=PATTERNS["transformers"], ignore_patterns=IGNORE)) == sharded

    snapshot = cache_repo(hub_cache, "org/tiny-clip", repo)
    spec = backbone_spec(None, BackboneSpec("transformers", Path("org/tiny-clip")), progress=False)
    assert spec.checkpoint == snapshot
    assert build_backbone(spec, "features").identity == \
        build_backbone(BackboneSpec("transformers", folder), "features").identity


def test_segment_predict_grid_and_kmeans_commands(transformers_folders, tiny_domain, tmp_path):
    folder = transformers_folders["dinov2"]
    common = ["--data", tiny_domain, "--backbone", "transformers", "--checkpoint", folder, "--threads", "1", "--quiet"]
    result = cli("segment", *common, "--model-dtype", "bfloat16", "--train-number", 1, "--test-number", 1,
                 "--members", 2, "--out", tmp_path / "seg")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "seg" / "ensemble" / "manifest.json").read_text())
    assert manifest["identity"]["dtype"] == "bfloat16" and manifest["backbone"]["model_dtype"] == "bfloat16"
    result = cli("predict", "--ensemble", tmp_path / "seg" / "ensemble", "--images", tiny_domain / "real" / "test",
                 "--out", tmp_path / "pred", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    result = cli("grid", *common, "--blocks", "0,2", "--train-number", 1, "--test-number", 1,
                 "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "grid" / "grid.csv")
    assert sorted(table.layer.unique()) == ["block0", "block2"] and table.step.isna().all()
    result = cli("kmeans", *common, "--n-images", 1, "--out", tmp_path / "kmeans")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kmeans" / "kmeans.png").is_file()


def test_layers_across_ddpm_mae_and_a_transformers_model(transformers_folders, tmp_path):
    """On the embedded default with the shipped DDPM and MAE and a tiny DINOv2 (3 layers), at relative depths 0, 0.5
    and 1 (all of the DINOv2's layers): every backbone's rows are its own grid cells' mIoU (the transformers one
    checked against `probe grid`), the best step is the best."""
    folder = transformers_folders["dinov2"]
    out = tmp_path / "layers"
    options = ["--train-number", 1, "--test-number", 1, "--threads", 1, "--quiet"]
    result = cli("layers", "--backbones", f"ddpm,mae,transformers={folder}", "--steps", "0,200", "--depths",
                 "0,0.5,1", *options, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "layers.png").stat().st_size > 0
    cells = pd.read_csv(out / "layers_cells.csv")
    best = pd.read_csv(out / "layers.csv")
    label = "transformers:dinov2"
    assert list(dict.fromkeys(best.backbone)) == ["ddpm", "mae", label]
    assert best.groupby("backbone").layer.apply(list).to_dict() == {  # index round(depth x (layers - 1))
        "ddpm": ["block0", "block8", "block17"], "mae": ["block0", "block6", "block11"],
        label: ["block0", "block1", "block2"]}
    assert len(cells) == 3 * 2 + 3 + 3 and sorted(cells[cells.backbone == "ddpm"].step.unique()) == [0, 200]
    assert best.relative_depth.between(0, 1).all()
    for name, rows in best.groupby("backbone"):
        assert rows.relative_depth.min() == 0 and rows.relative_depth.max() == 1
        assert np.allclose(rows.relative_depth, rows.layer_index / (rows.layers - 1))
    # the best step of each ddpm layer, and every value from its cell's record (the mean of its classes' IoU)
    for row in best[best.backbone == "ddpm"].itertuples():
        steps = cells[(cells.backbone == "ddpm") & (cells.layer == row.layer)]
        assert row.miou == steps.miou.max() and row.step == steps[steps.miou == steps.miou.max()].step.min()
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == len(cells)
    for record in records:
        config = record["config"]
        kind = config["backbone"]["kind"]
        row = cells[(cells.kind == kind) & (cells.layer == config["layer"]) &
                    ((cells.step == config["step"]) if config["step"] is not None else cells.step.isna())]
        assert len(row) == 1
        assert row.miou.iloc[0] == pytest.approx(np.mean(list(record["result"]["per_class"].values())), abs=1e-9)
    # the transformers backbone's rows are what probe grid gives for it (the same cells, the same keys)
    result = cli("grid", "--backbone", "transformers", "--checkpoint", folder, *options, "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    grid = pd.read_csv(tmp_path / "grid" / "grid.csv")
    grid = grid[grid.group == "all"].set_index("layer").miou
    mine = best[best.backbone == label].set_index("layer").miou
    assert mine.to_dict() == pytest.approx(grid.to_dict(), abs=1e-9)
    assert {p.name for p in (tmp_path / "grid" / "cells").iterdir()} <= {p.name for p in (out / "cells").iterdir()}
