"""The MAE and SwAV baselines: the authors' checkpoints load strictly and reproduce their reference features."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import FIXTURES, PARITY, parity_error
from PIL import Image

from probe.errors import ProbeError
from probe.training.mae import CHECKPOINT, MAE_WEIGHTS, MAETrainConfig, train_mae
from probe.models.resnet import ResNet, ResNetConfig, load_swav
from probe.models.vit import MAEConfig, MaskedAutoencoder, imagenet_normalize, load_mae, sincos_pos_embed

MAE_PT, SWAV_PT = FIXTURES / "mae_tiny32.pt", FIXTURES / "swav_tiny64.pt"
TINY = MAEConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2)


def fixture_input(name: str) -> torch.Tensor:
    pixels = np.array(Image.open(FIXTURES / f"{name}.png").convert("RGB"))
    return imagenet_normalize(torch.from_numpy(pixels).permute(2, 0, 1)[None])


def assert_matches_reference(name: str, features: dict) -> None:
    cells = json.loads((FIXTURES / f"{name}.json").read_text())["cells"]
    reference = np.load(FIXTURES / f"{name}_features.npz")
    assert sorted(reference.files) == sorted(cells)
    for cell, layer in cells.items():
        want, got = reference[cell], features[layer].numpy()
        assert got.shape == want.shape, cell
        error = parity_error(got, want)  # max |diff| / mean |ref|
        assert error <= PARITY, (cell, error)


def mae_state() -> dict:
    return torch.load(MAE_PT, weights_only=True)


def swav_state() -> dict:
    return torch.load(SWAV_PT, weights_only=True)


def test_mae_reproduces_reference_features():
    heads = json.loads((FIXTURES / "mae_tiny32.json").read_text())["config"]["num_heads"]
    encoder = load_mae(MAE_PT, num_heads=heads)
    cells = json.loads((FIXTURES / "mae_tiny32.json").read_text())["cells"]
    blocks = [int(b.removeprefix("block")) for b in cells.values()]
    features = encoder.forward_blocks(fixture_input("mae_tiny32"), blocks)
    assert_matches_reference("mae_tiny32", {f"block{b}": f for b, f in features.items()})
    negative = encoder.forward_blocks(fixture_input("mae_tiny32"), [-1])[-1]  # the last block, counted from the end
    assert torch.equal(negative, features[5])
    assert encoder(fixture_input("mae_tiny32")).shape == (1, 65, 64)  # cls + 8x8 tokens after the final norm


def test_swav_reproduces_reference_features():
    model = load_swav(SWAV_PT)
    cells = json.loads((FIXTURES / "swav_tiny64.json").read_text())["cells"]
    features = model.forward_layers(fixture_input("swav_tiny64"), list(cells.values()))
    assert_matches_reference("swav_tiny64", features)
    assert torch.equal(model.forward_layers(fixture_input("swav_tiny64"), ["layer2"])["layer2"],
                       model.forward_layers(fixture_input("swav_tiny64"), ["layer2.3"])["layer2.3"])
    with pytest.raises(ProbeError, match="layer5.0 does not exist: choose from layer1.0, "):
        model.forward_layers(fixture_input("swav_tiny64"), ["layer5.0"])


def test_configs_are_read_from_shapes():
    config = MAEConfig.from_state_dict(mae_state()["model"])
    assert (config.img_size, config.patch_size, config.embed_dim, config.depth, config.mlp_ratio) == (32, 4, 64, 6, 4.0)
    assert (config.decoder_embed_dim, config.decoder_depth) == (32, 1)
    assert config.num_heads == 1  # width 64 // 64: the fixture's 4 heads must be passed
    assert MAEConfig.from_state_dict(mae_state()["model"], num_heads=4).num_heads == 4
    # The paper's ViT-L/8 at 256 pixels, from shapes alone (meta tensors hold no data).
    paper = {"pos_embed": torch.empty(1, 1025, 1024, device="meta"),
             "patch_embed.proj.weight": torch.empty(1024, 3, 8, 8, device="meta"),
             "blocks.23.mlp.fc1.weight": torch.empty(4096, 1024, device="meta"),
             "blocks.0.mlp.fc1.weight": torch.empty(4096, 1024, device="meta")}
    assert MAEConfig.from_state_dict(paper) == MAEConfig(decoder_embed_dim=None, decoder_depth=None, decoder_num_heads=None)

    swav = ResNetConfig.from_state_dict({k.removeprefix("module."): v for k, v in swav_state()["state_dict"].items()})
    assert swav == ResNetConfig((3, 4, 6, 3), 8, (1, 2, 4, 8), (32, 64, 128, 256))
    w2 = ResNetConfig((3, 4, 6, 3), 128, (128, 256, 512, 1024), (512, 1024, 2048, 4096))  # swav's resnet50w2
    shapes = {f"layer{s + 1}.{j}.{conv}.weight": torch.empty(out if conv == "conv3" else width, 1, 1, 1, device="meta")
              for s, (n, width, out) in enumerate(zip(w2.layers, w2.widths, w2.out_channels))
              for j in range(n) for conv in ("conv1", "conv3")}
    shapes["conv1.weight"] = torch.empty(128, 3, 7, 7, device="meta")
    assert ResNetConfig.from_state_dict(shapes) == w2


def test_fresh_models_have_the_authors_key_layout():
    reference = mae_state()["model"]
    mae = MaskedAutoencoder(MAEConfig(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=4,
                                      decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4))
    assert [(k, v.shape) for k, v in mae.state_dict().items()] == [(k, v.shape) for k, v in reference.items()]
    assert torch.allclose(reference["pos_embed"], sincos_pos_embed(64, 8), atol=1e-6)  # MAE's fixed table
    assert torch.allclose(reference["decoder_pos_embed"], sincos_pos_embed(32, 8), atol=1e-6)
    swav = {k.removeprefix("module."): v for k, v in swav_state()["state_dict"].items()}
    fresh = ResNet(ResNetConfig.from_state_dict(swav)).state_dict()
    assert [(k, v.shape) for k, v in fresh.items()] == [(k, v.shape) for k, v in swav.items()]


def test_bad_num_heads_names_the_value_and_the_fix():
    with pytest.raises(ProbeError, match=r"num_heads 5 does not divide the width 64: pass a number of heads that "
                                         r"divides it \(1, 2, 4, 8, 16, 32, 64\)"):
        load_mae(MAE_PT, num_heads=5)
    with pytest.raises(ProbeError, match="num_heads 0 does not divide"):
        MAEConfig.from_state_dict(mae_state()["model"], num_heads=0)


def test_swav_loading_is_strict(tmp_path):
    state = {k.removeprefix("module."): v for k, v in swav_state()["state_dict"].items()}
    no_layer3 = {k: v for k, v in state.items() if not k.startswith("layer3.")}
    with pytest.raises(ProbeError, match="has no layer3 keys"):
        load_swav({"state_dict": no_layer3})
    with pytest.raises(ProbeError, match=r"unexpected: extra\.weight\)"):
        load_swav({**state, "extra.weight": torch.zeros(3)})
    with pytest.raises(ProbeError, match=r"missing: layer2\.1\.bn2\.running_var\)"):
        load_swav({k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"})
    with pytest.raises(ProbeError, match=r"shape mismatch: layer2\.1\.conv2\.weight \(model \(2, 2, 3, 3\), "
                                         r"checkpoint \(2, 2, 5, 5\)\)"):
        load_swav({**state, "layer2.1.conv2.weight": torch.zeros(2, 2, 5, 5)})
    with pytest.raises(ProbeError, match="looks like an MAE/ViT checkpoint"):
        load_swav(MAE_PT)
    truncated = tmp_path / "swav.pt"
    truncated.write_bytes(SWAV_PT.read_bytes()[:5000])
    with pytest.raises(ProbeError, match=f"checkpoint {truncated} cannot be read .*truncated"):
        load_swav(truncated)
    with pytest.raises(ProbeError, match="does not exist"):
        load_swav(tmp_path / "absent.pt")


def test_mae_loading_is_strict(tmp_path):
    state = mae_state()["model"]
    with pytest.raises(ProbeError, match=r"unexpected: head\.weight\)"):
        load_mae({"model": {**state, "head.weight": torch.zeros(10, 64)}}, num_heads=4)
    with pytest.raises(ProbeError, match=r"missing: blocks\.2\.attn\.qkv\.weight\)"):
        load_mae({k: v for k, v in state.items() if k != "blocks.2.attn.qkv.weight"}, num_heads=4)
    with pytest.raises(ProbeError, match=r"shape mismatch: blocks\.1\.mlp\.fc2\.bias \(model \(64,\), checkpoint \(65,\)\)"):
        load_mae({**state, "blocks.1.mlp.fc2.bias": torch.zeros(65)}, num_heads=4)
    with pytest.raises(ProbeError, match=r"is not an MAE checkpoint \(no patch_embed\.proj\.weight; it looks like a "
                                         r"SwAV/ResNet checkpoint"):
        load_mae(SWAV_PT)
    encoder_only = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))}
    assert load_mae(encoder_only, num_heads=4).config.depth == 6  # the decoder is optional
    truncated = tmp_path / "mae.pt"
    truncated.write_bytes(MAE_PT.read_bytes()[:100_000])
    with pytest.raises(ProbeError, match="cannot be read .*truncated"):
        load_mae(truncated)


def test_unused_swav_heads_are_logged_once(caplog):
    state = dict(swav_state()["state_dict"])
    state.update({"module.projection_head.0.weight": torch.zeros(4, 256), "module.prototypes.weight": torch.zeros(5, 4),
                  "module.fc.bias": torch.zeros(10)})
    with caplog.at_level(logging.INFO, logger="probe"):
        load_swav({"state_dict": state})
    lines = [r.getMessage() for r in caplog.records if "unused" in r.getMessage()]
    assert lines == [("the given state dict: 3 keys unused for features (projection head, prototypes, classifier): "
                      "fc.bias, projection_head.0.weight, prototypes.weight")]


def test_masked_autoencoder_round_trips_through_load_mae():
    mae = MaskedAutoencoder(TINY, torch.Generator().manual_seed(1))
    encoder = load_mae({"model": mae.state_dict()}, num_heads=2)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    want, got = mae.forward_blocks(x, [0, 1]), encoder.forward_blocks(x, [0, 1])
    assert all(torch.equal(want[b], got[b]) for b in (0, 1))
    assert torch.equal(mae.unpatchify(mae.patchify(x)), x)
    # Mask ratio 0 keeps every token, shuffled: the encoder's output is the same up to the token order.
    latent, mask, restore = mae.forward_encoder(x, torch.Generator().manual_seed(3), 0.0)
    unshuffled = latent[:, 1:].gather(1, restore[..., None].expand(-1, -1, 32))
    assert mask.sum() == 0 and torch.allclose(unshuffled, encoder(x)[:, 1:], atol=1e-5)


def test_masked_loss_decreases_without_touching_the_global_rng():
    global_state = torch.random.get_rng_state()
    gen = torch.Generator().manual_seed(0)
    mae = MaskedAutoencoder(TINY, gen)
    x = torch.randn(4, 3, 16, 16, generator=gen)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=2e-3, betas=(0.9, 0.95))

    def held_out_loss() -> float:
        with torch.no_grad():
            return mae(x, torch.Generator().manual_seed(99))[0].item()

    before = held_out_loss()
    for _ in range(30):
        loss, pred, mask = mae(x, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pred.shape == (4, 16, 48) and mask.sum() == 4 * 12  # 75% of 16 patches masked per image
    assert held_out_loss() < 0.8 * before
    assert torch.equal(torch.random.get_rng_state(), global_state)


def test_resumed_mae_run_equals_uninterrupted_run(tmp_path, images):
    options = {"batch_size": 4, "save_every": 2, "seed": 3, "lr": 1e-3}
    whole = train_mae(images, TINY, tmp_path / "whole", MAETrainConfig(steps=4, **options), progress=False)
    train_mae(images, TINY, tmp_path / "split", MAETrainConfig(steps=2, **options), progress=False)
    assert torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)["step"] == 2
    resumed = train_mae(images, TINY, tmp_path / "split", MAETrainConfig(steps=4, **options), resume=True,
                        progress=False)
    expected, got = (torch.load(path, weights_only=True)["model"] for path in (whole, resumed))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    start = MaskedAutoencoder(TINY, torch.Generator().manual_seed(3)).state_dict()
    assert any(not torch.equal(start[k], got[k]) for k in got)  # training moved the weights
    assert [line.split(",")[0] for line in (tmp_path / "split" / "loss.csv").read_text().split()] == ["step", "2", "4"]
    with pytest.raises(ProbeError, match="--resume"):
        train_mae(images, TINY, tmp_path / "split", MAETrainConfig(steps=6, **options), progress=False)
    wider = MAEConfig(**{**TINY.__dict__, "embed_dim": 64})
    with pytest.raises(ProbeError, match="was trained with model config .* resume with the same model options"):
        train_mae(images, wider, tmp_path / "split", MAETrainConfig(steps=6, **options), resume=True, progress=False)
    assert load_mae(resumed).config.num_heads == 2  # the trainer stores the head count (width 32 // 64 would give 1)
    assert (tmp_path / "split" / MAE_WEIGHTS).is_file()
