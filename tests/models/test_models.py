"""The ADM UNet, its flags and checkpoint loading: parity with the authors' extractor and loud failures."""

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES, PARITY, parity_error
from probe.errors import ProbeError
from probe.models import UNet, load_model
from probe.models.flags import ModelFlags, infer_flags, parse_flags, resolve_flags

META = json.loads((FIXTURES / "adm_tiny32.json").read_text())

# Small versions of the architectures users load: the paper's 256x256 ADM layout (at 32 px and 32 channels so
# it runs fast), a model with num_heads but no head channels and no scale-shift norm, a class-conditional one.
ARCHITECTURES = {
    "paper_layout": "--image_size 32 --num_channels 32 --channel_mult 1,1,2,2,4,4 --attention_resolutions 8,4,2 "
                    "--num_head_channels 16 --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm True "
                    "--learn_sigma True",
    "heads_no_scale_shift": "--image_size 16 --num_channels 32 --channel_mult 1,2 --attention_resolutions 8 "
                            "--num_heads 2 --use_scale_shift_norm False --resblock_updown False --num_res_blocks 1 "
                            "--use_new_attention_order True",
    "class_cond": "--image_size 16 --num_channels 32 --channel_mult 1,2 --attention_resolutions 8 --class_cond True "
                  "--num_res_blocks 3 --num_heads_upsample 2",
}


def test_fixture_parity_every_step_and_block():
    """The fixture's activations, reproduced by the API for all 6 steps x 9 blocks."""
    from probe.data.layout import load_images
    from probe.backbones.adm import ADMBackbone
    from probe.backbones.noise import NoisePolicy

    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    reference = np.load(FIXTURES / META["activations"])
    backbone = ADMBackbone(model, META["blocks"], META["steps"], NoisePolicy("shared", 1, META["noise_seed"]))
    image = load_images(FIXTURES / META["image"], 32)[0]
    noise = backbone.noise.noises([image.stem], (3, 32, 32))[0]
    assert torch.equal(noise, torch.from_numpy(reference["noise"]))
    x = torch.from_numpy(image.image[None])
    acts = {name: a for t in backbone.steps for name, a in backbone(x, [image.stem], t).items()}
    assert len(acts) == 54
    for name, act in acts.items():
        ref = reference[name]
        assert act.shape == ref.shape, name
        error = parity_error(act.numpy(), ref)  # max |diff| / mean |ref|, in the UNet's default (channels-last) layout
        assert error <= PARITY, (name, error)


def test_the_unet_computes_in_the_authors_layout():
    """load_model keeps torch's default (contiguous) layout, as the authors' extractor: channels-last convolutions and
    GroupNorm moved the features up to 2e-4 (max |diff| / mean |ref|) off theirs on an AMD EPYC (issue 33)."""
    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    assert all(parameter.is_contiguous() for parameter in model.unet.parameters())


def test_decoder_stops_after_last_requested_block():
    """Extraction runs the decoder only up to the deepest requested block, with the same activations."""
    from probe.data.layout import load_images
    from probe.backbones.adm import ADMBackbone
    from probe.backbones.noise import NoisePolicy

    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    reference = np.load(FIXTURES / META["activations"])
    image = load_images(FIXTURES / META["image"], 32)[0]
    backbone = ADMBackbone(model, [2, 5], [50], NoisePolicy("shared", 1, META["noise_seed"]))
    ran = []
    handles = [block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
               for i, block in enumerate(model.unet.output_blocks)]
    acts = backbone(torch.from_numpy(image.image[None]), [image.stem], 50)
    for handle in handles:
        handle.remove()
    assert ran == [0, 1, 2, 3, 4, 5]
    for name in ("t50_block2", "t50_block5"):
        error = parity_error(acts[name].numpy(), reference[name])
        assert error <= PARITY, (name, error)


def test_hooks_removed_after_extraction():
    from probe.backbones.adm import ADMBackbone
    from probe.backbones.noise import NoisePolicy

    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    backbone = ADMBackbone(model, [0, 4, 8], [50], NoisePolicy(), input_activations=True)
    backbone(torch.zeros(1, 3, 32, 32), ["x"], 50)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.unet.modules())


def test_input_activations_are_previous_output_and_skip():
    """A block's input is the previous block's output concatenated with the encoder skip."""
    from probe.backbones.adm import ADMBackbone
    from probe.backbones.noise import NoisePolicy

    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    outputs = ADMBackbone(model, [3], [150], NoisePolicy())(image, ["a"], 150)["t150_block3"]
    inputs = ADMBackbone(model, [4], [150], NoisePolicy(), input_activations=True)(image, ["a"], 150)["t150_block4"]
    assert inputs.shape[1] > outputs.shape[1]
    assert torch.equal(inputs[:, : outputs.shape[1]], outputs)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_round_trip_and_inference(tmp_path, name):
    """Save a model, reload it giving only image_size: the inferred flags rebuild the same network."""
    flags = ModelFlags(**parse_flags(ARCHITECTURES[name]))
    torch.manual_seed(0)
    unet = UNet(flags).eval()
    path = tmp_path / "model.pt"
    torch.save(unet.state_dict(), path)
    loaded = load_model(path, {"image_size": flags.image_size, "num_heads": flags.num_heads,
                               "num_head_channels": flags.num_head_channels,
                               "num_heads_upsample": flags.num_heads_upsample,
                               "use_new_attention_order": flags.use_new_attention_order})
    for field in ("num_channels", "num_res_blocks", "learn_sigma", "class_cond", "use_scale_shift_norm", "resblock_updown"):
        assert getattr(loaded.flags, field) == getattr(flags, field), field
    assert loaded.flags.channel_multipliers == flags.channel_multipliers
    assert set(loaded.flags.attention_downsamples) == set(flags.attention_downsamples)
    x = torch.randn(2, 3, flags.image_size, flags.image_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    y = torch.tensor([3, 7]) if flags.class_cond else None
    with torch.no_grad():
        assert torch.equal(unet(x, t, y), loaded.unet(x, t, y))


def test_paper_flags_key_layout():
    """guided-diffusion's key names for the paper's 256x256 flags (resblock_updown, 3 attention levels)."""
    flags = ModelFlags(**parse_flags(
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"))
    with torch.device("meta"):
        keys = UNet(flags).state_dict()
    assert flags.decoder_blocks == 18 and flags.channel_multipliers == (1, 1, 2, 2, 4, 4)
    assert keys["input_blocks.0.0.weight"].shape == (256, 3, 3, 3)
    assert keys["output_blocks.2.2.in_layers.2.weight"].shape == (1024, 1024, 3, 3)  # upsampling ResBlock
    assert keys["output_blocks.5.1.qkv.weight"].shape == (3072, 1024, 1)  # attention at 8x8 (ds 32)
    assert "output_blocks.17.1.qkv.weight" not in keys and "output_blocks.17.0.skip_connection.weight" in keys
    assert keys["out.2.weight"].shape == (6, 256, 3, 3)
    assert keys["time_embed.0.weight"].shape == (1024, 256)
    assert sum(v.numel() for v in keys.values()) == 552_814_086


def test_flag_parsing_forms(tmp_path):
    text = "--image_size 64 --num-channels 96 --class_cond False --dropout=0.1 --channel_mult 1,2,3"
    parsed = parse_flags(text)
    assert parsed == {"image_size": 64, "num_channels": 96, "class_cond": False, "dropout": 0.1, "channel_mult": "1,2,3"}
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"image_size": "64", "learn_sigma": "True"}}))
    assert parse_flags(path) == {"image_size": 64, "learn_sigma": True}
    assert ModelFlags(image_size=256).channel_multipliers == (1, 1, 2, 2, 4, 4)
    with pytest.raises(ProbeError, match="--num_channelz"):
        parse_flags("--num_channelz 3")
    with pytest.raises(ProbeError, match="--image_size"):
        parse_flags("--image_size big")


def test_contradicting_flag_names_flag_and_shapes():
    with pytest.raises(ProbeError, match=r"--num_channels 64 contradicts .*\(32, 3, 3, 3\)"):
        load_model(FIXTURES / META["checkpoint"], {**META["flags"], "num_channels": 64})
    with pytest.raises(ProbeError, match="--attention_resolutions 8 contradicts"):
        load_model(FIXTURES / META["checkpoint"], {**META["flags"], "attention_resolutions": "8"})
    with pytest.raises(ProbeError, match="--learn_sigma False contradicts"):
        load_model(FIXTURES / META["checkpoint"], {**META["flags"], "learn_sigma": False})


def test_checkpoint_missing_truncated_and_foreign(tmp_path):
    with pytest.raises(ProbeError, match="does not exist"):
        load_model(tmp_path / "nope.pt", META["flags"])
    truncated = tmp_path / "truncated.pt"
    data = (FIXTURES / META["checkpoint"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProbeError, match="truncated.pt cannot be read"):
        load_model(truncated, META["flags"])
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ProbeError, match="not a guided-diffusion UNet"):
        load_model(foreign, META["flags"])


def test_inferred_flags_of_fixture():
    state = torch.load(FIXTURES / META["checkpoint"], weights_only=True)
    inferred = infer_flags(state)
    assert inferred["num_channels"] == 32 and inferred["num_res_blocks"] == 2
    assert inferred["channel_mult"] == "1,2,2" and inferred["learn_sigma"] and inferred["resblock_updown"]
    assert inferred["_attention_ds"] == (2, 4)
    flags = resolve_flags({"image_size": 32, "num_head_channels": 16}, state)
    assert flags.attention_resolutions == "16,8"
    with pytest.raises(ProbeError, match="--image_size cannot be inferred"):
        resolve_flags({}, state)


def test_diffusion_schedules_and_timesteps():
    from probe.models.diffusion import Diffusion, space_timesteps

    linear = Diffusion(ModelFlags(diffusion_steps=1000))
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(linear.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([50, 999])
    expected = (np.sqrt(np.cumprod(1 - betas))[[50, 999]].astype(np.float32)[:, None, None, None] * x0.numpy()
                + np.sqrt(1 - np.cumprod(1 - betas))[[50, 999]].astype(np.float32)[:, None, None, None] * noise.numpy())
    assert np.array_equal(linear.q_sample(x0, t, noise).numpy(), expected)
    cosine = Diffusion(ModelFlags(noise_schedule="cosine", diffusion_steps=4000, rescale_timesteps=True))
    abar = np.cos((np.arange(1, 4001) / 4000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    assert np.allclose(cosine.alphas_cumprod[:3000], abar[:3000], rtol=1e-9)  # beyond, betas are clipped at 0.999
    assert torch.equal(cosine.model_timesteps(torch.tensor([0, 2000])), torch.tensor([0.0, 500.0]))
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22]
    respaced = Diffusion(ModelFlags(timestep_respacing="ddim10"))
    assert np.allclose(respaced.alphas_cumprod, linear.alphas_cumprod[::100], rtol=1e-12)
    assert torch.equal(respaced.model_timesteps(torch.tensor([3])), torch.tensor([3]))


def test_random_weights_from_flags_that_leave_channel_mult_to_the_image_size():
    """The paper datasets' flags (ADM_256_FLAGS) give no --channel_mult: guided-diffusion picks it by image size.
    Random weights built from such flags must take that choice, not fail on the empty default."""
    from probe.backbones.adm import random_unet

    model = random_unet("--image_size 64 --num_channels 32 --num_res_blocks 1 --attention_resolutions 16 "
                        "--num_head_channels 16", seed=0, device="cpu")
    assert model.flags.channel_mult == "1,2,3,4" and model.flags.decoder_blocks == 8
