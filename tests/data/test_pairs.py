"""Keypoint pairs in SPair-71k's layout (probe.data.pairs): what read_pairs gives back, and one line naming the file
for every kind of bad annotation or missing image."""

import json

import numpy as np
import pytest

from probe.data.pairs import PairImages, pair_images, read_pairs, select_pairs
from probe.errors import ProbeError
from spair_layout import random_picture, write_image, write_pair, write_spair_folder


def test_read_pairs_gives_back_what_the_annotations_say(tmp_path):
    folder = write_spair_folder(tmp_path / "spair", categories=("cat", "dog"), pairs_per_category=2, keypoints=4)
    pairs = read_pairs(folder)
    names = sorted(p.stem for p in (folder / "PairAnnotation" / "test").glob("*.json"))
    assert [pair.name for pair in pairs] == names and len(pairs) == 4
    for pair in pairs:
        data = json.loads((folder / "PairAnnotation" / "test" / f"{pair.name}.json").read_text())
        assert pair.category == data["category"] and pair.viewpoint == data["viewpoint_variation"]
        assert pair.source == folder / "JPEGImages" / pair.category / data["src_imname"]
        assert pair.target_size == tuple(data["trg_imsize"][:2])
        np.testing.assert_array_equal(pair.source_points, data["src_kps"])
        np.testing.assert_array_equal(pair.target_points, data["trg_kps"])
        assert pair.target_box == tuple(data["trg_bndbox"]) and pair.source_points.shape == (4, 2)
    assert [p.viewpoint for p in pairs] == [0, 1, 2, 0]
    assert [p.category for p in select_pairs(pairs, 1)] == ["cat", "dog"]
    images = PairImages(pair_pictures := pair_images(pairs), 24)
    assert len(images) == len(pair_pictures) == 8
    image = images[3]
    assert image.image.shape == (3, 24, 24) and image.stem == f"{pair_pictures[3].parent.name}-{pair_pictures[3].stem}"
    assert image.image.min() >= -1 and image.image.max() <= 1


def one_pair(folder, **changes):
    """A valid 40x30 / 36x44 pair, its annotation changed by `changes` (None drops a key)."""
    rng = np.random.default_rng(0)
    write_image(folder, "cat", "a.png", random_picture(rng, 40, 30))
    write_image(folder, "cat", "b.png", random_picture(rng, 36, 44))
    return write_pair(folder, "000001-a-b:cat", "cat", "a.png", "b.png", (40, 30), (36, 44), [[3, 4], [20, 10]],
                      [[5, 6], [30, 40]], [1, 2, 38, 28], [0, 0, 35, 43], viewpoint=1, changes=changes)


def test_a_pair_without_viewpoint_reads(tmp_path):
    one_pair(tmp_path, viewpoint_variation=None)
    (pair,) = read_pairs(tmp_path)
    assert pair.viewpoint is None and pair.source_size == (40, 30)


@pytest.mark.parametrize("changes, words", [
    ({"trg_kps": None}, "lacks 'trg_kps'"),
    ({"category": None}, "lacks 'category'"),
    ({"src_kps": [[1, 2, 3]]}, "src_kps is [[1, 2, 3]]; give K x 2 numbers"),
    ({"src_kps": "many"}, "src_kps is \"many\"; give K x 2 numbers"),
    ({"trg_kps": [[5, 6]]}, "2 src_kps but 1 trg_kps; give the same number"),
    ({"src_kps": [], "trg_kps": []}, "give K x 2 numbers"),
    ({"src_bndbox": [1, 2, 3]}, "src_bndbox is [1, 2, 3]; give 4 numbers"),
    ({"trg_bndbox": [30, 0, 10, 40]}, "trg_bndbox [30.0, 0.0, 10.0, 40.0] is not [x1, y1, x2, y2]"),
    ({"src_imsize": [40, 30]}, "src_imsize is [40, 30]; give 3 numbers"),
    ({"trg_imsize": [44, 36, 3]}, "trg_imsize says 44x36 but"),
    ({"trg_kps": [[5, 6], [36.5, 40]]}, "trg_kps [36.5, 40.0] lies outside the 36x44 image"),
    ({"src_kps": [[-1, 6], [3, 4]]}, "src_kps [-1.0, 6.0] lies outside the 40x30 image"),
    ({"viewpoint_variation": 5}, "viewpoint_variation 5 is not one of 0, 1, 2"),
    ({"src_imname": "missing.png"}, "missing.png (named by"),
    ({"category": "dog"}, "dog/a.png (named by"),
])
def test_a_bad_annotation_is_one_line_naming_the_file(tmp_path, changes, words):
    path = one_pair(tmp_path, **changes)
    with pytest.raises(ProbeError) as error:
        read_pairs(tmp_path)
    message = str(error.value)
    assert words in message and str(path) in message and "\n" not in message


def test_a_broken_file_or_folder_is_one_line(tmp_path):
    with pytest.raises(ProbeError, match="PairAnnotation/test is not a folder: --data needs JPEGImages"):
        read_pairs(tmp_path)
    (tmp_path / "PairAnnotation" / "test").mkdir(parents=True)
    with pytest.raises(ProbeError, match=r"no pair annotations \(\*.json\) in"):
        read_pairs(tmp_path)
    path = one_pair(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ProbeError, match=f"cannot read pair annotation {path}"):
        read_pairs(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ProbeError, match="holds a list; write one JSON object per pair"):
        read_pairs(tmp_path)
    one_pair(tmp_path)
    (tmp_path / "JPEGImages" / "cat" / "b.png").write_bytes(b"not a picture")
    with pytest.raises(ProbeError, match="cannot read image .*b.png"):
        read_pairs(tmp_path)
    with pytest.raises(ProbeError, match="--pairs 0: give 1 or more"):
        select_pairs([], 0)
