"""The activation store and the pixel sampler: reuse, float16 storage, and sparse upsampling equal to dense."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import FIXTURES
from probe.data.layout import LabeledImage
from probe.backbones.adm import ADMBackbone
from probe.backbones.noise import NoisePolicy
from probe.backbones.pixels import PixelBackbone
from probe.models import load_model
from probe.features.store import ActivationStore, Extracted, image_key
from probe.features.sampler import PixelSampler, StorePixels

META = json.loads((FIXTURES / "adm_tiny32.json").read_text())


def images(n: int, seed: int = 0) -> list[LabeledImage]:
    rng = np.random.default_rng(seed)
    return [LabeledImage(f"img{i}", rng.uniform(-1, 1, (3, 32, 32)).astype(np.float32),
                         rng.integers(0, 4, (32, 32))) for i in range(n)]


@pytest.fixture(scope="module")
def backbone():
    model = load_model(FIXTURES / META["checkpoint"], META["flags"])
    return ADMBackbone(model, [0, 2, 5, 8], [50, 250], NoisePolicy("shared", 1, 0))


@pytest.mark.parametrize("in_size,out_size", [(1, 32), (2, 32), (4, 32), (8, 32), (16, 32), (32, 32), (64, 32),
                                              (8, 256), (32, 256), (128, 256), (5, 17), (7, 32)])
def test_sampler_equals_dense_upsampling(in_size, out_size):
    """gather() equals F.interpolate(bilinear, align_corners=False) then indexing, to float32 rounding.

    Bit equality is not asserted: torch's own kernel differs by 1-2 ulp between its scalar and vectorised paths
    (the same call on a batch of 1 and of 3 gives different last bits)."""
    native = torch.randn(3, 6, in_size, in_size, generator=torch.Generator().manual_seed(in_size)).half()
    sampler = PixelSampler([native], out_size)
    dense = F.interpolate(native.float(), size=(out_size, out_size), mode="bilinear", align_corners=False)
    rng = np.random.default_rng(0)
    idx, ys, xs = rng.integers(0, 3, 500), rng.integers(0, out_size, 500), rng.integers(0, out_size, 500)
    expected = dense[idx, :, ys, xs]
    got = sampler.gather(idx, ys, xs)
    assert got.shape == (500, 6)
    assert torch.allclose(got, expected, rtol=0, atol=4e-6 * float(native.abs().max()))


@pytest.mark.parametrize("rows", [slice(0, 256), slice(40, 72), slice(250, 256)])
def test_image_features_equal_gather_bit_for_bit(rows):
    """The row-band path used for prediction reads the same numbers as the per-pixel path used in training."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, channels, size, size + 3, generator=generator).half()  # non-square on purpose
            for channels, size in ((5, 1), (4, 8), (3, 32), (6, 128), (2, 256))]
    sampler = PixelSampler(maps, 256)
    ys, xs = np.meshgrid(np.arange(256)[rows], np.arange(256), indexing="ij")
    expected = sampler.gather(np.full(ys.size, 1), ys.ravel(), xs.ravel())
    got = sampler.image_features(1, rows)
    assert got.shape == (ys.size, 20)
    assert torch.equal(got, expected)
    assert not torch.equal(got, sampler.image_features(0, rows))


def test_store_writes_float16_and_reuses(tmp_path, backbone):
    store = ActivationStore(backbone, tmp_path)
    imgs = images(3)
    filled = store.fill(imgs, batch_size=2, progress=False)
    files = sorted(store.root.rglob("*.npy"))
    assert len(files) == 3 * 4 * 2
    assert (filled.image_steps, filled.files) == (3 * 2, 3 * 4 * 2) and filled.seconds > 0  # what fill computed
    stored = store.read(imgs[1], "t250_block5")
    direct = backbone(torch.from_numpy(imgs[1].image[None]), [imgs[1].stem], 250)["t250_block5"][0].numpy()
    assert stored.dtype == np.float16 and stored.shape == direct.shape
    # float16 of the activation (batching changes float32 last bits, so allow one float16 step)
    assert np.all(np.abs(stored.astype(np.float32) - direct) <= np.abs(direct) * 2 ** -10 + 1e-4)
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert store.fill(imgs, batch_size=2, progress=False) == Extracted()  # everything cached: nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    changed = LabeledImage(imgs[0].stem, imgs[0].image * 0.5, imgs[0].labels)  # same name, new pixels: new entry
    store.fill([changed], progress=False)
    assert len(list(store.root.rglob("*.npy"))) == 4 * 4 * 2 == store.written  # the files this store wrote


def test_an_images_activations_do_not_depend_on_the_images_extracted_with_it(tmp_path, backbone):
    """`probe segment` extracts train + test together, the API's Segmenter each split apart: the same image must get
    the same bits either way (they share cache entries). Unpadded, a batch of 5 and one of 9 round differently."""
    imgs = images(9)
    together, apart = ActivationStore(backbone, tmp_path / "together"), ActivationStore(backbone, tmp_path / "apart")
    together.fill(imgs, batch_size=16, progress=False)
    apart.fill(imgs[:5], batch_size=16, progress=False)
    apart.fill(imgs[5:], batch_size=16, progress=False)
    for image in imgs:
        for name in backbone.names:
            assert np.array_equal(together.read(image, name), apart.read(image, name)), (image.stem, name)


def test_store_key_depends_on_seed_and_noise(tmp_path, backbone):
    other = ADMBackbone(backbone.model, backbone.blocks, backbone.steps, NoisePolicy("shared", 1, 1))
    per_image = ADMBackbone(backbone.model, backbone.blocks, backbone.steps, NoisePolicy("per-image", 1, 0))
    roots = {ActivationStore(b, tmp_path).root for b in (backbone, other, per_image)}
    assert len(roots) == 3


def test_noise_policies():
    stems = ["a", "b"]
    shared = NoisePolicy("shared", 1, 0).noises(stems, (3, 4, 4))
    assert len(shared) == 1 and torch.equal(shared[0][0], shared[0][1])
    per_image = NoisePolicy.parse("per-image", 0).noises(stems, (3, 4, 4))[0]
    assert not torch.equal(per_image[0], per_image[1])
    assert torch.equal(per_image[1], NoisePolicy.parse("per-image", 0).noises(["b"], (3, 4, 4))[0][0])
    mean4 = NoisePolicy.parse("mean-of-4", 0).noises(stems, (3, 4, 4))
    assert len(mean4) == 4 and torch.equal(mean4[0], shared[0]) and not torch.equal(mean4[1], mean4[0])


def test_mean_of_k_averages_activations(backbone):
    from probe.backbones.base import capture

    image = torch.from_numpy(images(1)[0].image[None])
    k2 = ADMBackbone(backbone.model, [5], [250], NoisePolicy.parse("mean-of-2", 0))(image, ["x"], 250)["t250_block5"]
    k1 = ADMBackbone(backbone.model, [5], [250], NoisePolicy.parse("mean-of-1", 0))(image, ["x"], 250)["t250_block5"]
    shared = ADMBackbone(backbone.model, [5], [250], NoisePolicy.parse("shared", 0))(image, ["x"], 250)["t250_block5"]
    assert torch.equal(k1, shared)
    singles = []
    t = torch.tensor([250])
    for noise in NoisePolicy.parse("mean-of-2", 0).noises(["x"], (3, 32, 32)):
        with torch.no_grad(), capture({5: backbone.model.unet.output_blocks[5]}, False) as captured:
            backbone.model.unet(backbone.diffusion.q_sample(image, t, noise), t)
        singles.append(captured[5])
    assert not torch.equal(singles[0], singles[1])
    assert torch.allclose(k2, (singles[0] + singles[1]) / 2, atol=1e-6)


def test_pixel_source_drops_ignore_and_reads_features(tmp_path):
    imgs = images(2)
    imgs[0].labels[:5] = 255
    store = ActivationStore(PixelBackbone(32), tmp_path)
    store.fill(imgs, progress=False)
    source = StorePixels(PixelSampler.from_store(store, imgs, ["rgb3x3"], 32), [im.labels for im in imgs], 255)
    assert len(source.labels) == 2 * 32 * 32 - 5 * 32 and (source.labels != 255).all()
    k = 40  # first kept pixel of image 0 is (5, 0); pixel k of it is (6, 8)
    feats = source.features(np.array([k]))[0].numpy()
    y, x = source.ys[k], source.xs[k]
    window = np.pad(imgs[0].image, ((0, 0), (1, 1), (1, 1)))[:, y:y + 3, x:x + 3].reshape(-1)
    assert (y, x) == (6, 8)
    assert np.allclose(feats, window.astype(np.float16).astype(np.float32))


def stored_files(store: ActivationStore) -> dict[str, bytes]:
    return {str(p.relative_to(store.root)): p.read_bytes() for p in sorted(store.root.rglob("*.npy"))}


def test_damaged_cache_files_are_recomputed_with_a_warning(tmp_path, backbone, caplog):
    store = ActivationStore(backbone, tmp_path)
    batch = images(2)
    store.fill(batch, progress=False)
    clean = stored_files(store)
    assert len(clean) == 2 * 4 * 2 and json.loads((store.root / "identity.json").read_text()) == backbone.identity
    truncated = store.path(image_key(batch[0]), "t50_block2")
    truncated.write_bytes(truncated.read_bytes()[:200])  # a killed writer of an older version, a full disk
    garbage = store.path(image_key(batch[1]), "t250_block8")
    garbage.write_bytes(b"\x00" * 64)
    wrong = store.path(image_key(batch[1]), "t50_block0")
    np.save(wrong, np.zeros((4, 4), dtype=np.float32))
    redone = store.fill(batch, progress=False)
    assert stored_files(store) == clean
    assert redone.files == 2 * 2 * 4  # the batches (steps) holding a damaged file are redone
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 3 and all("recomputing it" in w for w in warnings)
    assert str(truncated) in warnings[0] or any(str(truncated) in w for w in warnings)
    assert not list(store.root.rglob("*.partial*"))


def test_cache_entries_and_clear(tmp_path, backbone, monkeypatch):
    import os
    import time

    from probe.utils.cache import cache_entries, clear_cache

    monkeypatch.setenv("PROBE_CACHE", str(tmp_path))
    ActivationStore(backbone).fill(images(2), progress=False)
    pixels = ActivationStore(PixelBackbone(32))
    pixels.fill(images(3), progress=False)
    entries = cache_entries().set_index("backbone")
    ddpm = f"ddpm checkpoint={backbone.model.checkpoint_hash} noise=shared seed=0"
    assert sorted(entries.index) == sorted([ddpm, "pixels"])
    assert entries.loc[ddpm, "images"] == 2 and entries.loc[ddpm, "files"] == 2 * 8 + 1
    assert entries.loc["pixels", "images"] == 3
    assert entries.loc[ddpm, "bytes"] == sum(p.stat().st_size for p in ActivationStore(backbone).root.rglob("*") if p.is_file())
    old = time.time() - 40 * 86400
    for path in [pixels.root, *pixels.root.rglob("*")]:
        os.utime(path, (old, old))
    assert list(clear_cache(older_than_days=30)["backbone"]) == ["pixels"]
    assert not pixels.root.exists() and ActivationStore(backbone).root.is_dir()
    assert len(clear_cache()) == 1 and list(cache_entries()["name"]) == []
    assert [p.name for p in (tmp_path / "activations").iterdir()] == []


@pytest.mark.parametrize("rows", [slice(0, 64), slice(10, 27), slice(60, 64)])
def test_projected_rows_equal_upsampled_features_times_weight(rows):
    """Projecting at native resolution then upsampling equals upsampling then projecting (bilinear is linear):
    maps of one size share an upsampling; sizes below, at and above the output, non-square and non-integer."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, channels, height, width, generator=generator).half()
            for channels, height, width in ((5, 8, 8), (3, 8, 8), (4, 16, 19), (6, 64, 64), (2, 5, 7), (3, 16, 19))]
    sampler = PixelSampler(maps, 64)
    weight = torch.randn(sampler.dim, 24, generator=generator)
    expected = sampler.image_features(1, rows) @ weight
    projected = sampler.projected(1, weight)
    assert sorted(projected.parts) == [(5, 7), (8, 8), (16, 19), (64, 64)]
    got = projected.rows(rows)
    assert got.shape == expected.shape == (len(range(64)[rows]) * 64, 24)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert (got - sampler.image_features(0, rows) @ weight).abs().max() > 0.1  # the other image differs
    rounded = sampler.projected(1, weight, torch.bfloat16).rows(rows)
    assert 1e-4 * expected.abs().max() < (rounded - expected).abs().max() <= 2 ** -6 * expected.abs().max()


def test_maps_of_one_size_are_read_together_and_keep_their_columns():
    """Maps sharing a native size are gathered as one group; each map's channels stay where `maps` puts them."""
    generator = torch.Generator().manual_seed(3)
    maps = [torch.randn(2, channels, size, size, generator=generator).half()
            for channels, size in ((3, 8), (2, 16), (4, 8), (1, 16), (2, 8))]
    sampler = PixelSampler(maps, 32)
    assert [tuple(g.shape) for g in sampler.groups] == [(2, 8, 8, 9), (2, 16, 16, 3)]
    dense = torch.cat([F.interpolate(m.float(), size=(32, 32), mode="bilinear", align_corners=False) for m in maps], 1)
    rng = np.random.default_rng(1)
    idx, ys, xs = rng.integers(0, 2, 300), rng.integers(0, 32, 300), rng.integers(0, 32, 300)
    got = sampler.gather(idx, ys, xs)
    assert torch.allclose(got, dense[idx, :, ys, xs], rtol=0, atol=1e-5)
    rows, columns = np.meshgrid(np.arange(32)[5:9], np.arange(32), indexing="ij")
    assert torch.equal(sampler.image_features(1, slice(5, 9)),
                       sampler.gather(np.ones(rows.size, int), rows.ravel(), columns.ravel()))
    sampler.compile()  # one fused loop; the arithmetic stays the eager gather's (rounding aside)
    assert torch.allclose(sampler.gather(idx, ys, xs), got, rtol=0, atol=1e-6) and sampler._gather.compiled


def test_sampler_upsamples_to_each_images_own_size():
    """Output sizes other than square and one per image (own data at its own size, images of several sizes):
    gather equals dense bilinear upsampling of each image to its own (height, width), image_features equals gather
    bit for bit, and the projected rows equal the upsampled features times the weight."""
    generator = torch.Generator().manual_seed(5)
    maps = [torch.randn(3, channels, size, size, generator=generator).half() for channels, size in ((4, 8), (3, 16))]
    sizes = [(48, 64), (64, 64), (24, 40)]
    sampler = PixelSampler(maps, sizes)
    rng = np.random.default_rng(2)
    for index, (height, width) in enumerate(sizes):
        dense = torch.cat([F.interpolate(m[index:index + 1].float(), size=(height, width), mode="bilinear",
                                         align_corners=False) for m in maps], 1)[0]
        ys, xs = rng.integers(0, height, 200), rng.integers(0, width, 200)
        got = sampler.gather(np.full(200, index), ys, xs)
        assert torch.allclose(got, dense[:, ys, xs].T, rtol=0, atol=1e-5)
        rows, columns = np.meshgrid(np.arange(height)[3:9], np.arange(width), indexing="ij")
        band = sampler.image_features(index, slice(3, 9))
        assert band.shape == (6 * width, 7)
        assert torch.equal(band, sampler.gather(np.full(rows.size, index), rows.ravel(), columns.ravel()))
        weight = torch.randn(sampler.dim, 5, generator=generator)
        one = PixelSampler([m[index:index + 1] for m in maps], (height, width))
        projected = one.projected(0, weight).rows(slice(3, 9))
        assert projected.shape == (6 * width, 5)
        assert (projected - band @ weight).abs().max() <= 1e-4 * (band @ weight).abs().max()
    uniform = PixelSampler(maps, (48, 64))  # one non-square size for all images
    assert (uniform.height, uniform.width) == (48, 64) and uniform.row_offset is None
    assert torch.equal(uniform.image_features(0, slice(0, 48)), sampler.image_features(0, slice(0, 48)))


def test_a_map_beyond_float16s_range_is_kept_in_float32_and_read_back(tmp_path, caplog, monkeypatch):
    """Issue 33: float16 turns |x| >= 65520 into inf. A map holding a planted 1e5 is stored in float32, named in the
    store's list, the fill's record and `probe cache info`, and the sampler gives its values back."""
    from typer.testing import CliRunner

    from probe.cli import app
    from probe.utils.cache import FLOAT32_FILE

    imgs = images(2)
    imgs[1].image[0, 3, 4] = 1e5
    imgs[1].image[2, 7, 7] = -2.5e5
    store = ActivationStore(PixelBackbone(32), tmp_path / "cache" / "activations")  # the test's cache (conftest)
    filled = store.fill(imgs, progress=False)
    wide = f"{image_key(imgs[1])}/rgb3x3"
    assert filled.float32_maps == [wide] == store.float32_maps()
    assert (store.root / FLOAT32_FILE).read_text() == wide + "\n"
    assert store.read(imgs[0], "rgb3x3").dtype == np.float16  # the others stay float16
    stored = store.read(imgs[1], "rgb3x3")
    assert stored.dtype == np.float32 and np.isfinite(stored).all()
    assert stored.max() == 1e5 and stored.min() == -2.5e5
    assert np.array_equal(stored, PixelBackbone(32).features(torch.from_numpy(imgs[1].image[None]), ["x"], None)
                          ["rgb3x3"][0].numpy())  # float32: the activation itself
    warnings = [r.getMessage() for r in caplog.records if "beyond float16's range" in r.getMessage()]
    assert len(warnings) == 1 and wide in warnings[0] and "kept in float32" in warnings[0]

    sampler = PixelSampler.from_store(store, imgs, ["rgb3x3"], 32)
    features = sampler.gather(np.array([1, 1, 0]), np.array([3, 7, 3]), np.array([4, 7, 4]))
    assert torch.isfinite(features).all()
    assert features[0].max() == 1e5 and features[1].min() == -2.5e5 and features[2].abs().max() <= 1
    assert torch.equal(sampler.image_features(1, slice(3, 4))[4], features[0])  # the banded path reads the same

    again = store.fill(imgs, progress=False)  # cached: nothing computed, the map still named
    assert (again.files, again.float32_maps) == (0, [wide])
    monkeypatch.setenv("COLUMNS", "250")
    info = CliRunner().invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and "float16, 1 map float32" in info.output, info.output


def test_the_overflow_check_keeps_float16_up_to_its_largest_value():
    from probe.features.store import stored_array

    assert stored_array(np.array([[[65504.0, -65519.0]]], dtype=np.float32)).dtype == np.float16  # rounds to 65504
    assert stored_array(np.array([[[65520.0]]], dtype=np.float32)).dtype == np.float32  # would round to inf
    assert stored_array(np.array([[[np.inf, 1.0]]], dtype=np.float32)).dtype == np.float16  # an inf stays an inf
