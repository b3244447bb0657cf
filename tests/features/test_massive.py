"""probe.features.massive: a huge channel planted in a small random diffusers DiT breaks cosine nearest-neighbour
matching of an image against a shifted copy of itself; massive_channels finds exactly that channel, and matching
without it is restored. The rule itself on made-up maps."""

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_latent_diffusion import SIZE, save_dit

from probe.backbones import BackboneSpec, build_backbone
from probe.errors import ProbeError
from probe.features.massive import MASSIVE_RATIO, drop_channels, massive_channels

BLOCK, PLANTED, SHIFT = 1, 7, 8  # the planted channel of block 1's output; the copy's view moved 8 pixels


@pytest.fixture(scope="module")
def dits(tmp_path_factory) -> dict[str, Path]:
    """Two random DiTs (3 blocks of 16 channels, 32 x 32 images, 8 x 8 tokens) that differ only in one channel of
    block 1's output: the planted one's feed-forward output row (weights and bias) x 1e6. A random DiT's tokens hold
    mostly what all tokens share and their position, so in both the patch projection's weights are x 100: the tokens
    then carry their patch's content and match across a shift."""
    root = tmp_path_factory.mktemp("massive")
    pipe = diffusers.DiTPipeline.from_pretrained(save_dit(root / "random"))
    folders = {"plain": root / "plain", "planted": root / "planted"}
    with torch.no_grad():
        pipe.transformer.pos_embed.proj.weight *= 100
        pipe.save_pretrained(folders["plain"], safe_serialization=True)
        row = pipe.transformer.transformer_blocks[BLOCK].ff.net[2]
        row.weight[PLANTED] *= 1e6
        row.bias[PLANTED] *= 1e6
        pipe.save_pretrained(folders["planted"], safe_serialization=True)
    return folders


def shifted_pair() -> torch.Tensor:
    """(2, 3, 32, 32): a scene of random 4 x 4 colour tiles and the same scene with the view moved SHIFT pixels."""
    tiles = torch.rand(1, 3, SIZE // 4, SIZE // 4 + SHIFT // 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scene = F.interpolate(tiles, scale_factor=4, mode="nearest")
    return torch.cat([scene[..., :SIZE], scene[..., SHIFT:]])


def features(folder: Path) -> torch.Tensor:
    """Block 1's output for the pair at t = 0: (2, 16, 8, 8)."""
    backbone = build_backbone(BackboneSpec("dit", folder, layers=str(BLOCK), steps="0"), "features")
    return backbone(shifted_pair(), ["source", "target"], 0)[f"t0_block{BLOCK}"]


def pck(maps: torch.Tensor) -> float:
    """DIFT's protocol: both maps upsampled bilinearly to the image, each source pixel (every 2nd, inside the part
    both views show) matched to the target pixel of highest cosine similarity, correct within 0.1 x the image side
    of where the shift puts it."""
    up = F.interpolate(maps, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    source, target = (F.normalize(m.flatten(1).T, dim=1) for m in up)
    ys, xs = (v.flatten() for v in torch.meshgrid(torch.arange(6, SIZE - 4, 2), torch.arange(SHIFT + 6, SIZE - 4, 2),
                                                   indexing="ij"))
    best = (source[ys * SIZE + xs] @ target.T).argmax(dim=1)
    distance = ((best // SIZE - ys) ** 2 + (best % SIZE - (xs - SHIFT)) ** 2).float().sqrt()
    return float((distance <= 0.1 * SIZE).float().mean())


def test_a_planted_massive_channel_breaks_matching_and_dropping_it_restores_it(dits):
    plain, planted = features(dits["plain"]), features(dits["planted"])
    peaks = planted.abs().amax(dim=(0, 2, 3)) / planted.abs().median()
    assert peaks[PLANTED] > 1e4 and peaks[torch.arange(16) != PLANTED].max() < 20  # orders of magnitude above
    assert massive_channels(planted) == [PLANTED]
    assert massive_channels([planted[0], planted[1]]) == [PLANTED]  # the pair's maps given one by one
    assert massive_channels(plain) == []
    assert pck(plain) >= 0.75
    assert pck(planted) <= 0.2  # every pixel looks alike to cosine similarity
    dropped = drop_channels(planted, massive_channels(planted))
    assert dropped.shape == (2, 15, 8, 8)
    torch.testing.assert_close(dropped, drop_channels(plain, [PLANTED]), rtol=0, atol=1e-4)  # the other channels
    assert pck(dropped) >= 0.75 and abs(pck(dropped) - pck(plain)) <= 0.05


def test_the_rule_is_the_channel_peak_against_the_median_magnitude():
    maps = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    median = float(maps.abs().median())
    maps[1, 4, 2, 3] = -2 * MASSIVE_RATIO * median  # one huge value, in one image, is enough
    maps[0, 1, 1, 1] = 0.5 * MASSIVE_RATIO * median  # large, but below the ratio
    median = float(maps.abs().median())  # two values of 300 changed: the median barely moves
    assert maps[:, 4].abs().max() >= MASSIVE_RATIO * median > maps[:, 1].abs().max()
    assert massive_channels(maps) == [4]
    assert massive_channels(maps.numpy().astype(np.float16)) == [4]  # arrays, float16 as the store keeps them
    assert massive_channels(maps, ratio=100) == [1, 4]
    assert massive_channels(torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))) == []
    assert massive_channels(torch.zeros(3, 4, 4)) == []


def test_zeros_do_not_set_the_scale():
    """Mostly-zero maps (after a ReLU): the median is of the nonzero magnitudes, so nothing ordinary is massive."""
    maps = torch.zeros(8, 10, 10)
    maps[:, :3, :3] = torch.rand(8, 3, 3, generator=torch.Generator().manual_seed(1)) + 0.5  # 9 % of values nonzero
    assert massive_channels(maps) == []
    maps[5, 0, 0] = 1e4
    assert massive_channels(maps) == [5]


def test_drop_channels_keeps_the_others_in_order_for_tensors_and_arrays():
    maps = torch.arange(2 * 5 * 2 * 3, dtype=torch.float32).reshape(2, 5, 2, 3)
    dropped = drop_channels(maps, [3, 1])
    assert isinstance(dropped, torch.Tensor) and torch.equal(dropped, maps[:, [0, 2, 4]])
    one = maps[0].numpy()
    assert np.array_equal(drop_channels(one, [0]), one[1:]) and isinstance(drop_channels(one, [0]), np.ndarray)
    assert torch.equal(drop_channels(maps, []), maps)
    source, target = F.normalize(maps[0].flatten(1).T, dim=1), F.normalize(maps[1].flatten(1).T, dim=1)
    zeroed = maps.clone()
    zeroed[:, [1, 3]] = 0
    kept = [F.normalize(m.flatten(1).T, dim=1) for m in (dropped[0], dropped[1])]
    zero = [F.normalize(m.flatten(1).T, dim=1) for m in (zeroed[0], zeroed[1])]
    torch.testing.assert_close(kept[0] @ kept[1].T, zero[0] @ zero[1].T)  # as if zeroed, for cosine similarity
    assert not torch.allclose(source @ target.T, kept[0] @ kept[1].T)


@pytest.mark.parametrize("call, words", [
    (lambda: drop_channels(torch.zeros(4, 2, 2), [4]), "channel 4 is out of range: the feature maps have channels 0..3"),
    (lambda: massive_channels(torch.zeros(4, 2)), "feature maps of shape (4, 2): pass (C, h, w) or (N, C, h, w)"),
    (lambda: massive_channels([torch.ones(4, 2, 2), torch.ones(5, 2, 2)]), "feature maps with [4, 5] channels"),
    (lambda: massive_channels(torch.ones(4, 2, 2), ratio=1), "massive-activation ratio 1: give a number above 1"),
    (lambda: massive_channels([]), "massive_channels: no feature maps given"),
])
def test_bad_input_names_the_value(call, words):
    with pytest.raises(ProbeError) as error:
        call()
    assert str(error.value).startswith(words), str(error.value)


def test_probe_correspond_drop_massive_restores_the_matches_and_names_the_channel(dits, tmp_path):
    """The same planted DiT through `probe correspond`: the shifted pair as an SPair-layout folder, keypoints on a grid
    of the part both views show; --drop-massive finds channel 7 of block 1 and the PCK comes back."""
    import json

    from spair_layout import write_image, write_pair
    from typer.testing import CliRunner

    from probe.cli import app

    data = tmp_path / "pairs"
    pictures = ((shifted_pair() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name, picture in zip(("source.png", "target.png"), pictures):
        write_image(data, "tiles", name, picture)
    ys, xs = np.meshgrid(np.arange(6, SIZE - 4, 4), np.arange(SHIFT + 6, SIZE - 4, 4), indexing="ij")
    source = np.stack([xs.ravel(), ys.ravel()], axis=1)
    write_pair(data, "shifted", "tiles", "source.png", "target.png", (SIZE, SIZE), (SIZE, SIZE), source,
               source - [SHIFT, 0], (0, 0, SIZE, SIZE), (0, 0, SIZE, SIZE))
    scores = {}
    for option in ([], ["--drop-massive"]):
        out = tmp_path / f"out{len(option)}"
        result = CliRunner().invoke(app, ["correspond", "--data", str(data), "--backbone", "dit", "--checkpoint",
                                          str(dits["planted"]), "--blocks", str(BLOCK), "--steps", "0", "--quiet",
                                          "--out", str(out), *option], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        scores[bool(option)] = json.loads((out / "metrics.json").read_text())
    assert scores[False]["pck_point"]["0.1"] <= 20 and "massive_channels" not in scores[False]
    assert scores[True]["pck_point"]["0.1"] >= 75
    assert scores[True]["massive_channels"] == {f"t0_block{BLOCK}": [PLANTED]}
