import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from probe.tasks.kmeans import fit_kmeans, kmeans_labels, match_labels
from probe.errors import ProbeError


def blobs(seed: int, per_cluster: int = 200, k: int = 4, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs (centres 20 apart, unit spread) and their true ids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k, dim) * 20.0
    truth = np.repeat(np.arange(k), per_cluster)
    points = centres[truth] + rng.normal(size=(truth.size, dim))
    order = rng.permutation(truth.size)
    return points[order], truth[order]


def test_kmeans_recovers_separated_blobs():
    points, truth = blobs(0)
    labels = kmeans_labels(points.astype(np.float64), k=4)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) == 1.0


def test_kmeans_seed_determinism():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(600, 6)).astype(np.float32)  # no structure: the result depends on the seed
    first, again = kmeans_labels(points, k=5, seed=3), kmeans_labels(points, k=5, seed=3)
    np.testing.assert_array_equal(first, again)
    assert set(np.unique(first)) == set(range(5))


def test_kmeans_rejects_bad_input():
    with pytest.raises(ProbeError, match="fewer than k"):
        kmeans_labels(np.zeros((3, 2), np.float32), k=5)
    with pytest.raises(ProbeError, match=r"\(N, D\)"):
        kmeans_labels(np.zeros((3, 2, 2), np.float32), k=2)
    with pytest.raises(ProbeError, match="fit_on"):
        fit_kmeans([np.zeros((10, 2), np.float32)], k=2, fit_on="pixels")


def test_match_labels_undoes_a_permutation():
    rng = np.random.default_rng(2)
    reference = rng.integers(0, 5, size=(16, 16))
    permutation = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(match_labels(reference, permutation[reference], 5), reference)


def test_match_labels_maximises_overlap_when_clusters_differ():
    reference = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([2, 2, 1, 0, 0, 1, 1, 0])  # 2 -> 0 (2 px), 0 -> 1 (2 px), 1 -> 2 (2 px) is the best renaming
    np.testing.assert_array_equal(match_labels(reference, labels, 3), [0, 0, 2, 1, 1, 2, 2, 1])
    with pytest.raises(ProbeError, match="outside"):
        match_labels(reference, labels + 1, 3)


def test_fit_on_all_shares_centroids():
    points, truth = blobs(4, per_cluster=150)
    halves = [points[:300], points[300:]]
    per_image = fit_kmeans(halves, k=4, seed=0, fit_on="image")
    shared = fit_kmeans(halves, k=4, seed=0, fit_on="all")
    for labels, true in zip(per_image + shared, [truth[:300], truth[300:]] * 2):
        assert adjusted_rand_score(true, labels) == 1.0
    # shared centroids: a blob has the same id in both images
    both = np.concatenate(shared)
    assert all(len(np.unique(both[truth == c])) == 1 for c in range(4))


def test_fit_on_all_subsamples_large_inputs_deterministically():
    points, truth = blobs(5, per_cluster=400, k=2)  # 800 pixels > 256 * k = 512 training pixels
    images = [points[:500], points[500:]]
    first = fit_kmeans(images, k=2, seed=7, fit_on="all")
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(fit_kmeans(images, k=2, seed=7, fit_on="all")))
    assert adjusted_rand_score(truth, np.concatenate(first)) == 1.0
