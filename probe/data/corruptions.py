"""ImageNet-C corruptions (Hendrycks & Dietterich, 2019) of uint8 RGB images, seeded: the test images of Fig. 6.

The corruptions are those of the package imagecorruptions-imaug, the maintained fork of bethgelab's imagecorruptions
(whose last release, 1.1.2, no longer imports: it needs pkg_resources, np.float_ and scikit-image's multichannel=).
Most corruptions draw from numpy's global RNG; impulse_noise (scikit-image) and glass_blur (numba's own RNG) take a
seed argument. corrupt() seeds all of them and gives numpy's global state back, so callers' draws are unaffected.
"""

import warnings
import zlib

import numpy as np

from probe.errors import ProbeError

# The package's order (imagecorruptions.get_corruption_names("all")): the 15 of ImageNet-C, then its 4 held-out ones.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32  # imagecorruptions refuses smaller images (its constants are ImageNet-C's, set for 224 pixels)
_OWN_SEED = ("impulse_noise", "glass_blur")
REDRAWS = 5  # draws of a corruption before giving up on an image  # the corruptions that take a seed instead of using numpy's global RNG


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ProbeError(f"unknown corruption {name!r}: use 'all' or a comma list of {', '.join(CORRUPTIONS)}")


def _check_severity(severity: object) -> None:
    if severity not in SEVERITIES:
        raise ProbeError(f"bad severity {severity!r}: severities are integers 1..5 ('all' or a comma list, e.g. 1,3,5)")


def parse_corruptions(text: str) -> list[str]:
    """'all' or a comma list of corruption names -> the names, in the order given, each once."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ProbeError(f"no corruption named: use 'all' or a comma list of {', '.join(CORRUPTIONS)}")
    for name in names:
        _check_name(name)
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """'all' or a comma list of severities in 1..5 -> the severities, in the order given, each once."""
    if text.strip() == "all":
        return list(SEVERITIES)
    words = [word.strip() for word in text.split(",") if word.strip()]
    if not words:
        raise ProbeError("no severity given: severities are integers 1..5 ('all' or a comma list, e.g. 1,3,5)")
    for word in words:
        _check_severity(int(word) if word.isdigit() else word)
    return list(dict.fromkeys(int(word) for word in words))


def corruption_seed(seed: int, stem: str, name: str, severity: int) -> int:
    """The seed for corrupting the image `stem` with `name` at `severity` in a run seeded `seed` (a 32-bit int)."""
    _check_name(name)
    _check_severity(severity)
    entropy = [seed, zlib.crc32(stem.encode()), CORRUPTIONS.index(name), severity]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """`image`, uint8 (H, W, 3) with H, W >= 32, corrupted by `name` at `severity`: uint8, same shape.

    The same (image, name, severity, seed) always gives the same bytes; numpy's global RNG state is left as found.
    A draw that produced invalid (NaN) pixels is redrawn with the next seed derived from `seed`.
    """
    _check_name(name)
    _check_severity(severity)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ProbeError(f"{name} needs a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_SIZE:
        raise ProbeError(f"{name} needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (ImageNet-C's corruptions), "
                         f"got {image.shape[0]}x{image.shape[1]}: use larger images")
    for attempt in range(REDRAWS):
        corrupted = _draw(image, name, severity, int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0]))
        if corrupted is not None:
            return corrupted
    raise ProbeError(f"{name} at severity {severity} gave an invalid image {REDRAWS} times for seed {seed}: "
                     "use larger images or leave it out of --corruptions")


def _draw(image: np.ndarray, name: str, severity: int, seed32: int) -> np.ndarray | None:
    """One corruption with numpy's global RNG seeded by `seed32`, or None when it divided 0 by 0 (spatter's mud
    can on small images: its NaN pixels would be cast to arbitrary bytes)."""
    import imagecorruptions  # 0.6 s to import (numba, OpenCV, scikit-image): only when corrupting

    state = np.random.get_state()
    np.random.seed(seed32)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            corrupted = imagecorruptions.corrupt(image, severity, name,
                                                 **({"seed": seed32} if name in _OWN_SEED else {}))
    finally:
        np.random.set_state(state)
    invalid = any("invalid value" in str(warning.message) for warning in caught)
    return None if invalid else corrupted
