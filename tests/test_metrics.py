"""SegmentationScore against hand-computed IoUs and the authors' per-class loop."""

import numpy as np
import pytest

from probe.errors import ProbeError
from probe.metrics import SegmentationScore, mean_std


def authors_miou(preds, gts, num_classes, ignore_label):
    """The authors' compute_iou, written the slow way for comparison."""
    ious = []
    for c in range(num_classes):
        if c == ignore_label:
            continue
        inter = sum(((p == c) & (g == c)).sum() for p, g in zip(preds, gts))
        union = sum(((p == c) | (g == c)).sum() for p, g in zip(preds, gts))
        ious.append(inter / (1e-8 + union))
    return np.mean(ious)


def test_hand_example_with_ignore_pixels_and_absent_class():
    score = SegmentationScore(num_classes=4, ignore_label=255)
    # The ignore pixel at (1, 0) is predicted as class 1: it counts in class 1's union.
    score.update(np.array([[0, 1, 1], [1, 2, 0]]), np.array([[0, 0, 1], [255, 2, 2]]))
    score.update(np.array([[2, 0]]), np.array([[2, 2]]))
    np.testing.assert_array_equal(score.class_ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(score.intersection, [1, 1, 2, 0])
    np.testing.assert_array_equal(score.union, [4, 3, 4, 0])
    np.testing.assert_allclose(score.iou, [1 / 4, 1 / 3, 2 / 4, 0.0], atol=1e-7)  # class 3 is absent: IoU 0
    assert score.miou == pytest.approx((1 / 4 + 1 / 3 + 2 / 4 + 0) / 4, abs=1e-7)


def test_real_class_as_ignore_label_like_bedroom28():
    score = SegmentationScore(num_classes=3, ignore_label=0)
    score.update(np.array([1, 1, 2, 0]), np.array([0, 1, 2, 2]))
    np.testing.assert_array_equal(score.class_ids, [1, 2])
    # class 1: predicted on a background pixel too -> inter 1, union 2; class 2: inter 1, union 2
    np.testing.assert_allclose(score.iou, [0.5, 0.5], atol=1e-7)
    assert score.miou == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("ignore_label", [255, 0])
def test_matches_authors_loop_on_random_maps(ignore_label):
    rng = np.random.default_rng(3)
    num_classes = 6
    values = np.array([*range(num_classes), ignore_label])
    preds = [rng.integers(0, num_classes, (17, 13)) for _ in range(3)]
    gts = [rng.choice(values, (17, 13)) for _ in range(3)]
    score = SegmentationScore(num_classes, ignore_label)
    for pred, gt in zip(preds, gts):
        score.update(pred, gt)
    assert score.miou == pytest.approx(authors_miou(preds, gts, num_classes, ignore_label), abs=1e-12)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(ProbeError, match="shape"):
        SegmentationScore(3, 255).update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_mean_std_uses_population_std():
    mean, std = mean_std([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(np.sqrt(0.02 / 3))


def test_confusion_counts_true_by_predicted_and_gives_the_iou():
    score = SegmentationScore(num_classes=3, ignore_label=255)
    score.update(np.array([[0, 1, 1], [1, 2, 0]]), np.array([[0, 0, 1], [255, 2, 2]]))
    score.update(np.array([[2, 0]]), np.array([[2, 2]]))
    # rows: true 0, 1, 2, then every label >= 3 (the ignore label); columns: predicted, the same order
    np.testing.assert_array_equal(score.confusion, [[1, 1, 0, 0], [0, 1, 0, 0], [2, 0, 2, 0], [0, 1, 0, 0]])
    diagonal = np.diag(score.confusion)[:3]
    union = score.confusion.sum(1)[:3] + score.confusion.sum(0)[:3] - diagonal
    np.testing.assert_array_equal(diagonal, score.intersection)
    np.testing.assert_array_equal(union, score.union)


@pytest.mark.parametrize("ignore_label", [255, 0])
def test_confusion_matches_sklearn_on_random_maps(ignore_label):
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(5)
    preds = [rng.integers(0, 5, (9, 11)) for _ in range(2)]
    gts = [rng.choice([*range(5), ignore_label], (9, 11)) for _ in range(2)]
    score = SegmentationScore(5, ignore_label)
    for pred, gt in zip(preds, gts):
        score.update(pred, gt)
    truth = np.minimum(np.concatenate([g.ravel() for g in gts]), 5)
    expected = confusion_matrix(truth, np.concatenate([p.ravel() for p in preds]), labels=range(6))
    np.testing.assert_array_equal(score.confusion, expected)
    assert score.confusion.sum() == 2 * 9 * 11


def test_pck_per_point_pools_keypoints_and_per_image_averages_pairs():
    """Pair a: 1 of 2 keypoints within alpha x bbox_size, pair b: 3 of 3: per point 4/5, per image (1/2 + 1) / 2."""
    import pandas as pd

    from probe.metrics import alpha_key, pck, pck_correct, reference_alpha

    table = pd.DataFrame({"pair": ["a", "a", "b", "b", "b"], "trg_x": [0, 0, 10, 10, 10], "trg_y": [0, 0, 5, 5, 5],
                          "pred_x": [3, 6, 10, 13, 10], "pred_y": [4, 8, 5, 9, 0], "bbox_size": [50, 50, 50, 50, 50]})
    assert pck_correct(table, 0.1).tolist() == [True, False, True, True, True]  # distances 5, 10, 0, 5, 5 vs 5
    scores = pck(table, [0.1, 0.25])
    assert scores["pck_point"] == {"0.1": 80.0, "0.25": 100.0} and scores["pck_image"] == {"0.1": 75.0, "0.25": 100.0}
    assert (scores["pairs"], scores["keypoints"]) == (2, 5)
    assert alpha_key(0.05) == "0.05" and reference_alpha([0.05, 0.1]) == 0.1 and reference_alpha([0.2, 0.3, 0.4]) == 0.3
