"""SDXL (`--backbone sd`) and the diffusion transformers (`dit`, `pixart`, `sd3`, `flux`) on tiny random pipelines
built here with diffusers' and transformers' own classes and saved with the pipeline's own save_pretrained
(safetensors, model_index.json). The references run the pipeline's own encode_prompt, the VAE and the denoiser with
forward hooks on its blocks; probe's cells must equal them to 1e-5 at float32."""

import json
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers
from test_diffusers import images, seeded, write_images, write_tokenizer
from typer.testing import CliRunner

from probe.backbones import BackboneSpec, build_backbone

SIZE, PROMPT = 32, "a cat"  # 32 x 32 images, 2-level VAEs: 16 x 16 latents


def clip_tokenizer(folder: Path):
    write_tokenizer(folder)
    return transformers.CLIPTokenizer.from_pretrained(folder)


def t5_tokenizer():
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "▁abcdefghijklmnopqrstuvwxyz"] + \
        [("▁cat", -0.5)]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def clip_encoder(seed: int, vocab: int, projection: bool, hidden: int = 16):
    config = transformers.CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=8,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16)
    model_class = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return seeded(seed, lambda: model_class(config))


def t5_encoder(seed: int, width: int):
    return seeded(seed, lambda: transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=31, d_model=width, d_ff=32, d_kv=8, num_layers=1, num_heads=2)))


def vae(seed: int, **extra):
    return seeded(seed, lambda: diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        sample_size=SIZE, **extra))


def ddpm_scheduler():
    return diffusers.DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def save(pipeline, folder: Path) -> Path:
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def save_sdxl(folder: Path) -> Path:
    tokenizer = clip_tokenizer(folder / "_tok")
    vocab = len(tokenizer)
    unet = seeded(0, lambda: diffusers.UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 16, transformer_layers_per_block=1))
    return save(diffusers.StableDiffusionXLPipeline(
        vae=vae(1, scaling_factor=0.13025), text_encoder=clip_encoder(2, vocab, False), tokenizer=tokenizer,
        text_encoder_2=clip_encoder(3, vocab, True), tokenizer_2=tokenizer, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                   beta_end=0.012)), folder)


def save_dit(folder: Path) -> Path:
    transformer = seeded(0, lambda: diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3, norm_num_groups=4,
        sample_size=SIZE // 2, patch_size=2, num_embeds_ada_norm=10))
    return save(diffusers.DiTPipeline(transformer=transformer, vae=vae(1), scheduler=ddpm_scheduler()), folder)


def save_pixart(folder: Path, sigma: bool = False) -> Path:
    transformer = seeded(0, lambda: diffusers.PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3, norm_num_groups=4,
        cross_attention_dim=24, sample_size=SIZE // 2, patch_size=2, caption_channels=16,
        use_additional_conditions=True))
    pipeline = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    return save(pipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(2, 16), vae=vae(1),
                         transformer=transformer, scheduler=ddpm_scheduler()), folder)


def save_sd3(folder: Path) -> Path:
    tokenizer = clip_tokenizer(folder / "_tok")
    vocab = len(tokenizer)
    transformer = seeded(0, lambda: diffusers.SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm"))
    return save(diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(1, shift_factor=0.0609, scaling_factor=1.5305), text_encoder=clip_encoder(2, vocab, True),
        tokenizer=tokenizer, text_encoder_2=clip_encoder(3, vocab, True), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(4, 32), tokenizer_3=t5_tokenizer()), folder)


def save_flux(folder: Path) -> Path:
    tokenizer = clip_tokenizer(folder / "_tok")
    transformer = seeded(0, lambda: diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(2, 2, 4)))
    return save(diffusers.FluxPipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(1, shift_factor=0.1159, scaling_factor=0.3611), text_encoder=clip_encoder(2, len(tokenizer), False),
        tokenizer=tokenizer, text_encoder_2=t5_encoder(3, 16), tokenizer_2=t5_tokenizer()), folder)


SAVERS = {"sdxl": save_sdxl, "dit": save_dit, "pixart": save_pixart, "sd3": save_sd3, "flux": save_flux}
KIND = {"sdxl": "sd", "dit": "dit", "pixart": "pixart", "sd3": "sd3", "flux": "flux"}
PIPELINES = {"sdxl": diffusers.StableDiffusionXLPipeline, "dit": diffusers.DiTPipeline,
             "pixart": diffusers.PixArtAlphaPipeline, "sd3": diffusers.StableDiffusion3Pipeline,
             "flux": diffusers.FluxPipeline}


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent_pipelines")
    return {name: save(root / name) for name, save in SAVERS.items()}


def shared_noise(shape, seed: int = 0) -> torch.Tensor:
    """README: the shared noise, torch.Generator().manual_seed(seed), randn(1, C, H, W)."""
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def hooked(blocks, select, run) -> list[torch.Tensor]:
    record = {}
    handles = [block.register_forward_hook(lambda m, a, out, k=k: record.__setitem__(k, select(out)))
               for k, block in enumerate(blocks)]
    with torch.no_grad():
        run()
    for handle in handles:
        handle.remove()
    return [record[k] for k in sorted(record)]


def on_grid(tokens: torch.Tensor) -> torch.Tensor:
    side = int(tokens.shape[1] ** 0.5)
    return tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)


def pipeline_run(name: str, folder: Path, x: torch.Tensor, t: int, prompt: str = "", class_label=None):
    """(denoiser, its blocks, the selector of a block's image tokens from its output, its forward `run`), by the
    pipeline's own steps: its encode_prompt, latents by its rule, x_t by its scheduler's formula (SDXL: the UNet,
    no blocks)."""
    pipe = PIPELINES[name].from_pretrained(folder)
    with torch.no_grad():
        mean = pipe.vae.encode(x).latent_dist.mean
    config = pipe.vae.config
    latents = (mean - (config.shift_factor or 0)) * config.scaling_factor
    noise = shared_noise(latents.shape[1:])
    b = len(x)
    if name in ("sd3", "flux"):  # FlowMatchEulerDiscreteScheduler.scale_noise, no shift (its timesteps: 1..T)
        x_t = latents if t == 0 else diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0).scale_noise(
            latents, torch.tensor([float(t)]), noise)
    else:
        x_t = diffusers.DDPMScheduler.from_config(pipe.scheduler.config).add_noise(
            latents, noise, torch.full((b,), t, dtype=torch.long))
    with torch.no_grad():
        if name == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
            ids = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), embeds.dtype,
                                         text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
            return pipe.unet, None, None, lambda: pipe.unet(
                x_t, t, encoder_hidden_states=embeds.expand(b, -1, -1),
                added_cond_kwargs={"text_embeds": pooled.expand(b, -1), "time_ids": ids.expand(b, -1)})
        model = pipe.transformer
        if name == "dit":
            label = model.config.num_embeds_ada_norm if class_label is None else class_label
            run = lambda: model(x_t, timestep=torch.full((b,), t), class_labels=torch.full((b,), label))  # noqa: E731
            blocks, select = list(model.transformer_blocks), lambda out: out
        elif name == "pixart":
            embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device="cpu",
                                                    clean_caption=False)
            added = {"resolution": torch.tensor([[SIZE, SIZE]] * b, dtype=torch.float32),
                     "aspect_ratio": torch.ones(b, 1)}
            run = lambda: model(x_t, encoder_hidden_states=embeds.expand(b, -1, -1),  # noqa: E731
                                encoder_attention_mask=mask.expand(b, -1), timestep=torch.full((b,), t),
                                added_cond_kwargs=added)
            blocks, select = list(model.transformer_blocks), lambda out: out
        elif name == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False,
                                                      device="cpu")
            run = lambda: model(x_t, encoder_hidden_states=embeds.expand(b, -1, -1),  # noqa: E731
                                pooled_projections=pooled.expand(b, -1), timestep=torch.full((b,), float(t)))
            blocks, select = list(model.transformer_blocks), lambda out: out[1]
        else:
            embeds, pooled, text_ids = pipe.encode_prompt(prompt, None, device="cpu")
            c, h, w = x_t.shape[1:]
            packed = pipe._pack_latents(x_t, b, c, h, w)
            image_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", embeds.dtype)
            run = lambda: model(packed, timestep=torch.full((b,), t / 1000), guidance=torch.full((b,), 3.5),  # noqa
                                pooled_projections=pooled.expand(b, -1), encoder_hidden_states=embeds.expand(b, -1, -1),
                                txt_ids=text_ids, img_ids=image_ids)
            blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
            select = lambda out: out[1]  # noqa: E731
    return model, blocks, select, run


def reference(name: str, folder: Path, x: torch.Tensor, t: int, prompt: str = "", class_label=None):
    """Every block's image tokens on the (C, h, w) grid (SDXL: every up-block layer's output), the pipeline's
    own steps (pipeline_run) with its denoiser hooked."""
    model, blocks, select, run = pipeline_run(name, folder, x, t, prompt, class_label)
    if blocks is None:
        from test_diffusers import hooked_up_layers

        return hooked_up_layers(model, run)
    return [on_grid(tokens) for tokens in hooked(blocks, select, run)]


@pytest.mark.parametrize("name", list(SAVERS))
def test_cells_equal_the_pipeline_s_own_modules(pipelines, name):
    folder, x = pipelines[name], images(2, SIZE)
    prompt = None if name == "dit" else PROMPT
    backbone = build_backbone(BackboneSpec(KIND[name], folder, layers="all", steps="0,250", prompt=prompt,
                                           class_label=3 if name == "dit" else None,
                                           image_size=SIZE if name == "flux" else None), "features")
    assert backbone.image_size == SIZE  # FLUX: --image-size (its own default is FluxPipeline's 128 x VAE scale)
    for t in (0, 250):
        maps = backbone(x, ["a", "b"], t)
        want = reference(name, folder, x, t, PROMPT, class_label=3)
        assert len(maps) == len(want) == len(backbone.all_layers)
        for b, reference_map in enumerate(want):
            got = maps[f"t{t}_block{b}"]
            assert got.dtype == torch.float32 and got.shape == reference_map.shape, (name, b)
            torch.testing.assert_close(got, reference_map, rtol=0, atol=1e-5)


runner = CliRunner()


def cli(*args):
    """The command in this process (its torch and its loaded models reused)."""
    from probe.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_probe_features_command_equals_the_pipeline_s_modules(pipelines, tmp_path):
    """The installed command, in its own process, on FLUX (double then single blocks, packed tokens, flow noise)."""
    from probe.data.layout import load_images

    pictures = write_images(tmp_path / "imgs", 1, SIZE)
    out = tmp_path / "feats"
    result = run_probe("features", "--backbone", "flux", "--checkpoint", pipelines["flux"], "--images", pictures,
                       "--image-size", SIZE, "--prompt", PROMPT, "--blocks", "all", "--steps", "260", "--out", out,
                       "--quiet")
    assert result.returncode == 0, result.stderr
    exported = np.load(out / "im0.npz")
    assert sorted(exported.files) == [f"t260_block{b}" for b in range(4)]
    x = torch.from_numpy(load_images(pictures, SIZE)[0].image[None])
    for b, want in enumerate(reference("flux", pipelines["flux"], x, 260, PROMPT)):
        np.testing.assert_allclose(exported[f"t260_block{b}"], want[0].numpy(), rtol=0, atol=1e-5)


def test_default_cells_follow_the_literature(pipelines):
    cells = {name: build_backbone(BackboneSpec(KIND[name], pipelines[name], image_size=SIZE if name == "flux"
                                               else None), "segment").names for name in SAVERS}
    assert cells["sdxl"] == ["t261_block3"]  # DIFT: up_blocks[1]'s output, its last layer (up1.1)
    assert cells["dit"] == cells["pixart"] == cells["sd3"] == ["t250_block1"]  # the middle third of 3 blocks
    assert cells["flux"] == ["t260_block2"]  # DiTF's block 28 of 57 at the same relative depth of 4: round(1.5)
    grid = build_backbone(BackboneSpec("sd3", pipelines["sd3"]), "grid")
    assert grid.layers == ["block0", "block1", "block2"] and len(grid.steps) == 9


def test_dtype_prompt_and_class_label_are_in_the_identity(pipelines):
    base = build_backbone(BackboneSpec("pixart", pipelines["pixart"]), "segment").identity
    assert base["class"] == "PixArtTransformer2DModel" and base["dtype"] == "float32" and base["prompt"] == ""
    half = build_backbone(BackboneSpec("pixart", pipelines["pixart"], model_dtype="bfloat16"), "segment")
    assert half.identity["dtype"] == "bfloat16" and next(half.transformer.parameters()).dtype == torch.bfloat16
    maps = half(images(1, SIZE), ["a"], 250)
    assert maps["t250_block1"].dtype == torch.float32 and torch.isfinite(maps["t250_block1"]).all()
    assert build_backbone(BackboneSpec("pixart", pipelines["pixart"], prompt="a cat"), "segment").identity != base
    dit = build_backbone(BackboneSpec("dit", pipelines["dit"]), "segment").identity
    assert dit["class_label"] == 10  # the null class of 10 classes
    sdxl = build_backbone(BackboneSpec("sd", pipelines["sdxl"], model_dtype="bfloat16"), "segment").identity
    assert sdxl["variant"] == "sdxl" and sdxl["dtype"] == "bfloat16"
    spec = BackboneSpec("dit", pipelines["dit"], class_label=3)
    assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).class_label == 3
    assert "class_label" not in BackboneSpec("sd", pipelines["sdxl"]).to_dict()  # older specs keep their keys


BAD = {  # case: (backbone, folder, options, words the one error line holds)
    "unsupported class": ("dit", "{other}", {}, ["describes a HunyuanDiT2DModel, which probe does not take",
                                                "DiTTransformer2DModel (--backbone dit)",
                                                "FluxTransformer2DModel (--backbone flux)"]),
    "another family": ("sd3", "{flux}", {}, ["describes a FluxTransformer2DModel: use --backbone flux"]),
    "block out of range": ("sd3", "{sd3}", {"--blocks": "3"}, ["--blocks 3 is out of range", "blocks 0..2"]),
    "prompt on dit": ("dit", "{dit}", {"--prompt": "a cat"}, ["--prompt: the dit backbone is class-conditional"]),
    "class label on flux": ("flux", "{flux}", {"--class-label": "3"},
                            ["--class-label: the flux backbone is text-conditioned"]),
    "class label out of range": ("dit", "{dit}", {"--class-label": "11"},
                                 ["--class-label 11 is out of range", "classes 0..9 and the null class 10"]),
    "dtype": ("flux", "{flux}", {"--model-dtype": "int8"}, ["--model-dtype 'int8'"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line(pipelines, tmp_path, case):
    other = tmp_path / "other"
    (other / "transformer").mkdir(parents=True)
    (other / "transformer" / "config.json").write_text(json.dumps({"_class_name": "HunyuanDiT2DModel"}))
    kind, folder, options, words = BAD[case]
    folder = str(other) if folder == "{other}" else str(pipelines[folder.strip("{}")])
    result = cli("features", "--backbone", kind, "--checkpoint", folder, "--images",
                 write_images(tmp_path / "imgs", 1, SIZE), "--out", tmp_path / "out",
                 *(x for pair in options.items() for x in pair))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(SAVERS))
def test_segment_and_grid_run(pipelines, tiny_domain, tmp_path, name):
    common = ["--data", tiny_domain, "--backbone", KIND[name], "--checkpoint", pipelines[name], "--threads", 1,
              "--train-number", 1, "--test-number", 1, "--quiet",
              *(["--image-size", SIZE] if name == "flux" else []), *(["--class-label", 2] if name == "dit" else [])]
    result = cli("segment", *common, "--members", 1, "--out", tmp_path / "seg")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "seg" / "ensemble" / "manifest.json").read_text())
    assert manifest["identity"]["backbone"] == KIND[name] and len(manifest["feature_names"]) == 1
    result = cli("grid", *common, "--blocks", "0,1", "--steps", "100", "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "grid" / "grid.csv")
    assert sorted(table.layer.unique()) == ["block0", "block1"] and set(table.step) == {100}


def test_hub_patterns_fetch_the_files_each_family_reads(pipelines):
    from huggingface_hub.utils import filter_repo_objects

    from probe.data.hub import IGNORE, PATTERNS

    for name in SAVERS:
        folder = pipelines[name]
        read = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and
                not p.relative_to(folder).as_posix().startswith("_tok")}
        extras = {"text_encoder_2/model.fp16.safetensors", "transformer/diffusion_pytorch_model.bin", "README.md",
                  "vae_1_0/diffusion_pytorch_model.safetensors", "safety_checker/model.safetensors"}
        chosen = set(filter_repo_objects(sorted(read | extras), allow_patterns=PATTERNS[KIND[name]],
                                         ignore_patterns=IGNORE))
        assert chosen == read, (name, read ^ chosen)
    assert any(p.startswith("text_encoder_3/") for p in PATTERNS["sd3"]) and "tokenizer_2/*" in PATTERNS["sd"]


@pytest.mark.parametrize("name", ["sdxl", "flux"])
def test_offload_gives_the_same_features_and_cache_key(pipelines, name):
    """accelerate's offload hooks run on the CPU too (execution device cpu): `model` puts the denoiser and the VAE
    in turn on the device, `sequential` keeps every layer's weights off it (on the meta device) between forwards.
    Neither changes a feature or the identity (the activation cache key); the spec records it only when set."""
    common = dict(layers="all", steps="250", prompt=PROMPT, image_size=SIZE if name == "flux" else None)
    x, stems = images(2, SIZE), ["a", "b"]
    plain = build_backbone(BackboneSpec(KIND[name], pipelines[name], **common), "features")
    want = plain(x, stems, 250)
    for mode in ("model", "sequential"):
        backbone = build_backbone(BackboneSpec(KIND[name], pipelines[name], offload=mode, **common), "features")
        denoiser = backbone.unet if name == "sdxl" else backbone.transformer
        got = backbone(x, stems, 250)
        assert sorted(got) == sorted(want)
        for cell, value in want.items():
            torch.testing.assert_close(got[cell], value, rtol=0, atol=0)
        assert backbone.identity == plain.identity
        if mode == "model":  # each one's forward moves the other out
            assert denoiser._hf_hook.prev_module_hook.model is backbone.vae
            assert backbone.vae._hf_hook.prev_module_hook.model is denoiser
        else:
            block = denoiser.up_blocks[1] if name == "sdxl" else denoiser.transformer_blocks[0]
            assert {p.device.type for p in block.parameters()} == {"meta"}
    assert BackboneSpec("flux", offload="sequential").to_dict()["offload"] == "sequential"
    assert "offload" not in BackboneSpec("flux").to_dict()


OFFLOAD_BAD = {("ddpm", "model"): "--offload: the ddpm backbone loads whole onto --device",
               ("flux", "disk"): "--offload 'disk': use model (each network on the device only while it runs) or "
                                 "sequential"}


@pytest.mark.parametrize("kind, mode", sorted(OFFLOAD_BAD))
def test_offload_is_refused_where_it_does_not_apply(kind, mode):
    from probe.errors import ProbeError
    from probe.backbones.spec import check_offload

    with pytest.raises(ProbeError) as error:
        check_offload(kind, mode)
    assert str(error.value).startswith(OFFLOAD_BAD[kind, mode])
    with pytest.raises(ProbeError, match="--offload"):
        build_backbone(BackboneSpec(kind, offload=mode), "segment")


@pytest.mark.parametrize("name", list(SAVERS))
def test_batched_extraction_equals_one_image_at_a_time(pipelines, tmp_path, name):
    """The store gives a latent backbone about 16k latent positions per forward (here 16 x 16 latents: 64 images),
    the prompt / class encoded once and expanded: three images in one forward give each image's own features."""
    from probe.data.layout import LabeledImage
    from probe.features.store import ActivationStore

    spec = BackboneSpec(KIND[name], pipelines[name], layers="all", steps="250", noise="per-image",
                        prompt=None if name == "dit" else PROMPT, image_size=SIZE if name == "flux" else None)
    backbone = build_backbone(spec, "features")
    assert backbone.batch_size(SIZE) == 64 and backbone.batch_size(8 * SIZE) == 1
    x, stems = images(3, SIZE), ["a", "b", "c"]
    batched = backbone(x, stems, 250)
    for i, stem in enumerate(stems):
        alone = backbone(x[i:i + 1], [stem], 250)
        for cell, value in alone.items():
            torch.testing.assert_close(batched[cell][i:i + 1], value, rtol=0, atol=1e-5)
    sizes = []
    features = backbone.features
    backbone.features = lambda batch, names, step: sizes.append(len(batch)) or features(batch, names, step)
    labels = np.zeros((SIZE, SIZE), dtype=np.int64)
    ActivationStore(backbone, tmp_path / "cache").fill(
        [LabeledImage(stem, x[i].numpy(), labels) for i, stem in enumerate(stems)], progress=False)
    assert sizes == [64]  # one forward, padded to the full batch (an image's features do not depend on its batch)


def test_layers_across_ddpm_and_a_dit(pipelines, tiny_domain, tmp_path):
    """`probe layers --backbones ddpm,dit=DIR --image-size 64 --depths 0,1`: the dit's blocks at relative depth
    block / (blocks - 1), its input size from --image-size (ddpm keeps its own), each row its grid cell's mIoU."""
    import pandas as pd

    from probe.sweeps.data import SweepData
    from probe.backbones.spec import backbone_entries
    from probe.tasks.layers import run_layers

    data = SweepData(data=str(tiny_domain), cache=str(tmp_path / "cache"))
    entries = backbone_entries(f"ddpm,dit={pipelines['dit']}", BackboneSpec("ddpm"), steps="0,200", image_size=64)
    assert [(label, spec.image_size, spec.steps) for label, spec in entries] == [("ddpm", None, "0,200"),
                                                                                 ("dit:dit", 64, "0,200")]
    out = tmp_path / "layers"
    best = run_layers(data, entries, 0, out, train_number=1, test_number=1, depths=[0, 1], threads=1, progress=False)
    assert best.groupby("backbone").layer.apply(list).to_dict() == {"ddpm": ["block0", "block17"],
                                                                     "dit:dit": ["block0", "block2"]}
    dit = best[best.backbone == "dit:dit"]
    assert dit.kind.tolist() == ["dit", "dit"] and dit.layers.tolist() == [3, 3]
    assert dit.relative_depth.tolist() == [0.0, 1.0] and dit.miou.between(0, 100).all()
    summary = json.loads((out / "layers.json").read_text())
    identity = {b["label"]: b["identity"] for b in summary["backbones"]}
    assert identity["dit:dit"]["image_size"] == 64 and identity["dit:dit"]["class_label"] == 10
    cells = pd.read_csv(out / "layers_cells.csv")
    for row in dit.itertuples():  # the best of the layer's two steps
        steps = cells[(cells.backbone == "dit:dit") & (cells.layer == row.layer)]
        assert sorted(steps.step) == [0, 200] and row.miou == steps.miou.max()


def test_offload_option_of_the_command_gives_the_same_arrays(pipelines, tmp_path):
    """--offload reaches the backbone from the command line and changes no number; refused in one line elsewhere."""
    pictures = write_images(tmp_path / "imgs", 1, SIZE)
    exported = {}
    for mode in (None, "sequential"):
        out = tmp_path / f"feats_{mode}"
        extra = ["--offload", mode] if mode else []
        result = cli("features", "--backbone", "dit", "--checkpoint", pipelines["dit"], "--images", pictures,
                     "--image-size", SIZE, "--blocks", "0,1", "--steps", "250", "--out", out, "--quiet", *extra)
        assert result.exit_code == 0, result.output
        exported[mode] = np.load(out / "im0.npz")
    assert sorted(exported[None].files) == ["t250_block0", "t250_block1"]
    for cell in exported[None].files:
        np.testing.assert_array_equal(exported["sequential"][cell], exported[None][cell])
    refused = run_probe("segment", "--offload", "model", "--out", tmp_path / "never")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --offload: the ddpm backbone loads whole")
    assert not (tmp_path / "never").exists()
