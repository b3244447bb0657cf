"""`--backbone diffusers` and `--backbone sd` on tiny random diffusers models built here from config dicts and saved
with save_pretrained (the folder loading path users take), including a CLIP tokenizer from vocab files written here.
Cells are checked against diffusers' own forward, run block by block or recorded with hooks in the test."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers  # the diffusers extra, which the test extra installs
import numpy as np
import pytest
import torch
import transformers

from probe.backbones import BackboneSpec, build_backbone
from probe.errors import ProbeError

DDPM_SIZE, SD_SIZE, T_DDPM = 32, 32, 100
PROMPT = "a cat"


def seeded(seed: int, make):
    """`make()` with torch's global generator seeded (diffusers draws initial weights from it), restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def save_ddpm(folder: Path, seed: int = 0, pipeline: bool = False) -> Path:
    """A tiny google/ddpm-ema-like UNet2DModel (3 up blocks x 2 layers, attention at the middle level) with a
    linear-beta DDPMScheduler of T = 100: flat as the hub's ddpm-ema folders, or as a pipeline (unet/, scheduler/)."""
    unet = seeded(seed, lambda: diffusers.UNet2DModel(
        sample_size=DDPM_SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T_DDPM, beta_schedule="linear", beta_start=1e-3,
                                        beta_end=0.05)
    unet.save_pretrained(folder / "unet" if pipeline else folder)
    scheduler.save_pretrained(folder / "scheduler" if pipeline else folder)
    return folder


def write_tokenizer(folder: Path) -> None:
    """CLIP BPE files as the hub's SD tokenizer/ folders hold them: letters, their word-final forms, 'cat'."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    vocab["ca"], vocab["cat</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8, "tokenizer_class": "CLIPTokenizer",
                                                              **special}))


def save_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny Stable Diffusion pipeline folder: conditional UNet (latent 16x16, up blocks UpBlock2D and
    CrossAttnUpBlock2D x 2 layers), a 2-level VAE (image 32x32), a 2-layer CLIP text encoder, the tokenizer above
    and SD's scaled-linear PNDM scheduler."""
    unet = seeded(seed, lambda: diffusers.UNet2DConditionModel(
        sample_size=SD_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2))
    vae = seeded(seed + 1, lambda: diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        sample_size=SD_SIZE))
    write_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    text_encoder = seeded(seed + 2, lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)))
    scheduler = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        skip_prk_steps=True, steps_offset=1)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="session")
def diffusers_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders: `diffusers` (flat UNet2DModel), `pipeline` (unet/ + scheduler/), `sd`."""
    root = tmp_path_factory.mktemp("diffusers_models")
    return {"diffusers": save_ddpm(root / "ddpm"), "pipeline": save_ddpm(root / "ddpm_pipeline", pipeline=True),
            "sd": save_sd(root / "sd")}


def changed_weights(folder: Path, destination: Path) -> Path:
    """A copy of a model folder whose UNet (a transformers folder: its model) has one weight tensor changed by +1."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, destination)
    weights = next(destination.rglob("diffusion_pytorch_model.safetensors"), None) or \
        next(destination.rglob("model.safetensors"))  # a transformers model folder
    state = load_file(weights)
    key = next(k for k, v in state.items() if v.dim() > 1)
    state[key] = state[key] + 1
    save_file(state, weights, metadata={"format": "pt"})
    return destination


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """The scheduler's formula, written out: linear or scaled-linear betas, cumulative product of 1 - beta."""
    start, end = scheduler_config["beta_start"], scheduler_config["beta_end"]
    steps = scheduler_config["num_train_timesteps"]
    if scheduler_config["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float32)
    else:
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


def documented_x_t(x0: torch.Tensor, t: int, seed: int, scheduler_config: dict) -> torch.Tensor:
    """README: shared noise is torch.Generator().manual_seed(seed), randn(1, C, H, W), the same for every image;
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
    noise = torch.randn(1, *x0.shape[1:], generator=torch.Generator().manual_seed(seed))
    a = alphas_cumprod(scheduler_config)[t]
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise


def hand_run_up_layers(unet, x_t: torch.Tensor, t: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """UNet2DModel's forward written out block by block (diffusers' modules, this test's loop): every up-block
    layer's output (resnet j, attention j, upsampler after the last) and the final output."""
    timesteps = torch.full((len(x_t),), t, dtype=torch.long)
    emb = unet.time_embedding(unet.time_proj(timesteps))
    h = unet.conv_in(x_t)
    skips = [h]
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    h = unet.mid_block(h, emb)
    layers = []
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if attentions is not None:
                h = attentions[j](h)
            if j == len(block.resnets) - 1 and block.upsamplers is not None:
                h = block.upsamplers[0](h)
            layers.append(h)
    return layers, unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def hooked_up_layers(unet, run) -> list[torch.Tensor]:
    """Every up-block layer's output, recorded with forward hooks on diffusers' modules during one full forward."""
    record: dict[tuple[int, int], torch.Tensor] = {}
    handles = []
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        for j in range(n):
            module = block.resnets[j]
            if getattr(block, "attentions", None) is not None:
                module = block.attentions[j]
            if j == n - 1 and block.upsamplers is not None:
                module = block.upsamplers[0]
            handles.append(module.register_forward_hook(
                lambda m, a, out, key=(i, j): record.__setitem__(key, out[0] if isinstance(out, tuple) else out)))
    with torch.no_grad():
        run()
    for handle in handles:
        handle.remove()
    return [record[key] for key in sorted(record)]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """The checker's rule: max abs difference <= 1e-4 of the mean absolute value."""
    return got.shape == want.shape and float((got - want).abs().max()) <= 1e-4 * float(want.abs().mean())


def test_diffusers_cells_equal_diffusers_forward_run_block_by_block(diffusers_folders):
    folder = diffusers_folders["diffusers"]
    backbone = build_backbone(BackboneSpec("diffusers", folder, layers="all", steps="3,60"), "features")
    assert backbone.image_size == DDPM_SIZE and backbone.all_layers == [f"block{b}" for b in range(6)]
    assert backbone.layer_map() == {"block0": "up0.0", "block1": "up0.1", "block2": "up1.0", "block3": "up1.1",
                                    "block4": "up2.0", "block5": "up2.1"}
    x0 = images(2, DDPM_SIZE)
    unet = diffusers.UNet2DModel.from_pretrained(folder)  # loaded independently of the backbone
    config = json.loads((folder / "scheduler_config.json").read_text())
    for t in (3, 60):
        maps = backbone(x0, ["a", "b"], t)
        x_t = documented_x_t(x0, t, 0, config)
        assert torch.allclose(backbone.x_t(x0, backbone.noise.noises(["a", "b"], (3, 32, 32))[0], t), x_t,
                              atol=1e-6)
        with torch.no_grad():
            layers, output = hand_run_up_layers(unet, x_t, t)
            assert torch.allclose(output, unet(x_t, t).sample, atol=1e-5)  # the hand run is diffusers' forward
        assert sorted(maps) == sorted(f"t{t}_block{b}" for b in range(6))
        for b, want in enumerate(layers):
            assert close(maps[f"t{t}_block{b}"], want), (t, b)
        # up0.1 ends with the upsampler: 8 -> 16
        assert [maps[f"t{t}_block{b}"].shape[-1] for b in range(6)] == [8, 16, 16, 32, 32, 32]


def test_default_cells_scale_with_depth_and_T(diffusers_folders):
    segment = build_backbone(BackboneSpec("diffusers", diffusers_folders["pipeline"]), "segment")
    # blocks {5,6,7,8,12} of 18 at the same relative depth of 6: round(b * 5 / 17); steps {50,150,250} of 1000 -> T
    assert segment.layers == ["block1", "block2", "block4"] and segment.steps == [5, 15, 25]
    named = build_backbone(BackboneSpec("diffusers", diffusers_folders["pipeline"], layers="up1.0,5", steps="7"),
                           "features")
    assert named.names == ["t7_block2", "t7_block5"]
    with pytest.raises(ProbeError, match="steps 100 is out of range: this model has steps 0..99"):
        build_backbone(BackboneSpec("diffusers", diffusers_folders["pipeline"], steps="100"), "features")


def test_noise_policies_are_the_toolkit_s(diffusers_folders):
    folder = diffusers_folders["diffusers"]
    x0 = images(2, DDPM_SIZE, seed=1)
    unet = diffusers.UNet2DModel.from_pretrained(folder)
    config = json.loads((folder / "scheduler_config.json").read_text())
    a = alphas_cumprod(config)[20]

    def block3(x_t):
        return hooked_up_layers(unet, lambda: unet(x_t, 20))[3]

    mean = build_backbone(BackboneSpec("diffusers", folder, layers="3", steps="20", noise="mean-of-2", seed=4),
                          "features")(x0, ["a", "b"], 20)["t20_block3"]
    draws = torch.Generator().manual_seed(4)
    noises = [torch.randn(1, 3, DDPM_SIZE, DDPM_SIZE, generator=draws) for _ in range(2)]
    want = sum(block3(a ** 0.5 * x0 + (1 - a) ** 0.5 * n) for n in noises) / 2
    assert close(mean, want)
    per_image = build_backbone(BackboneSpec("diffusers", folder, layers="3", steps="20", noise="per-image"),
                               "features")
    both = per_image(x0, ["a", "b"], 20)["t20_block3"]
    alone = per_image(x0[1:], ["b"], 20)["t20_block3"]
    assert torch.allclose(both[1:], alone, atol=1e-5)  # an image's noise depends on its name, not its batch
    assert not torch.allclose(both[0], per_image(x0[:1], ["b"], 20)["t20_block3"][0], atol=1e-3)
    with pytest.raises(ProbeError, match="DDIM inversion is only for --backbone ddpm"):
        build_backbone(BackboneSpec("diffusers", folder, noise="ddim-inversion"), "features")


def test_input_activations_are_the_resnet_inputs(diffusers_folders):
    folder = diffusers_folders["diffusers"]
    backbone = build_backbone(BackboneSpec("diffusers", folder, layers="2", steps="9", input_activations=True),
                              "features")
    x0 = images(1, DDPM_SIZE)
    unet = diffusers.UNet2DModel.from_pretrained(folder)
    record = {}
    handle = unet.up_blocks[1].resnets[0].register_forward_pre_hook(lambda m, args: record.__setitem__("in", args[0]))
    with torch.no_grad():
        unet(documented_x_t(x0, 9, 0, json.loads((folder / "scheduler_config.json").read_text())), 9)
    handle.remove()
    got = backbone(x0, ["a"], 9)["t9_block2"]
    assert got.shape[1] == 16 + 16 and close(got, record["in"])  # the hidden state and its skip, concatenated


def sd_reference(folder: Path, x0: torch.Tensor, t: int, prompt: str) -> list[torch.Tensor]:
    """The SD pipeline's steps written out with diffusers' and transformers' own classes: latents = VAE mean x
    scaling factor, x_t by the scheduler's formula, text = CLIP's last hidden state, layers hooked."""
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        ids = tokenizer(prompt, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
        text = encoder(ids).last_hidden_state
        latents = vae.encode(x0).latent_dist.mean * 0.18215
    x_t = documented_x_t(latents, t, 0, json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
    return hooked_up_layers(unet, lambda: unet(x_t, t, encoder_hidden_states=text.expand(len(x0), -1, -1)))


def test_sd_cells_equal_the_pipeline_s_steps(diffusers_folders):
    folder = diffusers_folders["sd"]
    backbone = build_backbone(BackboneSpec("sd", folder, layers="all", steps="500", prompt=PROMPT), "features")
    assert backbone.image_size == SD_SIZE and backbone.layer_map() == {
        "block0": "up0.0", "block1": "up0.1", "block2": "up1.0", "block3": "up1.1"}
    x0 = images(2, SD_SIZE)
    maps = backbone(x0, ["a", "b"], 500)
    reference = sd_reference(folder, x0, 500, PROMPT)
    for b, want in enumerate(reference):
        assert close(maps[f"t500_block{b}"], want), b
    assert maps["t500_block3"].shape[-1] == SD_SIZE // 2  # latent resolution
    empty = build_backbone(BackboneSpec("sd", folder, layers="all", steps="500"), "features")
    assert empty.identity["prompt"] == "" and backbone.identity["prompt"] == PROMPT
    for b, want in enumerate(sd_reference(folder, x0, 500, "")):
        assert close(empty(x0, ["a", "b"], 500)[f"t500_block{b}"], want), b


def test_identity_follows_weights_and_config_not_the_folder_s_place(diffusers_folders, tmp_path):
    for kind, folder in (("diffusers", diffusers_folders["diffusers"]), ("sd", diffusers_folders["sd"])):
        first = build_backbone(BackboneSpec(kind, folder), "segment").identity
        moved = shutil.copytree(folder, tmp_path / f"{kind}_moved")
        assert build_backbone(BackboneSpec(kind, moved), "segment").identity == first
        changed = changed_weights(folder, tmp_path / f"{kind}_changed")
        assert build_backbone(BackboneSpec(kind, changed), "segment").identity["checkpoint"] != first["checkpoint"]
    config = shutil.copytree(diffusers_folders["diffusers"], tmp_path / "ddpm_scheduler")
    scheduler = json.loads((config / "scheduler_config.json").read_text())
    (config / "scheduler_config.json").write_text(json.dumps({**scheduler, "beta_end": 0.02}))
    first = build_backbone(BackboneSpec("diffusers", diffusers_folders["diffusers"]), "segment").identity
    assert build_backbone(BackboneSpec("diffusers", config), "segment").identity["checkpoint"] != first["checkpoint"]
    assert build_backbone(BackboneSpec("sd", diffusers_folders["sd"], prompt="a cat"), "segment").identity != \
        build_backbone(BackboneSpec("sd", diffusers_folders["sd"]), "segment").identity


def test_prompt_round_trips_and_other_backbones_refuse_it(diffusers_folders):
    spec = BackboneSpec("sd", diffusers_folders["sd"], prompt="a cat")
    again = BackboneSpec(**json.loads(json.dumps(spec.to_dict())))
    assert again.prompt == "a cat" and again.to_dict() == spec.to_dict()
    for kind in ("diffusers", "ddpm", "pixels"):
        checkpoint = diffusers_folders["diffusers"] if kind == "diffusers" else None
        with pytest.raises(ProbeError, match=f"--prompt: the {kind} backbone takes no text prompt"):
            build_backbone(BackboneSpec(kind, checkpoint, prompt="a cat"), "segment")


def test_without_the_extra_the_backbone_says_how_to_install(diffusers_folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    for kind in ("diffusers", "sd"):
        with pytest.raises(ProbeError) as error:
            build_backbone(BackboneSpec(kind, diffusers_folders[kind]), "segment")
        assert str(error.value) == (f'--backbone {kind} needs diffusers, which is not installed: '
                                    'pip install -e ".[diffusers]"')


def run_probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True, timeout=300)


def write_images(folder: Path, n: int, size: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_probe_features_equals_hooked_diffusers_modules(diffusers_folders, tmp_path):
    folder = diffusers_folders["pipeline"]
    out = tmp_path / "feats"
    result = run_probe("features", "--backbone", "diffusers", "--checkpoint", folder, "--images",
                       write_images(tmp_path / "imgs", 1, DDPM_SIZE), "--steps", "10,80", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    exported = np.load(out / "im0.npz")
    assert sorted(exported.files) == sorted(f"t{t}_block{b}" for t in (10, 80) for b in range(6))
    from probe.data.layout import load_images

    x0 = torch.from_numpy(load_images(tmp_path / "imgs", DDPM_SIZE)[0].image[None])
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for t in (10, 80):
        x_t = documented_x_t(x0, t, 0, config)
        for b, want in enumerate(hooked_up_layers(unet, lambda: unet(x_t, t))):
            assert close(torch.from_numpy(exported[f"t{t}_block{b}"][None]), want), (t, b)


BAD = {
    # case: (arguments after `features --images DIR --out OUT`, words the one error line must hold)
    "no config.json": (["--backbone", "diffusers", "--checkpoint", "{empty}"], ["empty/config.json not found",
                                                                                "UNet2DModel folder"]),
    "conditional unet as diffusers": (["--backbone", "diffusers", "--checkpoint", "{sd}/unet"],
                                      ["unet/config.json is a UNet2DConditionModel", "use --backbone sd"]),
    "sd without text encoder": (["--backbone", "sd", "--checkpoint", "{sd_no_text}"],
                                ["text_encoder/config.json not found", "text_encoder/"]),
    "ddpm folder as sd": (["--backbone", "sd", "--checkpoint", "{ddpm_pipeline}"],
                          ["describes a UNet2DModel", "use --backbone diffusers"]),
    "prompt for diffusers": (["--backbone", "diffusers", "--checkpoint", "{ddpm_pipeline}", "--prompt", "a cat"],
                             ["--prompt: the diffusers backbone takes no text prompt"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(diffusers_folders, tmp_path, case):
    (tmp_path / "empty").mkdir()
    no_text = shutil.copytree(diffusers_folders["sd"], tmp_path / "sd_no_text")
    shutil.rmtree(no_text / "text_encoder")
    places = {"{empty}": str(tmp_path / "empty"), "{sd}": str(diffusers_folders["sd"]), "{sd_no_text}": str(no_text),
              "{ddpm_pipeline}": str(diffusers_folders["pipeline"])}
    args, words = BAD[case]
    args = [next((a.replace(k, v) for k, v in places.items() if k in a), a) for a in args]
    out = tmp_path / "out"
    result = run_probe("features", "--images", write_images(tmp_path / "imgs", 1, 8), "--out", out, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_sd_segment_then_predict_with_a_prompt(diffusers_folders, tiny_domain, tmp_path):
    out = tmp_path / "seg"
    result = run_probe("segment", "--backbone", "sd", "--checkpoint", diffusers_folders["sd"], "--prompt", PROMPT,
                       "--data", tiny_domain, "--members", 2, "--threads", 1, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "ensemble" / "manifest.json").read_text())
    assert manifest["backbone"]["prompt"] == PROMPT and manifest["identity"]["prompt"] == PROMPT
    assert manifest["resolution"] == SD_SIZE  # blocks {5,6,7,8,12} of 18 scaled to 4: {1, 2}
    assert manifest["feature_names"] == [f"t{t}_block{b}" for t in (50, 150, 250) for b in (1, 2)]
    predicted = tmp_path / "pred"
    result = run_probe("predict", "--ensemble", out / "ensemble", "--images", tiny_domain / "real" / "test", "--out",
                       predicted, "--threads", 1, "--quiet")
    assert result.returncode == 0, result.stderr
    for path in sorted((out / "predictions").glob("*.npy")):  # the same features rebuilt from the manifest
        assert np.array_equal(np.load(path), np.load(predicted / "predictions" / path.name)), path.name


@pytest.mark.slow
def test_diffusers_grid_and_kmeans(diffusers_folders, tiny_domain, tmp_path):
    grid = tmp_path / "grid"
    result = run_probe("grid", "--backbone", "diffusers", "--checkpoint", diffusers_folders["diffusers"], "--data",
                       tiny_domain, "--blocks", "1,4", "--steps", "5,50", "--threads", 1, "--out", grid, "--quiet")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(grid / "grid.csv")
    assert len(table) > 0 and set(table["step"]) == {5, 50}
    kmeans = tmp_path / "kmeans"
    result = run_probe("kmeans", "--backbone", "diffusers", "--checkpoint", diffusers_folders["diffusers"], "--data",
                       tiny_domain, "--blocks", "up0.1,up2.1", "--steps", "5", "--threads", 1, "--out", kmeans,
                       "--quiet")
    assert result.returncode == 0, result.stderr
    assert (kmeans / "kmeans.png").is_file()


OTHER_UNETS = {  # UNet2DModel variants with other up blocks: resnet upsamplers and scale-shift norms; score-SDE skips
    "resnet upsampler": dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D"), upsample_type="resnet",
                             downsample_type="resnet", resnet_time_scale_shift="scale_shift", layers_per_block=2),
    "skip blocks": dict(block_out_channels=(32, 64), down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), time_embedding_type="fourier",
                        layers_per_block=1),
}


@pytest.mark.parametrize("variant", sorted(OTHER_UNETS))
def test_each_layer_output_is_what_the_next_layer_takes(tmp_path, variant):
    """For any supported up block: layer k's output is the hidden-state part of the input of the resnet that
    follows it (its skip concatenated after it), the last layer's is the input of conv_norm_out."""
    unet = seeded(0, lambda: diffusers.UNet2DModel(sample_size=16, norm_num_groups=4, attention_head_dim=4,
                                                    **OTHER_UNETS[variant]))
    unet.save_pretrained(tmp_path / "model")
    diffusers.DDPMScheduler(num_train_timesteps=50).save_pretrained(tmp_path / "model")
    backbone = build_backbone(BackboneSpec("diffusers", tmp_path / "model", layers="all", steps="20"), "features")
    x0 = images(1, 16)
    maps = backbone(x0, ["a"], 20)
    inputs = []
    modules = [r for block in unet.up_blocks for r in block.resnets] + [unet.conv_norm_out]
    handles = [m.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for m in modules]
    with torch.no_grad():
        unet(documented_x_t(x0, 20, 0, json.loads((tmp_path / "model" / "scheduler_config.json").read_text())), 20)
    for handle in handles:
        handle.remove()
    assert len(maps) == len(inputs) - 1 == len(backbone.all_layers)
    for b in range(len(maps)):
        got = maps[f"t20_block{b}"]
        assert close(got, inputs[b + 1][:, :got.shape[1]]), b
