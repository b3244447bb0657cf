"""`--tokens modulated` on the diffusion transformers (dit, pixart, sd3, flux): a block's AdaLN-modulated tokens,
checked against norm1 computed by hand from diffusers' own block modules with the conditioning each block is called
with during the pipeline's own forward (test_latent_diffusion.pipeline_run); the default keeps its identity."""

import inspect
import json

import numpy as np
import pytest
import torch
from test_diffusers import images, write_images
from test_latent_diffusion import KIND, PROMPT, SIZE, cli, on_grid, pipeline_run, pipelines  # noqa: F401 (a fixture)

from probe.backbones import BackboneSpec, build_backbone, identity_hash
from probe.errors import ProbeError

FAMILIES = ("dit", "pixart", "sd3", "flux")
STEP = 250


def block_inputs(blocks, run) -> list[dict]:
    """Each block's call arguments by name during `run()`."""
    record = {}
    handles = [block.register_forward_pre_hook(
        lambda m, args, kwargs, k=k: record.__setitem__(k, inspect.signature(m.forward).bind(*args, **kwargs).arguments),
        with_kwargs=True) for k, block in enumerate(blocks)]
    with torch.no_grad():
        run()
    for handle in handles:
        handle.remove()
    return [record[k] for k in range(len(blocks))]


def modulated_by_hand(block, inputs: dict) -> torch.Tensor:
    """The block's adaptive layer norm on its input image tokens with the conditioning it was called with."""
    h = inputs["hidden_states"]
    if hasattr(block, "scale_shift_table"):  # PixArt: norm1 is a plain LayerNorm, the block shifts and scales after it
        shift, scale = (block.scale_shift_table[None] + inputs["timestep"].reshape(len(h), 6, -1)).chunk(6, dim=1)[:2]
        return block.norm1(h) * (1 + scale) + shift
    if hasattr(block, "norm"):  # FLUX single-stream: AdaLayerNormZeroSingle (a per-token norm: image tokens alone)
        return block.norm(h, emb=inputs["temb"])[0]
    if "temb" in inputs:  # SD3 (AdaLayerNormZero, SD3.5's dual-attention block AdaLayerNormZeroX), FLUX double-stream
        return block.norm1(h, emb=inputs["temb"])[0]
    return block.norm1(h, inputs["timestep"], inputs["class_labels"], hidden_dtype=h.dtype)[0]  # DiT: AdaLayerNormZero


def spec(name: str, folder, **options) -> BackboneSpec:
    return BackboneSpec(KIND[name], folder, layers="all", steps=str(STEP), prompt=None if name == "dit" else PROMPT,
                        class_label=3 if name == "dit" else None, image_size=SIZE if name == "flux" else None,
                        **options)


@pytest.mark.parametrize("name", FAMILIES)
def test_modulated_tokens_are_norm1_with_the_block_s_conditioning(pipelines, name):  # noqa: F811
    folder, x = pipelines[name], images(2, SIZE)
    modulated = build_backbone(spec(name, folder, tokens="modulated"), "features")(x, ["a", "b"], STEP)
    output = build_backbone(spec(name, folder), "features")(x, ["a", "b"], STEP)
    _, blocks, _, run = pipeline_run(name, folder, x, STEP, PROMPT, class_label=3)
    inputs = block_inputs(blocks, run)
    assert sorted(modulated) == sorted(output) and len(modulated) == len(blocks)
    for b, block in enumerate(blocks):
        cell = f"t{STEP}_block{b}"
        with torch.no_grad():
            want = on_grid(modulated_by_hand(block, inputs[b]))
        assert modulated[cell].dtype == torch.float32 and modulated[cell].shape == output[cell].shape == want.shape
        torch.testing.assert_close(modulated[cell], want, rtol=0, atol=1e-5)
        assert (modulated[cell] - output[cell]).abs().max() > 0.1, (name, b)  # not the block's output


def test_the_default_keeps_its_identity_and_the_modulated_tokens_have_their_own(pipelines):  # noqa: F811
    folder = pipelines["dit"]
    default = build_backbone(BackboneSpec("dit", folder), "segment")
    # the identity (the activation store's key) of the default is what it was before --tokens existed
    assert sorted(default.identity) == ["backbone", "checkpoint", "class", "class_label", "dtype", "image_size",
                                        "noise", "seed", "version"]
    assert build_backbone(BackboneSpec("dit", folder, tokens="output"), "segment").identity == default.identity
    modulated = build_backbone(BackboneSpec("dit", folder, tokens="modulated"), "segment")
    assert modulated.identity == {**default.identity, "tokens": "modulated"}
    assert identity_hash(modulated.identity) != identity_hash(default.identity)
    assert "tokens" not in BackboneSpec("dit", folder).to_dict()  # sweep cells and manifests keep their keys
    given = BackboneSpec("dit", folder, tokens="modulated")
    assert given.to_dict()["tokens"] == "modulated"
    assert BackboneSpec.from_dict(json.loads(json.dumps(given.to_dict()))) == given


def test_probe_features_tokens_modulated(pipelines, tmp_path):  # noqa: F811
    """The command's --tokens reaches the backbone: FLUX (double- then single-stream blocks, text tokens dropped)."""
    from probe.data.layout import load_images

    pictures = write_images(tmp_path / "imgs", 1, SIZE)
    out = tmp_path / "feats"
    result = cli("features", "--backbone", "flux", "--checkpoint", pipelines["flux"], "--images", pictures,
                 "--image-size", SIZE, "--prompt", PROMPT, "--blocks", "all", "--steps", STEP, "--tokens", "modulated",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    exported = np.load(out / "im0.npz")
    assert sorted(exported.files) == [f"t{STEP}_block{b}" for b in range(4)]
    x = torch.from_numpy(load_images(pictures, SIZE)[0].image[None])
    _, blocks, _, run = pipeline_run("flux", pipelines["flux"], x, STEP, PROMPT)
    for b, (block, inputs) in enumerate(zip(blocks, block_inputs(blocks, run))):
        with torch.no_grad():
            want = on_grid(modulated_by_hand(block, inputs))[0].numpy()
        np.testing.assert_allclose(exported[f"t{STEP}_block{b}"], want, rtol=0, atol=1e-5)


BAD = {("ddpm", "modulated"): "--tokens modulated: the ddpm backbone has no AdaLN-modulated tokens (only --backbone "
                              "dit, pixart, sd3, flux take --tokens); drop --tokens",
       ("dit", "middle"): "--tokens 'middle': use output (the block's output) or modulated"}


@pytest.mark.parametrize("kind, tokens", sorted(BAD))
def test_bad_tokens_is_one_line_and_exit_2(pipelines, tmp_path, kind, tokens):  # noqa: F811
    checkpoint = ["--checkpoint", pipelines["dit"]] if kind == "dit" else []
    result = cli("features", "--backbone", kind, *checkpoint, "--images", write_images(tmp_path / "imgs", 1, SIZE),
                 "--tokens", tokens, "--out", tmp_path / "out")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {BAD[kind, tokens]}"), lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ProbeError, match="--tokens"):
        build_backbone(BackboneSpec(kind, pipelines["dit"] if kind == "dit" else None, tokens=tokens))


def test_grid_with_tokens_modulated_fills_its_own_cache(pipelines, tiny_domain, tmp_path):  # noqa: F811
    """`probe grid --tokens modulated`: the sweep's cells build the backbone with it; the store keys it apart."""
    from probe.utils.cache import IDENTITY_FILE

    cache = tmp_path / "cache"
    for tokens in ("output", "modulated"):
        result = cli("grid", "--data", tiny_domain, "--backbone", "dit", "--checkpoint", pipelines["dit"],
                     "--tokens", tokens, "--blocks", "1", "--steps", "100", "--train-number", 1, "--test-number", 1,
                     "--threads", 1, "--cache", cache, "--quiet", "--out", tmp_path / tokens)
        assert result.exit_code == 0, result.output
    identities = sorted((json.loads(f.read_text()) for f in cache.glob(f"*/{IDENTITY_FILE}")), key=len)
    assert [identity.get("tokens") for identity in identities] == [None, "modulated"]
    assert identities[1] == {**identities[0], "tokens": "modulated"}
