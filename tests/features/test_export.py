"""`probe features --pca`: each cell's top 3 principal components, as numpy's SVD gives them, drawn per image."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from probe.cli import app
from probe.errors import ProbeError
from probe.features.export import pca_projections


def svd_projections(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels' centred feature vectors projected on the top 3 right singular vectors, and the variance shares."""
    pixels = features.reshape(features.shape[0], -1).T.astype(np.float64)
    centred = pixels - pixels.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:3].T, singular[:3] ** 2 / (singular ** 2).sum()


def assert_projections(features: np.ndarray) -> None:
    projections, explained = pca_projections(features)
    expected, shares = svd_projections(features)
    assert projections.shape == (*features.shape[1:], 3)
    flat = projections.reshape(-1, 3)
    for channel in range(3):  # a component's sign is arbitrary: each channel is + or - numpy's projection
        sign = np.sign(flat[:, channel] @ expected[:, channel])
        assert sign != 0
        np.testing.assert_allclose(flat[:, channel], sign * expected[:, channel], atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(explained, shares, rtol=1e-10)
    assert explained[0] >= explained[1] >= explained[2] > 0


def test_pca_projections_are_numpys_svd_on_a_map_with_three_directions():
    rng = np.random.default_rng(0)
    height, width, channels = 6, 7, 20
    directions = np.linalg.qr(rng.normal(size=(channels, 3)))[0].T  # 3 orthonormal directions of the C space
    weights = rng.normal(size=(height * width, 3)) * [9.0, 3.0, 1.0]
    pixels = weights @ directions + 0.01 * rng.normal(size=(height * width, channels)) + 5.0
    features = pixels.T.reshape(channels, height, width)
    assert_projections(features)
    projections, explained = pca_projections(features)
    assert explained.sum() > 0.99  # three directions hold nearly all the variance
    # the first channel is the projection on the direction of the largest spread, up to its sign
    first = projections.reshape(-1, 3)[:, 0]
    assert abs(np.corrcoef(first, weights[:, 0])[0, 1]) > 0.999
    # each component signed so that its largest loading is positive (not by the SVD's chance); the loadings are
    # the centred pixels' products with the projections, up to a positive factor
    centred = pixels - pixels.mean(0)
    loadings = centred.T @ projections.reshape(-1, 3)
    assert (loadings[np.abs(loadings).argmax(0), range(3)] > 0).all()
    np.testing.assert_allclose(pca_projections(-features)[0], -projections, atol=1e-9)


def test_pca_of_a_map_of_rank_one_pads_zeros_and_refuses_a_flat_array():
    features = np.outer(np.arange(4.0), np.arange(12.0)).reshape(4, 3, 4)
    projections, explained = pca_projections(features)
    assert explained[0] == pytest.approx(1.0) and explained[1:] == pytest.approx([0, 0], abs=1e-20)
    assert np.abs(projections[..., 1:]).max() < 1e-9 * np.abs(projections[..., 0]).max()
    with pytest.raises(ProbeError, match=r"\(C, h, w\)"):
        pca_projections(np.zeros((4, 5)))


def test_features_pca_writes_a_picture_per_image_and_cell(tmp_path, tiny_domain, fixture_model):
    checkpoint, flags = fixture_model
    out = tmp_path / "feats"
    result = CliRunner().invoke(app, [str(a) for a in (
        "features", "--images", tiny_domain / "real" / "test", "--checkpoint", checkpoint, "--model-flags", flags,
        "--blocks", "2,6", "--steps", "50", "--pca", "--out", out, "--quiet")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "6 PCA pictures" in " ".join(result.output.split())
    cells = ["t50_block2", "t50_block6"]
    expected = sorted(f"{stem}_{cell}.png" for stem in ("000", "001", "002") for cell in cells)
    assert sorted(p.name for p in (out / "pca").iterdir()) == expected
    for name in expected:
        with Image.open(out / "pca" / name) as png:
            assert png.format == "PNG" and png.size[0] > 400
            assert len(png.convert("RGB").getcolors(maxcolors=1 << 24)) > 50  # a picture, not a blank
    maps = np.load(out / "000.npz")
    for cell in cells:
        assert_projections(maps[cell])


def test_a_float16_export_keeps_a_map_beyond_float16s_range_in_float32(tmp_path, caplog):
    """Issue 33: `probe features --dtype float16` writes a map that float16 would turn into inf in float32, as the
    activation store does, and names it; the other maps stay float16."""
    from probe.backbones.pixels import PixelBackbone
    from probe.data.layout import LabeledImage
    from probe.features.export import export_features

    rng = np.random.default_rng(0)
    images = [LabeledImage(f"img{i}", rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32), None) for i in range(2)]
    images[1].image[0, 3, 4] = 1e5
    written = export_features(PixelBackbone(16), images, tmp_path / "feats", dtype="float16", progress=False)
    assert [p.name for p in written] == ["img0.npz", "img1.npz"]
    plain, wide = (np.load(p)["rgb3x3"] for p in written)
    assert plain.dtype == np.float16 and wide.dtype == np.float32
    assert np.isfinite(wide).all() and wide.max() == 1e5  # the 3x3 neighbourhoods of the planted pixel hold it
    assert np.array_equal(wide, PixelBackbone(16).features(torch.from_numpy(images[1].image[None]), ["img1"], None)
                          ["rgb3x3"][0].numpy())
    warnings = [r.getMessage() for r in caplog.records if "beyond float16's range" in r.getMessage()]
    assert warnings == ["1 map held values beyond float16's range (+-65504), e.g. img1.npz/rgb3x3: written in float32"]
