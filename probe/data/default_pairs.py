"""The embedded default's correspondence set: portraits of the default domain with the keypoints their generator
places exactly (default_domain.KEYPOINTS), paired across different faces, in SPair-71k's layout:

  JPEGImages/face/<nnn>.png               the portraits, at the domain's size
  PairAnnotation/test/<kkk>-<src>-<trg>.json
      src_imname, trg_imname; src_imsize, trg_imsize [w, h, 3]; src_kps, trg_kps [[x, y], ...] (the keypoints shown
      in both faces, in KEYPOINTS' order; pixel (i, j) has its centre at x = j, y = i); kps_ids (their indices in
      KEYPOINTS); src_bndbox, trg_bndbox [x1, y1, x2, y2] (the drawn face's box); category "face";
      viewpoint_variation 0
  keypoints.json                          the keypoint names (kps_ids index them) and the set's settings

The faces come from their own generators (image_rng(seed, "pairs", k)), so none of them is in the default domain's
pool, train or test images. Pair k matches face k with face k + 1 (the last with the first): every face is a source
once and a target once, and no face meets itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from probe.data.default_domain import KEYPOINTS, VERSION, image_rng, render_with_landmarks
from probe.errors import ProbeError
from probe.utils.cache import cache_root, publish_folder
from probe.utils.progress import progress_bar

CATEGORY = "face"
PAIRS = 20  # pairs (and faces) of the cached set: `probe correspond` over the shipped DDPM's grid in about a minute
SPLIT = "test"  # the PairAnnotation split written (SPair's evaluation split)
KEYPOINTS_FILE = "keypoints.json"  # written last


def write_face_pairs(folder: Path, *, pairs: int = PAIRS, size: int = 32, seed: int = 0, progress: bool = True) -> Path:
    """Draw `pairs` faces and write `pairs` pairs of them into `folder` (created if missing) in SPair-71k's layout
    (this module's docstring); returns `folder`. Same arguments, byte-identical files.
    Example: write_face_pairs(Path("face-pairs"), pairs=50, size=64)
    """
    if pairs < 2:
        raise ProbeError(f"pairs={pairs}: a pair needs two different faces; use 2 or more")
    if size < 8:
        raise ProbeError(f"size={size} is too small to draw a face; use 8 or more (32 is the default)")
    if seed < 0:
        raise ProbeError(f"seed={seed} is negative; use a seed >= 0")
    folder = Path(folder)
    images, annotations = folder / "JPEGImages" / CATEGORY, folder / "PairAnnotation" / SPLIT
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    faces = []
    with progress_bar(progress) as bar:
        task = bar.add_task("Drawing the correspondence faces", total=pairs)
        for index in range(pairs):
            image, _, landmarks = render_with_landmarks(image_rng(seed, "pairs", index), size)
            name = f"{index:03d}.png"
            Image.fromarray(image).save(images / name)
            faces.append((name, landmarks))
            bar.advance(task)
    for index, ((src, src_marks), (trg, trg_marks)) in enumerate(zip(faces, faces[1:] + faces[:1])):
        shown = [k for k in range(len(KEYPOINTS)) if src_marks.visible[k] and trg_marks.visible[k]]
        pair = {
            "src_imname": src, "trg_imname": trg, "src_imsize": [size, size, 3], "trg_imsize": [size, size, 3],
            "src_kps": [_rounded(src_marks.points[k]) for k in shown],
            "trg_kps": [_rounded(trg_marks.points[k]) for k in shown],
            "kps_ids": shown, "src_bndbox": _rounded(src_marks.face_box), "trg_bndbox": _rounded(trg_marks.face_box),
            "category": CATEGORY, "viewpoint_variation": 0,
        }
        stem = f"{index:03d}-{Path(src).stem}-{Path(trg).stem}"
        (annotations / f"{stem}.json").write_text(json.dumps(pair) + "\n")
    info = {"keypoints": [name for name, _ in KEYPOINTS], "pairs": pairs, "size": size, "seed": seed,
            "domain_version": VERSION}
    (folder / KEYPOINTS_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def _rounded(values) -> list[float]:
    return [round(float(value), 2) for value in values]


def default_pairs_folder(cache: Path | None = None, *, size: int = 32, seed: int = 0, progress: bool = True) -> Path:
    """The embedded default's correspondence set: the data `probe correspond` reads when given no data option. A
    folder in SPair-71k's layout (JPEGImages/face/, PairAnnotation/test/*.json; this module's docstring) of PAIRS
    pairs of different faces at the default domain's size, with the keypoints their generator knows (pupils, outer
    eye corners, eyebrows, nose tip, mouth corners, chin, ears), the face's box as bndbox and viewpoint_variation 0.

    Written on first use into `cache` (None: the cache root, probe.utils.cache.cache_root(): $PROBE_CACHE or
    ~/.cache/probe) as default-domain-v{VERSION}-pairs{PAIRS}-s{size}-seed{seed}/, safely when several processes
    start at once (probe.utils.cache.publish_folder); `probe cache clear` removes it with the other default-domain
    folders. Example: sorted((default_pairs_folder() / "PairAnnotation" / "test").glob("*.json"))
    """
    root = Path(cache) if cache is not None else cache_root()
    return publish_folder(root / f"default-domain-v{VERSION}-pairs{PAIRS}-s{size}-seed{seed}",
                          lambda staging: write_face_pairs(staging, pairs=PAIRS, size=size, seed=seed,
                                                           progress=progress),
                          lambda folder: (folder / KEYPOINTS_FILE).is_file())
