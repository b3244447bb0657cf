"""Dataset registry and folder layout: values read, resizes, ordering, class names and every bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.data.layout import (
    LabeledImage,
    find_split_dir,
    infer_num_classes,
    load_images,
    load_labeled_split,
    nearest_source_indices,
    read_class_names,
    resize_labels_nearest,
    resolve_dataset_root,
)
from probe.data.registry import ADM_256_FLAGS, DATASETS, lookup, published_items
from probe.errors import ProbeError


def write_sample(folder: Path, stem: str, pixels: np.ndarray, labels: np.ndarray | None) -> Path:
    """Save `pixels` (H, W, 3) uint8 as <stem>.png and `labels` as <stem>.npy in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.png"
    Image.fromarray(pixels).save(path)
    if labels is not None:
        np.save(folder / f"{stem}.npy", labels)
    return path


def make_split(folder: Path, stems: list[str], size: int = 4, num_classes: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for stem in stems:
        write_sample(folder, stem, rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                     rng.integers(0, num_classes, (size, size)))


# registry


@pytest.mark.parametrize("name", ["horse21", "horse_21", "Horse-21", "HORSE 21", "horse"])
def test_lookup_accepts_spellings(name: str) -> None:
    assert lookup(name).name == "horse_21"


def test_lookup_distinguishes_bedroom_datasets() -> None:
    assert lookup("Bedroom-28").name == "bedroom_28"
    assert lookup("ADE-Bedroom-30").name == "ade_bedroom_30"
    assert lookup("adebedroom30").name == "ade_bedroom_30"


def test_lookup_unknown_lists_known_names() -> None:
    with pytest.raises(ProbeError, match="zebra_7.*bedroom_28, ffhq_34, cat_15, horse_21, celeba_19, ade_bedroom_30"):
        lookup("zebra_7")


def test_registry_facts() -> None:
    expected = {  # name: (num_classes, ignore_label, train, test, checkpoint)
        "bedroom_28": (29, 0, 40, 20, "lsun_bedroom.pt"),
        "ffhq_34": (34, 255, 20, 20, "ffhq.pt"),
        "cat_15": (15, 255, 30, 20, "lsun_cat.pt"),
        "horse_21": (21, 255, 30, 20, "lsun_horse.pt"),
        "celeba_19": (19, 255, 20, 500, "ffhq.pt"),
        "ade_bedroom_30": (30, 255, 50, 650, "lsun_bedroom.pt"),
    }
    assert {name: (info.num_classes, info.ignore_label, info.train, info.test, info.checkpoint)
            for name, info in DATASETS.items()} == expected
    for info in DATASETS.values():
        assert len(info.class_names) == len(info.palette) == info.num_classes
        assert all(len(colour) == 3 and all(0 <= value <= 255 for value in colour) for colour in info.palette)
        assert info.model_flags == ADM_256_FLAGS
    horse = lookup("horse21")
    assert horse.checkpoint_item("ddpm").path == "models/ddpm_checkpoints/lsun_horse.pt"
    assert horse.checkpoint_item("mae").path == "models/mae_checkpoints/lsun_horse.pth"
    assert lookup("celeba19").checkpoint_item("swav_w2").path == "models/swav_w2_checkpoints/ffhq.pth"
    assert horse.synthetic_item().path == "synthetic-datasets/ddpm/horse_21.tar.gz"
    with pytest.raises(ProbeError, match="no synthetic dataset for CelebA-19; they exist for Bedroom-28, FFHQ-34"):
        lookup("celeba19").synthetic_item()
    paths = [item.path for item in published_items()]
    assert paths[0] == "datasets.tar.gz" and len(paths) == len(set(paths)) == 1 + 4 * 4 + 4  # 4 checkpoint names


def test_registry_class_names_and_colours_in_label_order() -> None:
    horse = lookup("horse_21")
    assert horse.class_names[0] == "background" and horse.class_names[20] == "leg protection"
    assert horse.palette[1] == (255, 74, 70)
    assert lookup("bedroom_28").class_names[17] == "wall"
    assert lookup("celeba_19").class_names[-1] == "u_lip"
    assert lookup("ffhq_34").palette[1] == (112, 130, 107)  # int(0.4420 * 255), int(0.5100 * 255), ...
    assert lookup("ade_bedroom_30").class_names[:3] == ("wall", "bed", "floor")
    assert ADM_256_FLAGS.startswith("--attention_resolutions 32,16,8 --class_cond False")
    assert "--num_channels 256" in ADM_256_FLAGS and ADM_256_FLAGS.endswith("--use_scale_shift_norm True")


def test_dataset_info_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        lookup("cat_15").num_classes = 3  # type: ignore[misc]


# reading images and labels


def test_pixels_scaled_to_minus_one_one(tmp_path: Path) -> None:
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    pixels[0, 0] = (0, 128, 255)
    write_sample(tmp_path / "real" / "train", "a", pixels, np.zeros((4, 4), dtype=np.int64))
    (sample,) = load_labeled_split(tmp_path, "train", 4, num_classes=2, ignore_label=255)
    assert isinstance(sample, LabeledImage) and sample.stem == "a"
    assert sample.image.dtype == np.float32 and sample.image.shape == (3, 4, 4)
    np.testing.assert_array_equal(sample.image, pixels.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)
    np.testing.assert_allclose(sample.image[:, 0, 0], [-1, 128 / 255 * 2 - 1, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("resolution", [5, 12])
def test_image_resize_equals_pil_bilinear(tmp_path: Path, resolution: int) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = write_sample(tmp_path, "img", pixels, None)
    (sample,) = load_images(path, resolution)
    resized = np.asarray(Image.fromarray(pixels).resize((resolution, resolution), Image.Resampling.BILINEAR))
    assert sample.labels is None and sample.image.shape == (3, resolution, resolution)
    np.testing.assert_array_equal(sample.image, resized.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)


def test_grayscale_image_becomes_three_equal_channels(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 51, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    (sample,) = load_images(tmp_path, 4)
    np.testing.assert_allclose(sample.image, np.full((3, 4, 4), 51 / 255 * 2 - 1), rtol=0, atol=1e-7)


def test_nearest_indices_follow_opencv_floor_not_pil() -> None:
    np.testing.assert_array_equal(nearest_source_indices(4, 2), [0, 2])
    np.testing.assert_array_equal(nearest_source_indices(2, 3), [0, 0, 1])
    np.testing.assert_array_equal(nearest_source_indices(7, 3), [0, 2, 4])
    np.testing.assert_array_equal(nearest_source_indices(5, 5), np.arange(5))
    # OpenCV scales by 1 / (dst / src) in double: 9 * (1 / (18 / 14)) = 6.999..., so index 6, not 9 * 14 / 18 = 7.
    assert nearest_source_indices(14, 18)[9] == 6
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    ours = resize_labels_nearest(labels, 2)
    np.testing.assert_array_equal(ours, [[0, 2], [8, 10]])
    pil = np.asarray(Image.fromarray(labels).resize((2, 2), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pil, [[5, 7], [13, 15]])  # PIL samples pixel centres: a different answer


def test_labels_resized_nearest_as_int64(tmp_path: Path) -> None:
    labels = np.arange(16).reshape(4, 4) % 7
    write_sample(tmp_path / "train", "a", np.zeros((4, 4, 3), dtype=np.uint8), labels)
    (sample,) = load_labeled_split(tmp_path, "train", 2, num_classes=7, ignore_label=255)
    assert sample.labels.dtype == np.int64
    np.testing.assert_array_equal(sample.labels, labels[np.ix_([0, 2], [0, 2])])
    assert sample.image.shape == (3, 2, 2)


def test_ignore_label_accepted(tmp_path: Path) -> None:
    labels = np.array([[0, 255], [1, 255]], dtype=np.uint8)
    write_sample(tmp_path / "train", "a", np.zeros((2, 2, 3), dtype=np.uint8), labels)
    (sample,) = load_labeled_split(tmp_path, "train", 2, num_classes=2, ignore_label=255)
    np.testing.assert_array_equal(sample.labels, labels)


def test_sorted_by_name_and_limited(tmp_path: Path) -> None:
    make_split(tmp_path / "real" / "test", ["img_b", "img_c", "img_a"])
    assert [s.stem for s in load_labeled_split(tmp_path, "test", 4, 3, 255)] == ["img_a", "img_b", "img_c"]
    assert [s.stem for s in load_labeled_split(tmp_path, "test", 4, 3, 255, limit=2)] == ["img_a", "img_b"]


def test_real_layout_preferred_over_flat(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "real" / "train").mkdir(parents=True)
    assert find_split_dir(tmp_path, "train") == tmp_path / "real" / "train"
    assert find_split_dir(tmp_path, "train").is_dir()


def test_load_images_accepts_dir_and_list(tmp_path: Path) -> None:
    make_split(tmp_path, ["z", "y"])
    (tmp_path / "notes.txt").write_text("not an image")
    assert [s.stem for s in load_images(tmp_path, 4)] == ["y", "z"]
    assert [s.stem for s in load_images([tmp_path / "z.png", str(tmp_path / "y.png")], 4)] == ["z", "y"]


# class names


def test_class_names_from_file_registry_or_generic(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("sky\nroad\n\ncar\n")
    assert read_class_names(tmp_path, 3) == ["sky", "road", "car"]
    assert infer_num_classes(tmp_path) == 3
    empty = tmp_path / "other"
    empty.mkdir()
    assert read_class_names(empty, 15, lookup("cat_15"))[:3] == ["background", "back", "belly"]
    assert read_class_names(empty, 2) == ["class_0", "class_1"]


def test_infer_num_classes_from_train_labels_ignoring_255(tmp_path: Path) -> None:
    folder = tmp_path / "real" / "train"
    write_sample(folder, "a", np.zeros((2, 2, 3), dtype=np.uint8), np.array([[0, 3], [255, 1]], dtype=np.uint8))
    write_sample(folder, "b", np.zeros((2, 2, 3), dtype=np.uint8), np.array([[5, 0], [255, 255]], dtype=np.uint8))
    assert infer_num_classes(tmp_path) == 6


# bad input


def test_missing_root_names_path_and_layouts(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"nowhere.*real.*train"):
        find_split_dir(tmp_path / "nowhere", "train")


def test_missing_split_names_accepted_layouts(tmp_path: Path) -> None:
    make_split(tmp_path / "real" / "train", ["a"])
    with pytest.raises(ProbeError, match=r"'test'.*real/test or .*/test"):
        load_labeled_split(tmp_path, "test", 4, 3, 255)


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    np.save(tmp_path / "train" / "a.npy", np.zeros((2, 2)))
    with pytest.raises(ProbeError, match=r"no images .*train"):
        load_labeled_split(tmp_path, "train", 2, 3, 255)


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ProbeError, match=r"cannot read image .*broken\.png"):
        load_images(tmp_path, 4)


def test_non_square_image(tmp_path: Path) -> None:
    write_sample(tmp_path / "train", "wide", np.zeros((4, 6, 3), dtype=np.uint8), np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(ProbeError, match=r"wide\.png is 6x4.*square"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


def test_missing_label_map(tmp_path: Path) -> None:
    make_split(tmp_path / "train", ["a"])
    write_sample(tmp_path / "train", "b", np.zeros((4, 4, 3), dtype=np.uint8), None)
    with pytest.raises(ProbeError, match=r"label map .*b\.npy missing for image .*b\.png"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


def test_label_map_not_2d(tmp_path: Path) -> None:
    write_sample(tmp_path / "train", "a", np.zeros((4, 4, 3), dtype=np.uint8), np.zeros((4, 4, 1), dtype=np.uint8))
    with pytest.raises(ProbeError, match=r"a\.npy has shape \(4, 4, 1\)"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


def test_label_map_size_differs_from_image(tmp_path: Path) -> None:
    write_sample(tmp_path / "train", "a", np.zeros((4, 4, 3), dtype=np.uint8), np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ProbeError, match=r"a\.npy is 2x2 but its image a\.png is 4x4"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


def test_unreadable_label_map(tmp_path: Path) -> None:
    write_sample(tmp_path / "train", "a", np.zeros((4, 4, 3), dtype=np.uint8), None)
    (tmp_path / "train" / "a.npy").write_bytes(b"garbage")
    with pytest.raises(ProbeError, match=r"cannot read label map .*a\.npy"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


@pytest.mark.parametrize("bad_value", [3, -1, 300])
def test_labels_out_of_range(tmp_path: Path, bad_value: int) -> None:
    labels = np.zeros((2, 2), dtype=np.int64)
    labels[1, 1] = bad_value
    write_sample(tmp_path / "train", "a", np.zeros((2, 2, 3), dtype=np.uint8), labels)
    with pytest.raises(ProbeError, match=rf"a\.npy holds values \[{bad_value}\] outside 0\.\.2"):
        load_labeled_split(tmp_path, "train", 2, num_classes=3, ignore_label=255)


def test_ignore_label_zero_rejects_255(tmp_path: Path) -> None:
    write_sample(tmp_path / "train", "a", np.zeros((2, 2, 3), dtype=np.uint8), np.full((2, 2), 255, dtype=np.uint8))
    with pytest.raises(ProbeError, match=r"a\.npy holds values \[255\].*ignore label 0"):
        load_labeled_split(tmp_path, "train", 2, num_classes=29, ignore_label=0)


def test_limit_beyond_images_says_how_many_and_names_the_option(tmp_path: Path) -> None:
    make_split(tmp_path / "train", ["a", "b"])
    with pytest.raises(ProbeError) as error:
        load_labeled_split(tmp_path, "train", 4, 3, 255, limit=5)
    assert str(error.value) == f"5 images asked for: {tmp_path / 'train'} holds 2 images; ask for 1..2"
    with pytest.raises(ProbeError) as error:
        load_labeled_split(tmp_path, "train", 4, 3, 255, limit=3, option="--n-images")
    assert str(error.value) == f"--n-images 3: {tmp_path / 'train'} holds 2 images; give --n-images 1..2"


def test_a_split_without_label_maps_asks_for_them_not_for_classes_txt(tmp_path: Path) -> None:
    # classes.txt names the classes but does not label pixels: the hint must not offer it instead of the .npy maps
    write_sample(tmp_path / "train", "a", np.zeros((4, 4, 3), dtype=np.uint8), None)
    with pytest.raises(ProbeError) as error:
        infer_num_classes(tmp_path)
    assert "classes.txt" not in str(error.value) and "a <stem>.npy label map" in str(error.value)
    (tmp_path / "classes.txt").write_text("sky\nroad\n")
    assert infer_num_classes(tmp_path) == 2
    with pytest.raises(ProbeError, match=r"label map .*a\.npy missing for image .*a\.png; put a a\.npy"):
        load_labeled_split(tmp_path, "train", 4, 2, 255)
    (tmp_path / "classes.txt").unlink()
    np.save(tmp_path / "train" / "a.npy", np.full((4, 4), 255, np.uint8))
    with pytest.raises(ProbeError) as error:
        infer_num_classes(tmp_path)
    assert "classes.txt" not in str(error.value) and "label some pixels with class ids" in str(error.value)


def test_shared_stem_rejected(tmp_path: Path) -> None:
    make_split(tmp_path / "train", ["a"])
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "train" / "a.jpg")
    with pytest.raises(ProbeError, match=r"share the stem 'a'"):
        load_labeled_split(tmp_path, "train", 4, 3, 255)


def test_classes_file_wrong_count(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("sky\nroad\n")
    with pytest.raises(ProbeError, match=r"classes\.txt lists 2 class names but there are 3"):
        read_class_names(tmp_path, 3)


def test_registry_names_with_wrong_count(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"cat_15 has 15 classes, not 4"):
        read_class_names(tmp_path, 4, lookup("cat_15"))


def test_missing_registry_dataset_names_path_and_source(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"horse_21 not found at .*data/horse_21.*datasets\.tar\.gz"):
        resolve_dataset_root(lookup("horse21"), tmp_path / "data")
    (tmp_path / "data" / "horse_21").mkdir(parents=True)
    assert resolve_dataset_root(lookup("horse21"), tmp_path / "data") == tmp_path / "data" / "horse_21"


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"image .*ghost\.png does not exist"):
        load_images([tmp_path / "ghost.png"], 4)


def test_bad_resolution(tmp_path: Path) -> None:
    make_split(tmp_path, ["a"])
    with pytest.raises(ProbeError, match=r"resolution 0"):
        load_images(tmp_path, 0)


# sizes: own data at its own size, the paper's rule, non-square images (--fit)


def test_keep_size_leaves_labels_at_the_images_size(tmp_path: Path) -> None:
    make_split(tmp_path / "train", ["a"], size=8, num_classes=4)
    labels = np.load(tmp_path / "train" / "a.npy")
    (paper,) = load_labeled_split(tmp_path, "train", 4, 4, 255)
    (own,) = load_labeled_split(tmp_path, "train", 4, 4, 255, keep_size=True)
    np.testing.assert_array_equal(own.image, paper.image)  # the model sees the same input
    assert paper.labels.shape == paper.size == paper.grid == (4, 4)  # the authors' rule: at the model's size
    assert own.labels.dtype == np.int64 and own.size == own.grid == (8, 8)
    np.testing.assert_array_equal(own.labels, labels)
    np.testing.assert_array_equal(own.picture, np.asarray(Image.open(tmp_path / "train" / "a.png")))
    (same,) = load_labeled_split(tmp_path, "train", 8, 4, 255, keep_size=True)  # at the model's size: as before
    (before,) = load_labeled_split(tmp_path, "train", 8, 4, 255)
    assert same.picture is None and same.shape is None
    np.testing.assert_array_equal(same.labels, before.labels)
    np.testing.assert_array_equal(same.image, before.image)
    (unlabelled,) = load_images(tmp_path / "train" / "a.png", 4, keep_size=True)
    assert unlabelled.size == (8, 8) and load_images(tmp_path / "train" / "a.png", 4)[0].size == (4, 4)


def test_fit_makes_non_square_images_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)  # 6 wide, 4 high
    labels = rng.integers(0, 3, (4, 6)).astype(np.uint8)
    write_sample(tmp_path / "train", "wide", pixels, labels)
    with pytest.raises(ProbeError, match=r"wide\.png is 6x4; only square images .*--fit resize.*--fit pad"):
        load_labeled_split(tmp_path, "train", 3, 3, 255, keep_size=True)
    with pytest.raises(ProbeError, match=r"--fit 'crop': choose resize .* or pad"):
        load_labeled_split(tmp_path, "train", 3, 3, 255, fit="crop")

    # resize: the image stretched to the model's square in one resize; labels at the image's size, or nearest
    (own,) = load_labeled_split(tmp_path, "train", 3, 3, 255, keep_size=True, fit="resize")
    stretched = np.asarray(Image.fromarray(pixels).resize((3, 3), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(own.image, stretched.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)
    assert own.size == own.grid == (4, 6)
    np.testing.assert_array_equal(own.labels, labels)
    (paper,) = load_labeled_split(tmp_path, "train", 3, 3, 255, fit="resize")
    np.testing.assert_array_equal(paper.labels, labels[np.ix_(nearest_source_indices(4, 3), nearest_source_indices(6, 3))])

    # pad: bottom and right to a square of the longer side, black; the labels cover the canvas's top left
    (own,) = load_labeled_split(tmp_path, "train", 6, 3, 255, keep_size=True, fit="pad")
    square = np.zeros((6, 6, 3), dtype=np.uint8)
    square[:4] = pixels
    np.testing.assert_array_equal(own.image, square.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)
    assert own.size == (4, 6) and own.grid == (6, 6)
    np.testing.assert_array_equal(own.labels, labels)
    np.testing.assert_array_equal(own.picture, pixels)
    (paper,) = load_labeled_split(tmp_path, "train", 3, 3, 255, fit="pad")  # padded with the ignore label, nearest
    padded = np.full((6, 6), 255, dtype=np.uint8)
    padded[:4] = labels
    np.testing.assert_array_equal(paper.labels, padded[::2, ::2])
    (unlabelled,) = load_images(tmp_path / "train", 3, keep_size=True, fit="pad")
    assert unlabelled.size == (4, 6) and unlabelled.grid == (6, 6)
