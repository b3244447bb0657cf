"""PF-PASCAL (Proposal Flow, Ham et al.) rewritten in SPair-71k's layout, so `probe correspond` reads it as it reads
SPair-71k.

The archive PF-dataset-PASCAL.zip holds JPEGImages/<image>.jpg and Annotations/<class>/<image stem>.mat, each .mat
with `kps` (a row per keypoint of its class, x and y in the image's pixels, NaN where the keypoint is not visible)
and `bbox` (x1, y1, x2, y2). The pair list test_pairs_pf_pascal.csv names a pair per row: source image, target image
and class (a 1-based index of registry.PASCAL_CLASSES), then the keypoints again, which are not used. As DHPF, SCOT
and CATs read PF-PASCAL, a pair's keypoints are the rows visible in both images, in row order, and coordinates stay
as published.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from probe.data.registry import PASCAL_CLASSES
from probe.errors import ProbeError

SPLIT = "test"


def convert(root: Path, pairs_csv: Path, out: Path) -> int:
    """Write the pairs `pairs_csv` lists over the PF-PASCAL folder `root` (Annotations/, JPEGImages/) into `out`:
    JPEGImages/<class>/<image> and PairAnnotation/test/<nnnn>-<source stem>-<target stem>-<class>.json with SPair's
    fields (src_imname, trg_imname, src_imsize and trg_imsize as [w, h, 3], src_kps, trg_kps, kps_ids, src_bndbox,
    trg_bndbox, category; no viewpoint_variation). Returns the number of pairs. A missing or unreadable image,
    annotation or row is a ProbeError naming it."""
    import pandas as pd

    try:
        table = pd.read_csv(pairs_csv)
    except (OSError, ValueError) as error:
        raise ProbeError(f"{pairs_csv} cannot be read as PF-PASCAL's pair list ({error})") from None
    if table.shape[1] < 3 or table.empty:
        raise ProbeError(f"{pairs_csv}: PF-PASCAL's pair list has a row per pair: source image, target image, class")
    annotations = out / "PairAnnotation" / SPLIT
    annotations.mkdir(parents=True)
    for index, (source, target, label) in enumerate(table.iloc[:, :3].itertuples(index=False, name=None)):
        category = _category(label, pairs_csv, index)
        names = Path(str(source)).name, Path(str(target)).name
        (src_kps, src_box), (trg_kps, trg_box) = (_annotation(root, category, name) for name in names)
        if len(src_kps) != len(trg_kps):
            raise ProbeError(f"{pairs_csv} row {index + 2}: {names[0]} has {len(src_kps)} keypoints of {category}, "
                             f"{names[1]} {len(trg_kps)}; both annotations list every keypoint of the class")
        shown = [k for k in range(len(src_kps)) if np.isfinite(src_kps[k]).all() and np.isfinite(trg_kps[k]).all()]
        if not shown:
            raise ProbeError(f"{pairs_csv} row {index + 2}: {names[0]} and {names[1]} show no keypoint in common")
        sizes = [_copy_image(root, category, name, out) for name in names]
        pair = {
            "src_imname": names[0], "trg_imname": names[1], "src_imsize": sizes[0], "trg_imsize": sizes[1],
            "src_kps": src_kps[shown].tolist(), "trg_kps": trg_kps[shown].tolist(), "kps_ids": shown,
            "src_bndbox": src_box, "trg_bndbox": trg_box, "category": category,
        }
        stem = f"{index:04d}-{Path(names[0]).stem}-{Path(names[1]).stem}-{category}"
        (annotations / f"{stem}.json").write_text(json.dumps(pair) + "\n")
    return len(table)


def _category(label, pairs_csv: Path, index: int) -> str:
    try:
        number = int(label)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= len(PASCAL_CLASSES):
        raise ProbeError(f"{pairs_csv} row {index + 2}: class {label!r} is not 1..{len(PASCAL_CLASSES)} (PASCAL VOC's "
                         "classes in their usual order)")
    return PASCAL_CLASSES[number - 1]


def _annotation(root: Path, category: str, image: str) -> tuple[np.ndarray, list[float]]:
    """(keypoints (K, 2) with NaN rows, bounding box [x1, y1, x2, y2]) of `image` from its .mat annotation."""
    from scipy.io import loadmat

    path = root / "Annotations" / category / f"{Path(image).stem}.mat"
    if not path.is_file():
        raise ProbeError(f"{path} is missing: PF-PASCAL's pair list names {image} as a {category}")
    try:
        content = loadmat(path)
        kps = np.asarray(content["kps"], dtype=np.float64).reshape(-1, 2)
        box = np.asarray(content["bbox"], dtype=np.float64).ravel()
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        raise ProbeError(f"{path} is not a PF-PASCAL annotation with kps and bbox ({error})") from None
    if box.size != 4:
        raise ProbeError(f"{path}: bbox holds {box.size} numbers, not x1, y1, x2, y2")
    return kps, box.tolist()


def _copy_image(root: Path, category: str, image: str, out: Path) -> list[int]:
    """Copy `image` to out/JPEGImages/<category>/ (once) and return its size [w, h, 3]."""
    from PIL import Image, UnidentifiedImageError

    source, target = root / "JPEGImages" / image, out / "JPEGImages" / category / image
    try:
        with Image.open(source) as opened:
            width, height = opened.size
    except FileNotFoundError:
        raise ProbeError(f"{source} is missing: PF-PASCAL's pair list names it") from None
    except (OSError, UnidentifiedImageError) as error:
        raise ProbeError(f"{source} cannot be read as an image ({error})") from None
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [width, height, 3]
