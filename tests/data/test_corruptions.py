"""The ImageNet-C corruptions of Fig. 6: shapes, strength by severity, seeding, numpy's global RNG, parse errors."""

import random

import numpy as np
import pytest

from probe.data.corruptions import (CORRUPTIONS, SEVERITIES, corrupt, corruption_seed, parse_corruptions, parse_severities)
from probe.errors import ProbeError


def _scene(size: int) -> np.ndarray:
    """A smooth colour gradient with a bright square and a dark disc: edges and flat areas, like a photo's."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([60 + 120 * x, 80 + 100 * y, 140 - 60 * x * y], axis=-1)
    image[size // 8:size // 2, size // 8:size // 2] = (230, 220, 90)
    image[(y - 0.7) ** 2 + (x - 0.65) ** 2 < 0.04] = (25, 30, 70)
    return image.astype(np.uint8)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_names_are_the_packages():
    import imagecorruptions

    assert CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("all"))
    assert len(CORRUPTIONS) == 19 and SEVERITIES == (1, 2, 3, 4, 5)


def test_every_corruption_at_32_pixels_changes_the_image_more_at_severity_5():
    image = _scene(32)
    clean = image.copy()
    distance = {}
    for name in CORRUPTIONS:
        for severity in (1, 5):
            out = corrupt(image, name, severity, seed=0)
            assert out.dtype == np.uint8 and out.shape == (32, 32, 3), name
            distance[name, severity] = _mad(out, clean)
            assert distance[name, severity] > 0.5, (name, severity)
    assert np.array_equal(image, clean)  # the input is not modified
    mild = np.mean([distance[name, 1] for name in CORRUPTIONS])
    harsh = np.mean([distance[name, 5] for name in CORRUPTIONS])
    assert harsh > 1.5 * mild
    # per corruption too, except frost (severity 5 keeps less of the image but adds more frost: as far from clean)
    # and pixelate (on this smooth scene, 0.6x and 0.25x blocks are about as far from clean)
    assert all(distance[name, 5] > distance[name, 1] for name in CORRUPTIONS if name not in ("frost", "pixelate"))


def test_the_same_seed_gives_the_same_bytes_and_seeds_differ():
    image = _scene(32)
    for name in CORRUPTIONS:
        assert np.array_equal(corrupt(image, name, 3, seed=7), corrupt(image, name, 3, seed=7)), name
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "fog", "snow", "elastic_transform"):
        assert not np.array_equal(corrupt(image, name, 3, seed=7), corrupt(image, name, 3, seed=8)), name
    assert np.array_equal(corrupt(image, "contrast", 3, seed=7), corrupt(image, "contrast", 3, seed=8))


def test_global_random_states_are_left_as_found():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(3), random.random()
    np.random.seed(123)
    random.seed(123)
    for name in CORRUPTIONS:
        corrupt(_scene(32), name, 5, seed=1)
    assert np.array_equal(np.random.random(3), expected_np)
    assert random.random() == expected_py


def test_corruption_seed_is_deterministic_and_depends_on_every_part():
    base = corruption_seed(0, "img_001", "fog", 3)
    assert base == corruption_seed(0, "img_001", "fog", 3)
    assert isinstance(base, int) and 0 <= base < 2 ** 32
    others = {corruption_seed(1, "img_001", "fog", 3), corruption_seed(0, "img_002", "fog", 3),
              corruption_seed(0, "img_001", "snow", 3), corruption_seed(0, "img_001", "fog", 4)}
    assert base not in others and len(others) == 4


def test_256_pixel_images():
    image = _scene(256)
    for name in ("glass_blur", "zoom_blur", "frost", "fog", "jpeg_compression"):
        out = corrupt(image, name, 5, seed=0)
        assert out.dtype == np.uint8 and out.shape == (256, 256, 3), name
        assert _mad(out, image) > 2, name
    assert corrupt(image[:, :200], "snow", 2, seed=0).shape == (256, 200, 3)


def test_parse():
    assert parse_corruptions("all") == list(CORRUPTIONS)
    assert parse_corruptions(" fog, snow ,fog") == ["fog", "snow"]
    assert parse_severities("all") == [1, 2, 3, 4, 5]
    assert parse_severities("5,1, 3") == [5, 1, 3]


@pytest.mark.parametrize("text, words", [("fog,fogg", ["'fogg'", "gaussian_noise", "saturate"]),
                                         ("", ["no corruption", "fog"])])
def test_parse_corruptions_errors(text, words):
    with pytest.raises(ProbeError) as error:
        parse_corruptions(text)
    assert all(word in str(error.value) for word in words) and "\n" not in str(error.value)


@pytest.mark.parametrize("text, word", [("1,6", "6"), ("0", "0"), ("x", "'x'"), ("2.5", "'2.5'"), ("", "no severity")])
def test_parse_severities_errors(text, word):
    with pytest.raises(ProbeError, match="1..5") as error:
        parse_severities(text)
    assert word in str(error.value)


def test_corrupt_refuses_bad_input():
    with pytest.raises(ProbeError, match=r"glass_blur needs images of at least 32x32 pixels.*got 16x40"):
        corrupt(np.zeros((16, 40, 3), np.uint8), "glass_blur", 1, seed=0)
    with pytest.raises(ProbeError, match="uint8"):
        corrupt(np.zeros((32, 32, 3), np.float32), "fog", 1, seed=0)
    with pytest.raises(ProbeError, match="'blurr'"):
        corrupt(_scene(32), "blurr", 1, seed=0)
    with pytest.raises(ProbeError, match="bad severity 6"):
        corrupt(_scene(32), "fog", 6, seed=0)


def test_a_draw_with_invalid_pixels_is_redrawn_with_the_next_derived_seed():
    from probe.data.corruptions import _draw

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seeds = [int(np.random.SeedSequence([18, attempt]).generate_state(1)[0]) for attempt in (0, 1)]
    assert _draw(image, "spatter", 1, seeds[0]) is None  # spatter's mud divides 0 by 0 on this 32x32 image
    redrawn = _draw(image, "spatter", 1, seeds[1])
    assert redrawn is not None and np.array_equal(corrupt(image, "spatter", 1, 18), redrawn)
    assert np.array_equal(corrupt(image, "fog", 1, 18), _draw(image, "fog", 1, seeds[0]))  # a valid first draw stays
