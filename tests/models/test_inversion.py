"""DDIM inversion (eta 0) as an extraction variant: the step arithmetic, a real inversion on the fixture model, the
ddim-inversion noise policy of the ADM backbone (deterministic, own identity, chain reused across steps) and its
parse errors."""

import itertools
import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from probe.backbones import BackboneSpec, build_backbone
from probe.backbones.adm import ADMBackbone
from probe.backbones.noise import NoisePolicy
from probe.backbones.base import capture
from probe.models.diffusion import Diffusion, inversion_schedule
from probe.errors import ProbeError
from probe.models import load_model

META = json.loads((FIXTURES / "adm_tiny32.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_model(FIXTURES / "adm_tiny32.pt", FIXTURES / "adm_tiny32.json")


def image(seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_inversion_schedule_is_even_and_ends_at_t():
    assert inversion_schedule(50, 1) == [0, 50]
    assert inversion_schedule(250, 3) == [0, 83, 167, 250]
    assert inversion_schedule(5, 10) == [0, 1, 2, 3, 4, 5]  # more steps than there are: every step
    assert inversion_schedule(7) == list(range(8))
    assert inversion_schedule(0, 4) == [0]
    for t in range(0, 120, 7):
        for k in (1, 2, 3, 10, 50, 200):
            s = inversion_schedule(t, k)
            assert s[0] == 0 and s[-1] == t and len(s) == min(k, t) + 1 and all(b > a for a, b in itertools.pairwise(s))
    with pytest.raises(ProbeError, match="at least 1"):
        inversion_schedule(10, 0)


def test_one_step_inversion_is_one_ddim_jump_by_hand(model):
    """K = 1: x_t = sqrt(abar_t) x0_pred + sqrt(1 - abar_t) eps with eps = the UNet's first 3 channels at t = 0."""
    diffusion, x0, t = Diffusion(model.flags), image(), 150
    with torch.no_grad():
        out = model.unet(x0, torch.zeros(1, dtype=torch.long))
        got = diffusion.ddim_invert(model.unet, x0, t, 1)
    assert out.shape[1] == 6  # learn_sigma: eps and the variance
    eps = out[:, :3].double()
    abar = diffusion.alphas_cumprod
    x0_pred = (x0.double() - np.sqrt(1 - abar[0]) * eps) / np.sqrt(abar[0])
    expected = np.sqrt(abar[t]) * x0_pred + np.sqrt(1 - abar[t]) * eps
    assert torch.allclose(got.double(), expected, rtol=0, atol=2e-5)
    assert (got - x0).abs().max() > 0.5  # a real jump, not x0


def test_inversion_then_sampling_back_reconstructs_x0(model):
    """Inverting to t and DDIM-sampling back along the reversed schedule returns x0 far more closely than sampling
    back from q_sample's x_t at the same noise level: the inversion finds the x_t the model maps to x0."""
    diffusion, x0, t = Diffusion(model.flags), image(), 20
    schedule = inversion_schedule(t, 10)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x_t = diffusion.ddim_invert(model.unet, x0, t, 10)
        back = diffusion.ddim_walk(model.unet, x_t, schedule[::-1])
        noised = diffusion.q_sample(x0, torch.tensor([t]), noise)
        noised_back = diffusion.ddim_walk(model.unet, noised, schedule[::-1])
    moved, error, noised_error = ((a - x0).abs().max().item() for a in (x_t, back, noised_back))
    assert moved > 0.2  # x_t is far from x0 ...
    assert error < 0.05 * moved and error < 0.05 * noised_error  # ... yet maps back onto it


def test_ddim_sample_is_eta_zero_ddim(model):
    """Sampling and inversion share one DDIM step: ddim_sample equals eta-0 DDIM written out here (x0 predicted
    from eps and clipped, eps recomputed from it, the move to the next step's abar; abar 1 after step 0)."""
    diffusion = Diffusion(model.flags)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    abar = torch.from_numpy(diffusion.alphas_cumprod).float()
    with torch.no_grad():
        got = diffusion.ddim_sample(model.unet, noise, 3)
        x = noise
        schedule = np.linspace(diffusion.num_steps - 1, 0, 3).round().astype(int)
        for i, t in enumerate(schedule):
            eps = model.unet(x, diffusion.model_timesteps(torch.tensor([int(t)])))[:, :3]
            a_t, a_next = abar[t], abar[schedule[i + 1]] if i + 1 < len(schedule) else torch.tensor(1.0)
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    assert torch.equal(got, x.clamp(-1, 1))


def test_backbone_ddim_inversion_policy(model):
    x0, t = image(), 8
    rng_before = torch.get_rng_state()
    inverted = ADMBackbone(model, [2, 5], [t], NoisePolicy.parse("ddim-inversion-4", 0))
    acts = inverted(x0, ["a"], t)
    again = inverted(x0, ["a"], t)
    seed1 = ADMBackbone(model, [2, 5], [t], NoisePolicy.parse("ddim-inversion-4", 1))(x0, ["other"], t)
    shared = ADMBackbone(model, [2, 5], [t], NoisePolicy.parse("shared", 0))(x0, ["a"], t)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is neither read nor advanced
    for name in ("t8_block2", "t8_block5"):
        assert torch.equal(acts[name], again[name]) and torch.equal(acts[name], seed1[name])
        assert not torch.allclose(acts[name], shared[name], atol=1e-3)
    # the activations are the decoder blocks at t on the DDIM-inverted x_t
    diffusion = Diffusion(model.flags)
    with torch.no_grad():
        x_t = diffusion.ddim_invert(model.unet, x0, t, 4)
        with capture({5: model.unet.output_blocks[5]}) as captured:
            model.unet(x_t, torch.full((1,), t), last_block=5)
    assert torch.equal(acts["t8_block5"], captured[5])
    # identities: the policy and K, so cached activations of the variants never mix
    ids = {text: ADMBackbone(model, [2], [t], NoisePolicy.parse(text, 0)).identity
           for text in ("shared", "ddim-inversion", "ddim-inversion-4", "ddim-inversion-2")}
    assert len({json.dumps(i, sort_keys=True) for i in ids.values()}) == 4
    assert ids["ddim-inversion-4"]["noise"] == "ddim-inversion-4" and ids["ddim-inversion"]["noise"] == "ddim-inversion"
    assert ADMBackbone(model, [2], [t], NoisePolicy.parse("ddim-inversion-4", 1)).identity["seed"] == 1


def test_backbone_continues_the_chain_across_steps(model):
    """Every-step inversion to 3 then 8 continues from 3 (5 more UNet passes, not 8) and gives the numbers of an
    inversion to 8 from x0; another batch starts afresh."""
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        x0 = image(0, 2)
        chained = ADMBackbone(model, [5], [3, 8], NoisePolicy.parse("ddim-inversion", 0))
        chained(x0, ["a", "b"], 3)
        calls.clear()
        late = chained(x0, ["a", "b"], 8)["t8_block5"]
        assert len(calls) == 5 + 1  # five inversion steps 3 -> 8, one forward for the activations
        calls.clear()
        fresh = ADMBackbone(model, [5], [8], NoisePolicy.parse("ddim-inversion", 0))(x0, ["a", "b"], 8)["t8_block5"]
        assert len(calls) == 8 + 1
        assert torch.equal(late, fresh)
        calls.clear()
        chained(image(1, 2), ["c", "d"], 8)
        assert len(calls) == 8 + 1
    finally:
        handle.remove()


def test_policy_text_forms():
    assert NoisePolicy.parse("ddim-inversion", 5) == NoisePolicy("ddim-inversion", 1, 5, None)
    assert NoisePolicy.parse("ddim-inversion-10", 0) == NoisePolicy("ddim-inversion", 1, 0, 10)
    for text in ("shared", "per-image", "mean-of-3", "ddim-inversion", "ddim-inversion-1", "ddim-inversion-25"):
        assert str(NoisePolicy.parse(text, 0)) == text
    with pytest.raises(ValueError, match="no noise"):
        NoisePolicy.parse("ddim-inversion", 0).noises(["a"], (3, 4, 4))
    spec = BackboneSpec("ddpm", FIXTURES / "adm_tiny32.pt", str(FIXTURES / "adm_tiny32.json"), "2", "5",
                        noise="ddim-inversion-3", seed=2)
    assert build_backbone(spec, "segment", 32).noise == NoisePolicy("ddim-inversion", 1, 2, 3)


@pytest.mark.parametrize("value", ["0", "x", "", "-2", "1.5", "00"])
def test_bad_inversion_step_counts_are_refused(value):
    with pytest.raises(ProbeError) as error:
        NoisePolicy.parse(f"ddim-inversion-{value}", 0)
    message = str(error.value)
    assert repr(value) in message and f"ddim-inversion-{value}" in message
    for form in ("shared", "per-image", "mean-of-K", "ddim-inversion (", "ddim-inversion-K"):
        assert form in message


@pytest.mark.parametrize("text", ["ddim", "ddim-inversion10", "inversion"])
def test_unknown_policies_list_every_form(text):
    with pytest.raises(ProbeError, match="ddim-inversion-K") as error:
        NoisePolicy.parse(text, 0)
    assert repr(text) in str(error.value)
