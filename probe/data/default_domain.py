"""The default domain: procedural cartoon face portraits with exact per-pixel part labels.

Every image is drawn analytically (ellipses and polygons on a coordinate grid) at 4x the output size,
then box-averaged into a smooth image; a pixel's label is the majority label of its sub-samples, so label
maps are exact. Colour alone never names a class: eyebrows wear the hair colour, ears and neck the skin
colour, and backgrounds share the clothing colour distribution. The embedded default model trains a small
DDPM on the unlabelled pool; the segmentation probes use the labelled train and test sets.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from probe.errors import ProbeError
from probe.utils.cache import cache_root, publish_folder
from probe.utils.outputs import output_dir
from probe.utils.progress import progress_bar

VERSION = 1
CLASSES: list[str] = [
    "background", "skin", "hair", "eyebrows", "eyes", "nose", "mouth", "ears", "neck", "clothing",
]
PALETTE: np.ndarray = np.array([
    [30, 30, 30],     # background
    [240, 190, 150],  # skin
    [140, 80, 30],    # hair
    [255, 220, 0],    # eyebrows
    [0, 120, 255],    # eyes
    [230, 40, 40],    # nose
    [200, 0, 160],    # mouth
    [0, 200, 160],    # ears
    [150, 230, 70],   # neck
    [130, 110, 230],  # clothing
], dtype=np.uint8)
SUPERSAMPLE = 4
SPLIT_IDS = {"pool": 0, "train": 1, "test": 2, "pairs": 3}  # "pairs": the correspondence set's faces

BACKGROUND, SKIN, HAIR, EYEBROWS, EYES, NOSE, MOUTH, EARS, NECK, CLOTHING = range(len(CLASSES))
# The points the drawing code places exactly, left and right as the viewer sees them, each with the part it lies on.
# A corner is taken a little inside its part (3/4 of the way from an eye's centre to its outer end, 4/5 of a mouth's
# half-width, the chin at 9/10 of the face's half-height, an ear 3/5 of its radius beyond its centre), so that it
# lies on the part rather than on its outline.
KEYPOINTS: tuple[tuple[str, int], ...] = (
    ("left pupil", EYES), ("right pupil", EYES), ("left outer eye corner", EYES), ("right outer eye corner", EYES),
    ("left eyebrow", EYEBROWS), ("right eyebrow", EYEBROWS), ("nose tip", NOSE),
    ("left mouth corner", MOUTH), ("right mouth corner", MOUTH), ("chin", SKIN), ("left ear", EARS),
    ("right ear", EARS),
)
FACE_PARTS = (SKIN, EYEBROWS, EYES, NOSE, MOUTH)  # what the face's box bounds
_SIDES = {-1: "left", 1: "right"}  # a side of the head frame as the viewer sees it
# Tie-break between equally common sub-sample labels: the part that is usually on top wins.
_TIE_RANK = np.array([0, 4, 5, 6, 7, 8, 9, 3, 1, 2], dtype=np.float32) / 100

_SKIN_TONES = np.array([[255, 226, 200], [241, 194, 160], [224, 172, 135], [198, 134, 96],
                        [161, 102, 70], [120, 76, 52], [88, 56, 40]], dtype=np.float32) / 255
_HAIR_TONES = np.array([[25, 20, 20], [60, 40, 30], [105, 70, 45], [140, 62, 35], [205, 165, 95],
                        [235, 210, 150], [160, 160, 160], [220, 220, 215]], dtype=np.float32) / 255
_IRIS_TONES = np.array([[90, 55, 30], [120, 95, 50], [70, 110, 160], [80, 120, 80], [110, 120, 130],
                        [40, 30, 25]], dtype=np.float32) / 255


def _fabric_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour from the distribution shared by backgrounds and clothing."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.05, 0.75), rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _tone(rng: np.random.Generator, tones: np.ndarray, jitter: float) -> np.ndarray:
    """A colour between two neighbouring anchors of `tones`, jittered."""
    pos = rng.uniform(0, len(tones) - 1)
    low = int(pos)
    high = min(low + 1, len(tones) - 1)
    colour = tones[low] + (pos - low) * (tones[high] - tones[low])
    return np.clip(colour + rng.normal(0, jitter, 3), 0, 1).astype(np.float32)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    """A natural hair tone, or now and then a dyed one."""
    if rng.uniform() < 0.08:
        return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.9)),
                        dtype=np.float32)
    return _tone(rng, _HAIR_TONES, 0.03)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float,
             angle: float = 0.0) -> np.ndarray:
    """Points inside the ellipse centred (cu, cv) with radii (ru, rv), turned by `angle` radians."""
    du, dv = u - cu, v - cv
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        du, dv = du * cos + dv * sin, dv * cos - du * sin
    return (du / ru) ** 2 + (dv / rv) ** 2 <= 1


def _triangle(u: np.ndarray, v: np.ndarray, corners: list[tuple[float, float]]) -> np.ndarray:
    """Points inside the triangle with the given corners (either orientation)."""
    sides = []
    for (u0, v0), (u1, v1) in zip(corners, corners[1:] + corners[:1]):
        sides.append((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0))
    return (np.minimum.reduce(sides) >= 0) | (np.maximum.reduce(sides) <= 0)


_Window = tuple[slice, slice]
_WHOLE: _Window = (slice(None), slice(None))


class _Canvas:
    """Supersampled layers: each paint covers what lies under it with a label, a colour and a shade."""

    def __init__(self, size: int) -> None:
        self.size = size
        n = size * SUPERSAMPLE
        self.layer = np.zeros((n, n), dtype=np.uint8)  # index into labels and colours
        self.shade = np.ones((n, n), dtype=np.float32)  # multiplies the colour per sub-sample
        self.labels: list[int] = []
        self.colours: list[np.ndarray] = []

    def paint(self, mask: np.ndarray, label: int, colour: np.ndarray, shade: np.ndarray | float = 1.0,
              window: _Window = _WHOLE) -> None:
        """Cover `mask` (over `window`) with `label` and `colour`, times the per-sub-sample `shade`."""
        np.putmask(self.layer[window], mask, len(self.labels))
        np.putmask(self.shade[window], mask, np.asarray(shade, dtype=np.float32))
        self.labels.append(label)
        self.colours.append(colour)

    def downsample(self) -> tuple[np.ndarray, np.ndarray]:
        """Box-averaged colour (size, size, 3) in [0, 1] and majority labels (size, size)."""
        size, s, k = self.size, SUPERSAMPLE, len(CLASSES)
        rgb = np.array(self.colours, dtype=np.float32)[self.layer] * self.shade[..., None]
        rgb = rgb.reshape(size, s, size, s * 3).sum(axis=1).reshape(size, size, s, 3).sum(axis=2) / s**2
        label = np.array(self.labels, dtype=np.uint8)[self.layer]
        block = np.arange(size * s) // s
        cell = (block[:, None] * size + block[None, :]) * k
        counts = np.bincount((cell + label).ravel(), minlength=size * size * k).reshape(size, size, k)
        return rgb, np.argmax(counts + _TIE_RANK, axis=2).astype(np.uint8)


class _HeadFrame:
    """Coordinates across (u) and down (v) a head centred at (cx, cy) and tilted by `tilt` radians."""

    def __init__(self, x: np.ndarray, y: np.ndarray, cx: float, cy: float, tilt: float) -> None:
        self.cx, self.cy, self.cos, self.sin = cx, cy, math.cos(tilt), math.sin(tilt)
        self.u = (x - cx) * self.cos + (y - cy) * self.sin
        self.v = (y - cy) * self.cos - (x - cx) * self.sin

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Image coordinates of the head-frame point (u, v)."""
        return self.cx + u * self.cos - v * self.sin, self.cy + u * self.sin + v * self.cos

    def crop(self, u: float, v: float, half: float) -> tuple[_Window, np.ndarray, np.ndarray]:
        """The square window of half-side `half` around head point (u, v), and u, v inside it."""
        n = self.u.shape[0]
        x, y = self.to_image(u, v)
        rows, cols = (slice(max(0, math.floor((c - half + 1) / 2 * n)), max(0, math.ceil((c + half + 1) / 2 * n)))
                      for c in (y, x))
        return (rows, cols), self.u[rows, cols], self.v[rows, cols]


@dataclass(frozen=True)
class Landmarks:
    """A portrait's KEYPOINTS in pixel coordinates (x, y; pixel (i, j) has its centre at x = j, y = i): `points`
    (len(KEYPOINTS), 2) float; `visible` (len(KEYPOINTS),) bool, whether the keypoint's part is on top at that exact
    point (hair may cover an ear, an open mouth the nose tip); `face_box` (x1, y1, x2, y2), the box of the drawn face
    (FACE_PARTS) in the same coordinates, its sides on the outer edges of the outermost sub-samples."""

    points: np.ndarray
    visible: np.ndarray
    face_box: tuple[float, float, float, float]


def render(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One portrait: image (size, size, 3) uint8 and label map (size, size) uint8 indexing CLASSES."""
    image, label, _ = render_with_landmarks(rng, size)
    return image, label


def render_with_landmarks(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray, Landmarks]:
    """`render`'s portrait (the same draws: the same image and labels) and where its KEYPOINTS are."""
    marks: dict[str, tuple[float, float]] = {}  # keypoint name -> head-frame (u, v)
    n = size * SUPERSAMPLE
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(axis, axis)  # the frame spans [-1, 1]; y grows downwards
    canvas = _Canvas(size)

    skin = _tone(rng, _SKIN_TONES, 0.025)
    hair = _hair_colour(rng)
    clothing = _fabric_colour(rng)
    backdrop = _fabric_colour(rng)

    # Background: the whole frame, with a soft vertical gradient.
    canvas.paint(np.ones_like(x, dtype=bool), BACKGROUND, backdrop, 1 + rng.uniform(-0.2, 0.2) * y)

    # Head: centre, size and tilt; inner features slide sideways (yaw) as the head turns.
    half_w = rng.uniform(0.58, 0.7)
    half_h = half_w * rng.uniform(1.22, 1.36)
    head = _HeadFrame(x, y, rng.uniform(-0.12, 0.12), rng.uniform(-0.22, -0.08),
                      float(np.clip(rng.normal(0, 0.1), -0.25, 0.25)))
    u, v = head.u, head.v
    yaw = rng.uniform(-0.08, 0.08)
    chin_x, chin_y = head.to_image(0, half_h)

    # Neck (under the clothing) and clothing with a neckline that shows the neck.
    body_x = (head.cx + chin_x) / 2 + rng.uniform(-0.04, 0.04)
    neck_half = half_w * rng.uniform(0.38, 0.5)
    neck = (np.abs(x - (chin_x + body_x) / 2) < neck_half) & (y > head.cy)
    canvas.paint(neck, NECK, skin * rng.uniform(0.82, 0.92))
    collar_y = chin_y + rng.uniform(-0.14, 0.04)
    shoulders = y > collar_y + rng.uniform(0.05, 0.25) * (x - body_x) ** 2
    neckline = _ellipse(x, y, body_x, collar_y, neck_half * rng.uniform(1.05, 1.5), rng.uniform(0.12, 0.3))
    folds = 1 + 0.06 * np.sin(x * rng.uniform(6, 12) + rng.uniform(0, 6.3))
    canvas.paint(shoulders & ~neckline, CLOTHING, clothing, folds)

    # Hair: strand texture shared by every hair region; long hair falls behind the head.
    strands = 1 + 0.08 * np.sin(u * rng.uniform(25, 45) + rng.uniform(0, 6.3))
    volume = rng.uniform(0.05, 0.2)
    crown = _ellipse(u, v, 0, -half_h * 0.12, half_w * (1 + volume), half_h * (1 + volume * 0.5))
    if rng.uniform() < 0.4:
        hang = half_h * rng.uniform(1.1, 1.9) - 0.2 * (u / half_w) ** 2
        fall = (np.abs(u) < half_w * (1 + volume) * rng.uniform(1.0, 1.15)) & (v > 0) & (v < hang)
        canvas.paint((crown | fall) & ~neck, HAIR, hair, strands)

    # Ears (partly behind the face); the far ear shrinks as the head turns.
    eye_v = half_h * rng.uniform(-0.08, 0.06)
    ear_v = eye_v + half_h * rng.uniform(0.05, 0.18)
    ear_ru, ear_rv = half_w * rng.uniform(0.17, 0.23), half_h * rng.uniform(0.19, 0.25)
    ear_u = half_w * rng.uniform(0.93, 1.0)
    ear_colour = skin * rng.uniform(0.9, 0.98)
    for side in (-1, 1):
        window, wu, wv = head.crop(side * ear_u, ear_v, max(ear_ru * (1 + 2 * abs(yaw)), ear_rv))
        ear = _ellipse(wu, wv, side * ear_u, ear_v, ear_ru * (1 + 2 * side * yaw), ear_rv, side * 0.15)
        canvas.paint(ear, EARS, ear_colour, window=window)
        reach = side * 0.6 * ear_ru * (1 + 2 * side * yaw)  # along the ear's tilted long axis, outwards
        marks[f"{_SIDES[side]} ear"] = (side * ear_u + reach * math.cos(side * 0.15),
                                        ear_v + reach * math.sin(side * 0.15))

    # Face: an egg, narrower at the jaw, darker towards its rim.
    jaw = 1 - rng.uniform(0.05, 0.25) * np.clip(v / half_h, 0, 1)
    radius = (u / (half_w * jaw)) ** 2 + (v / half_h) ** 2
    canvas.paint(radius <= 1, SKIN, skin, 1 - 0.12 * radius ** 2)

    # Hair on top: a hairline by style, plus sideburns down the temples.
    style = rng.choice(["straight", "parted", "swept", "receding"], p=[0.3, 0.3, 0.3, 0.1])
    top = -half_h * (0.85 if style == "receding" else rng.uniform(0.42, 0.62))
    if style == "parted":
        hairline = top + rng.uniform(0.3, 0.7) * np.abs(u - half_w * rng.uniform(-0.4, 0.4))
    elif style == "swept":
        hairline = top + rng.choice([-1, 1]) * rng.uniform(0.2, 0.5) * u
    else:
        hairline = np.full_like(u, top)
    side_v = eye_v - half_h * rng.uniform(0.05, 0.3)
    sideburns = np.abs(u) > half_w * rng.uniform(0.78, 0.9)
    hairline = np.where(sideburns, np.maximum(hairline, side_v), np.minimum(hairline, side_v))
    canvas.paint(crown & (v < hairline), HAIR, hair, strands)

    # Eyebrows (in the hair colour) and eyes, mirrored about the face's turned midline.
    mid_u = yaw * half_w
    eye_u = half_w * rng.uniform(0.36, 0.46)
    eye_ru = half_w * rng.uniform(0.19, 0.25)
    eye_rv = eye_ru * rng.uniform(0.45, 0.65)
    brow_u = eye_u + rng.uniform(-0.02, 0.03)
    brow_v = eye_v - eye_rv - rng.uniform(0.07, 0.13)
    brow_ru, brow_rv, brow_angle = eye_ru * rng.uniform(1.0, 1.25), rng.uniform(0.035, 0.055), rng.uniform(-0.25, 0.2)
    sclera = np.array([0.93, 0.92, 0.9], dtype=np.float32) * rng.uniform(0.85, 1.0)
    iris_colour = _tone(rng, _IRIS_TONES, 0.03)
    pupil_colour = np.array([0.05, 0.04, 0.04], dtype=np.float32)
    gaze = rng.uniform(-0.3, 0.3) * eye_ru  # both irises look the same way
    for side in (-1, 1):
        window, wu, wv = head.crop(mid_u + side * eye_u, (eye_v + brow_v) / 2, brow_ru + eye_v - brow_v)
        across = side * (wu - mid_u)  # distance from the midline towards this side
        canvas.paint(_ellipse(across, wv, brow_u, brow_v, brow_ru, brow_rv, brow_angle), EYEBROWS, hair,
                     window=window)
        eye = _ellipse(across, wv, eye_u, eye_v, eye_ru, eye_rv)
        canvas.paint(eye, EYES, sclera, window=window)
        iris_dist = (across - eye_u - side * gaze) ** 2 + (wv - eye_v) ** 2
        canvas.paint(eye & (iris_dist < (eye_rv * 0.95) ** 2), EYES, iris_colour, window=window)
        canvas.paint(eye & (iris_dist < (eye_rv * 0.45) ** 2), EYES, pupil_colour, window=window)
        name = _SIDES[side]
        marks[f"{name} pupil"] = (mid_u + side * eye_u + gaze, eye_v)
        marks[f"{name} outer eye corner"] = (mid_u + side * (eye_u + 0.75 * eye_ru), eye_v)
        marks[f"{name} eyebrow"] = (mid_u + side * brow_u, brow_v)

    # Nose: a darker-skin wedge with a round tip.
    nose_u = yaw * half_w * 1.3
    nose_v = half_h * rng.uniform(0.28, 0.4)
    nose_ru = half_w * rng.uniform(0.12, 0.18)
    window, wu, wv = head.crop(nose_u, (eye_v + nose_v) / 2, (nose_v - eye_v) / 2 + nose_ru)
    nose = (_triangle(wu, wv, [(nose_u, eye_v + 0.02), (nose_u - nose_ru * 0.7, nose_v),
                               (nose_u + nose_ru * 0.7, nose_v)])
            | _ellipse(wu, wv, nose_u, nose_v, nose_ru, nose_ru * 0.6))
    canvas.paint(nose, NOSE, skin * rng.uniform(0.72, 0.85), window=window)
    marks["nose tip"] = (nose_u, nose_v)

    # Mouth: lips on a smile curve, sometimes open showing a dark inside and teeth.
    mouth_u = yaw * half_w * 1.2
    mouth_v = half_h * rng.uniform(0.55, 0.66)
    mouth_ru = half_w * rng.uniform(0.26, 0.38)
    open_mouth = rng.uniform() < 0.35
    mouth_rv = rng.uniform(0.09, 0.14) if open_mouth else rng.uniform(0.045, 0.07)
    smile = rng.uniform(-0.02, 0.08)
    redness = rng.uniform(0.35, 0.6)
    lip_colour = skin * (1 - redness) + np.array([0.7, 0.2, 0.25], dtype=np.float32) * redness
    window, wu, wv = head.crop(mouth_u, mouth_v, mouth_ru + 0.1)
    spread = ((wu - mouth_u) / mouth_ru) ** 2
    curve_v = wv - mouth_v + smile * spread  # height above the smile curve
    canvas.paint(spread + (curve_v / mouth_rv) ** 2 <= 1, MOUTH, lip_colour, window=window)
    for side in (-1, 1):  # on the smile curve, where spread is 0.8 ** 2
        marks[f"{_SIDES[side]} mouth corner"] = (mouth_u + side * 0.8 * mouth_ru, mouth_v - smile * 0.64)
    marks["chin"] = (0.0, 0.9 * half_h)
    if open_mouth:
        inside = spread / 0.7 + (curve_v / (mouth_rv * 0.55)) ** 2 <= 1
        canvas.paint(inside, MOUTH, np.array([0.3, 0.08, 0.08], dtype=np.float32), window=window)
        teeth = inside & (curve_v < -mouth_rv * 0.2)
        canvas.paint(teeth, MOUTH, np.array([0.95, 0.94, 0.9], dtype=np.float32), window=window)

    # Light from a random side and mild sensor noise, at the output size.
    rgb, label = canvas.downsample()
    light_angle = rng.uniform(0, 2 * np.pi)
    small = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    light = 1 + rng.uniform(0.04, 0.12) * (math.cos(light_angle) * small[None, :]
                                           + math.sin(light_angle) * small[:, None])
    rgb = rgb * light[..., None] + rng.normal(0, 0.012, rgb.shape)
    image = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return image, label, _landmarks(canvas, [head.to_image(*marks[name]) for name, _ in KEYPOINTS])


def _landmarks(canvas: _Canvas, frame_points: list[tuple[float, float]]) -> Landmarks:
    """The keypoints at `frame_points` (frame coordinates in [-1, 1], KEYPOINTS' order), which of them show their
    part on the finished canvas, and the face's box."""
    n = canvas.size * SUPERSAMPLE
    labels = np.array(canvas.labels, dtype=np.uint8)[canvas.layer]  # the label of every sub-sample
    frame = np.array(frame_points, dtype=np.float64)
    sub = np.clip(np.floor((frame + 1) / 2 * n).astype(int), 0, n - 1)  # the sub-sample holding each point
    visible = labels[sub[:, 1], sub[:, 0]] == np.array([part for _, part in KEYPOINTS])
    rows, cols = np.nonzero(np.isin(labels, FACE_PARTS))
    box = (cols.min() / SUPERSAMPLE - 0.5, rows.min() / SUPERSAMPLE - 0.5,
           (cols.max() + 1) / SUPERSAMPLE - 0.5, (rows.max() + 1) / SUPERSAMPLE - 0.5)
    return Landmarks((frame + 1) / 2 * canvas.size - 0.5, visible, tuple(float(b) for b in box))


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` in `split` ("pool", "train", "test" or "pairs"): splits never share draws."""
    return np.random.default_rng(np.random.SeedSequence((seed, SPLIT_IDS[split], index)))


def write_default_domain(out: Path, size: int = 32, pool: int = 5000, train: int = 20, test: int = 120,
                         seed: int = 0, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the domain to `out` atomically (`probe.utils.outputs.output_dir`) and return `out`.

    Layout: pool/00000.png (unlabelled), real/{train,test}/000.png with 000.npy label maps (uint8),
    classes.txt, palette.json and domain.json. Same arguments, byte-identical files.
    Example: write_default_domain(Path("faces"), pool=1000)
    """
    out = Path(out)
    counts = _check_counts(size, seed, pool, train, test)
    with output_dir(out, command="data default", overwrite=overwrite) as staging:
        _write_contents(staging, size, counts, seed, progress)
    return out


def _check_counts(size: int, seed: int, pool: int, train: int, test: int) -> dict[str, int]:
    if size < 8:
        raise ProbeError(f"size={size} is too small to draw a face; use 8 or more (32 is the default)")
    if seed < 0:
        raise ProbeError(f"seed={seed} is negative; use a seed >= 0")
    counts = {"pool": pool, "train": train, "test": test}
    for split, count in counts.items():
        if count < 0:
            raise ProbeError(f"{split}={count} is negative; use a count >= 0")
    return counts


def _write_contents(folder: Path, size: int, counts: dict[str, int], seed: int, progress: bool) -> None:
    """Render every image of every split into `folder`, then the metadata files."""
    jobs = []
    for split, count in counts.items():
        labelled = split != "pool"
        split_dir = folder / "real" / split if labelled else folder / split
        split_dir.mkdir(parents=True)
        width = max(3 if labelled else 5, len(str(count - 1)))
        jobs += [(split, index, split_dir / f"{index:0{width}d}", labelled) for index in range(count)]
    with progress_bar(progress) as bar:
        task = bar.add_task("Drawing the default domain", total=len(jobs))
        for split, index, stem, labelled in jobs:
            image, label = render(image_rng(seed, split, index), size)
            Image.fromarray(image).save(stem.with_suffix(".png"))
            if labelled:
                np.save(stem.with_suffix(".npy"), label)
            bar.advance(task)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "palette.json").write_text(json.dumps(PALETTE.tolist()) + "\n")
    info = {"version": VERSION, "size": size, "seed": seed, "counts": counts}
    (folder / "domain.json").write_text(json.dumps(info, indent=2) + "\n")


def default_domain_dir(size: int = 32, seed: int = 0, *, progress: bool = True) -> Path:
    """The cached labelled sets (no unlabelled pool) <cache root>/default-domain-v1-s{size}-seed{seed}, written on
    first use (safely when several processes start at once: `probe.utils.cache.publish_folder`); `probe data default`
    writes the pool too, for DDPM training. Example: default_domain_dir() / "real" / "train"
    """
    counts = _check_counts(size, seed, 0, 20, 120)
    return publish_folder(cache_root() / f"default-domain-v{VERSION}-s{size}-seed{seed}",
                          lambda staging: _write_contents(staging, size, counts, seed, progress),
                          lambda folder: (folder / "domain.json").is_file())
