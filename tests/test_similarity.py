"""probe.similarity against independent slow implementations (explicit centring matrix, Song et al.'s sums written
out, the U-statistic HSIC is, neighbour loops, CCA from covariance matrices), its invariances, its behaviour on
unrelated data and its errors."""

import ast
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from probe import similarity
from probe.errors import ProbeError
from probe.similarity import cka, cknna, minibatch_cka, mutual_knn, svcca


def related(n, d1, d2, seed=0, noise=1.0):
    """X (n x d1) and Y = X A + noise (n x d2): a CKA well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d1)) + 3.0  # an offset: centring must matter
    Y = X @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2))
    return X, Y


def orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# -- slow references, written from the papers' formulas --------------------------------------------------------------

def hsic_gram(K, L):
    """Biased HSIC with the explicit centring matrix: tr(K H L H) / (N-1)^2."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def hsic_song(K, L):
    """Song et al. (2012), eq. 5, every sum written out over the Gram matrices with zeroed diagonals."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    trace = sum(Kt[i, j] * Lt[j, i] for i in range(n) for j in range(n))
    ones_k = sum(Kt[i, j] for i in range(n) for j in range(n))
    ones_l = sum(Lt[i, j] for i in range(n) for j in range(n))
    cross = sum(Kt[i, j] * Lt[j, q] for i in range(n) for j in range(n) for q in range(n))
    return (trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2 / (n - 2) * cross) / (n * (n - 3))


def hsic_ustatistic(K, L):
    """The unbiased HSIC as the U-statistic it is: the mean over distinct (i, j, q, r) of
    K_ij L_ij + K_ij L_qr - 2 K_ij L_iq (Song et al. 2012, Theorem 2)."""
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(K.shape[0]), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def cka_reference(K, L, hsic):
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def rbf_reference(X, sigma):
    n = X.shape[0]
    D = np.array([[np.sum((X[i] - X[j]) ** 2) for j in range(n)] for i in range(n)])
    return np.exp(-D / (2 * sigma ** 2 * np.median(D)))


def neighbour_sets(Z, k, include_self=False):
    """The k rows with the largest cosine similarity to each row, by sorting each row's list."""
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    sets = []
    for i in range(len(Z)):
        scores = [(float(Z[i] @ Z[j]), j) for j in range(len(Z)) if include_self or j != i]
        sets.append({j for _, j in sorted(scores, reverse=True)[:k]})
    return sets


def mutual_knn_reference(X, Y, k):
    return np.mean([len(a & b) / k for a, b in zip(neighbour_sets(X, k), neighbour_sets(Y, k))])


def cknna_reference(X, Y, k):
    """Huh et al.'s definition: unbiased HSIC of the kernels masked to mutual neighbours (self excluded)."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    n = len(X)
    a_x, a_y = np.zeros((n, n)), np.zeros((n, n))
    for i, (nx, ny) in enumerate(zip(neighbour_sets(X, k), neighbour_sets(Y, k))):
        a_x[i, list(nx)] = 1
        a_y[i, list(ny)] = 1
    K, L = X @ X.T, Y @ Y.T
    a = a_x * a_y
    return hsic_song(a * K, a * L) / np.sqrt(hsic_song(a_x * K, a_x * K) * hsic_song(a_y * L, a_y * L))


def canonical_correlations(A, B):
    """CCA the textbook way: the square roots of the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx."""
    A, B = A - A.mean(0), B - B.mean(0)
    sxx, syy, sxy = A.T @ A, B.T @ B, A.T @ B
    values = scipy.linalg.eigvals(np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T))
    return np.sqrt(np.clip(np.sort(values.real)[::-1], 0, None))


# -- CKA --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"debiased": True}, {"kernel": "rbf"}, {"kernel": "rbf", "sigma": 0.4},
                                     {"kernel": "rbf", "debiased": True}])
def test_cka_of_a_representation_with_itself_is_one(options):
    X, _ = related(80, 12, 5)
    assert cka(X, X, **options) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, d1, d2", [(300, 10, 7), (40, 100, 60)])  # the feature-space form, then the Gram form
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_equals_the_gram_matrix_formula(n, d1, d2, debiased):
    """Song's sums in matrix form (checked against the sums written out below): the loops are O(N^3) in Python."""
    X, Y = related(n, d1, d2, seed=n)
    expected = cka_reference(X @ X.T, Y @ Y.T, vectorised_song if debiased else hsic_gram)
    assert cka(X, Y, debiased=debiased) == pytest.approx(expected, abs=1e-5)
    assert 0.05 < expected < 0.99


def vectorised_song(K, L):
    n = K.shape[0]
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def test_the_unbiased_hsic_is_song_et_als_sums_and_the_u_statistic():
    X, Y = related(9, 4, 3, seed=3, noise=2.0)
    K, L = X @ X.T, Y @ Y.T
    for k, m in [(K, L), (K, K), (L, L)]:
        assert hsic_song(k, m) == pytest.approx(hsic_ustatistic(k, m), rel=1e-9)
        assert vectorised_song(k, m) == pytest.approx(hsic_song(k, m), rel=1e-9)
    assert cka(X, Y, debiased=True) == pytest.approx(cka_reference(K, L, hsic_song), abs=1e-9)
    X, Y = related(25, 30, 40, seed=4)  # the Gram route
    assert cka(X, Y, debiased=True) == pytest.approx(cka_reference(X @ X.T, Y @ Y.T, hsic_song), abs=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_rbf_cka_equals_kornblith_bandwidth_and_the_gram_formula(debiased, sigma):
    X, Y = related(30, 6, 4, seed=5)
    hsic = hsic_song if debiased else hsic_gram
    expected = cka_reference(rbf_reference(X, sigma), rbf_reference(Y, sigma), hsic)
    assert cka(X, Y, kernel="rbf", sigma=sigma, debiased=debiased) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("options", [{}, {"debiased": True}, {"kernel": "rbf"}, {"kernel": "rbf", "debiased": True}])
@pytest.mark.parametrize("n, d1, d2", [(200, 16, 9), (30, 50, 70)])
def test_cka_is_invariant_to_rotation_and_isotropic_scaling(options, n, d1, d2):
    X, Y = related(n, d1, d2, seed=6)
    base = cka(X, Y, **options)
    assert 0.05 < base < 0.999
    moved = cka(7.5 * X @ orthogonal(d1, 1), 0.01 * Y @ orthogonal(d2, 2), **options)
    assert moved == pytest.approx(base, abs=1e-9)
    assert cka(Y, X, **options) == pytest.approx(base, abs=1e-12)
    if options.get("kernel") != "rbf":  # linear CKA is also invariant to shifting the features
        assert cka(X - 10.0, Y + 4.0, **options) == pytest.approx(base, abs=1e-9)


def test_cka_of_shuffled_rows_is_about_zero_and_the_biased_one_is_pushed_up():
    """Row i of Y is another input's representation. At N=1000, D=20 the debiased CKA's spread over seeds is about
    0.0015, so |CKA_u| < 0.01; the biased CKA sits near D/(N+D) = 0.0196 (spread 0.0015): between 0.01 and 0.03.
    At N=50 the bias reaches about D/(N+D) = 0.29 while the debiased CKA stays within 0.1."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(1000, 20))
    Y = X[rng.permutation(1000)]
    unbiased, biased = cka(X, Y, debiased=True), cka(X, Y)
    assert abs(unbiased) < 0.01
    assert 0.01 < biased < 0.03
    small = X[:50], Y[:50]
    assert cka(*small) > 0.2
    assert abs(cka(*small, debiased=True)) < 0.1


def test_torch_tensors_give_the_numpy_value():
    X, Y = related(50, 8, 6, seed=8)
    tx = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    ty = torch.tensor(Y, dtype=torch.float32)
    value = cka(tx, ty, debiased=True)
    assert isinstance(value, float)
    assert value == pytest.approx(cka(X.astype(np.float32), Y.astype(np.float32), debiased=True), abs=1e-12)
    assert mutual_knn(tx, ty, 5) == mutual_knn(X.astype(np.float32), Y.astype(np.float32), 5)


def test_the_module_imports_only_numpy_and_probe_errors_at_import():
    tree = ast.parse(Path(similarity.__file__).read_text())
    top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert top == {"__future__", "numpy", "probe.errors"}


# -- minibatch CKA ----------------------------------------------------------------------------------------------------

def test_minibatch_cka_estimates_the_full_debiased_cka_and_repeats_with_its_seed():
    """N=2000 in 4 batches of 500: over seeds the difference to the full debiased CKA spreads by about 0.0013, so
    |diff| < 0.01. The same seed gives the same value; another seed another shuffle."""
    X, Y = related(2000, 30, 20, seed=9, noise=6.0)
    full = cka(X, Y, debiased=True)
    assert 0.1 < full < 0.9
    first = minibatch_cka(X, Y, 500, generator=np.random.default_rng(0))
    assert abs(first - full) < 0.01
    assert minibatch_cka(X, Y, 500, generator=np.random.default_rng(0)) == first
    assert minibatch_cka(X, Y, 500, generator=np.random.default_rng(1)) != first
    assert minibatch_cka(X, Y, 2000, generator=np.random.default_rng(1)) == pytest.approx(full, abs=1e-9)


def test_minibatch_cka_is_the_ratio_of_the_batches_mean_hsics():
    X, Y = related(30, 5, 4, seed=10)
    order = np.random.default_rng(3).permutation(30)
    sums = np.zeros(3)
    for b in range(3):  # 30 // 8 = 3 batches; the last 6 rows of the shuffle are left out
        rows = order[8 * b:8 * (b + 1)]
        K, L = X[rows] @ X[rows].T, Y[rows] @ Y[rows].T
        sums += [hsic_song(K, L), hsic_song(K, K), hsic_song(L, L)]
    expected = sums[0] / np.sqrt(sums[1] * sums[2])
    assert minibatch_cka(X, Y, 8, generator=np.random.default_rng(3)) == pytest.approx(expected, abs=1e-9)


# -- nearest neighbours -----------------------------------------------------------------------------------------------

def test_mutual_knn_equals_a_neighbour_loop():
    X, Y = related(120, 10, 8, seed=11, noise=1.5)
    for k in (1, 5, 20):
        value = mutual_knn(X, Y, k)
        assert value == pytest.approx(mutual_knn_reference(X, Y, k), abs=1e-5)
        assert 0.05 < value < 0.95


def test_mutual_knn_is_one_with_itself_and_about_k_over_n_for_unrelated_data():
    """Independent N=1000 samples, k=10: each row shares about k/(N-1) = 0.01 of its neighbours, spread 0.0011 over
    seeds, so within 0.005. Rescaling rows changes nothing (neighbours by cosine)."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(1000, 16))
    assert mutual_knn(X, X, 10) == 1.0
    assert mutual_knn(X, X * rng.uniform(0.1, 10, size=(1000, 1)) @ orthogonal(16, 3), 10) == 1.0
    assert abs(mutual_knn(X, rng.normal(size=(1000, 16)), 10) - 10 / 999) < 0.005


def test_cknna_equals_huh_et_als_definition_written_out():
    X, Y = related(30, 6, 5, seed=13, noise=2.0)
    for k in (5, 12):
        assert cknna(X, Y, k) == pytest.approx(cknna_reference(X, Y, k), abs=1e-5)


def test_cknna_is_one_with_itself_and_the_debiased_cka_of_unit_rows_at_k_n_minus_1():
    X, Y = related(60, 10, 12, seed=14)
    assert cknna(X, X, 10) == pytest.approx(1.0, abs=1e-12)
    assert cknna(X, X, 10, debiased=False) == pytest.approx(1.0, abs=1e-12)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True), Y / np.linalg.norm(Y, axis=1, keepdims=True)
    assert cknna(X, Y, 59) == pytest.approx(cka(*unit, debiased=True), abs=1e-9)
    assert cknna(X, Y, 10) == pytest.approx(cknna(3 * X @ orthogonal(10, 4), Y, 10), abs=1e-9)


def test_cknna_of_unrelated_data_is_small():
    rng = np.random.default_rng(15)
    X, Y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert abs(cknna(X, Y, 10)) < 0.1


# -- SVCCA ------------------------------------------------------------------------------------------------------------

def test_svcca_of_an_invertible_map_is_one():
    rng = np.random.default_rng(16)
    X = rng.normal(size=(200, 8))
    assert svcca(X, X @ rng.normal(size=(8, 8)) + 5.0, 8) == pytest.approx(1.0, abs=1e-9)
    low = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 20))  # rank 5 in 20 columns, mapped to 30
    assert svcca(low, low @ rng.normal(size=(20, 30)), 5) == pytest.approx(1.0, abs=1e-9)


def test_svcca_is_the_mean_canonical_correlation_of_the_top_directions():
    X, Y = related(150, 12, 10, seed=17, noise=4.0)
    dims = 4

    def top(Z):
        u, s, _ = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
        return u[:, :dims] * s[:dims]  # the data in its top directions, as Raghu et al. keep it

    expected = canonical_correlations(top(X), top(Y)).mean()
    value = svcca(X, Y, dims)
    assert value == pytest.approx(expected, abs=1e-5)
    assert 0.05 < value < 0.99


# -- errors -----------------------------------------------------------------------------------------------------------

rng = np.random.default_rng(18)
A, B = rng.normal(size=(20, 5)), rng.normal(size=(20, 3))


@pytest.mark.parametrize("call, words", [
    (lambda: cka(A, B[:19]), "X has 20 rows and Y 19"),
    (lambda: cka(A[:3], B[:3], debiased=True), "N=3 rows"),
    (lambda: cka(A[:1], B[:1]), "N=1 rows"),
    (lambda: cka(np.ones((20, 5)) * 0.1, B), "X is constant"),
    (lambda: cka(A, np.tile(B[:1], (20, 1)), debiased=True), "Y is constant"),
    (lambda: cka(np.ones((20, 5)), B, kernel="rbf"), "median squared distance between rows of X is 0"),
    (lambda: cka(A, B, kernel="cosine"), "kernel='cosine'"),
    (lambda: cka(A, B, sigma=0.5), "sigma=0.5"),
    (lambda: cka(A, B, kernel="rbf", sigma=0.0), "sigma=0.0"),
    (lambda: cka(A[:, 0], B), "X has shape (20,)"),
    (lambda: cka(A, np.where(B > 1, np.nan, B)), "Y holds NaN"),
    (lambda: mutual_knn(A, B, 20), "k=20"),
    (lambda: mutual_knn(A, B, 0), "k=0"),
    (lambda: mutual_knn(np.vstack([A[:19], np.zeros((1, 5))]), B, 3), "row 19 of X is all zeros"),
    (lambda: mutual_knn(A, np.outer(np.arange(1, 21), B[0]), 3), "Y (rows L2-normalised) is constant"),
    (lambda: cknna(A, B, 20), "k=20"),
    (lambda: cknna(A, B, 21, debiased=False), "k=21"),
    (lambda: cknna(A[:3], B[:3], 2), "N=3 rows"),
    (lambda: svcca(A, B, 4), "dims=4"),
    (lambda: svcca(A, B, 0), "dims=0"),
    (lambda: svcca(A @ np.ones((5, 5)), B, 2), "centred X has rank 1"),
    (lambda: minibatch_cka(A, B, 3, generator=np.random.default_rng(0)), "batch_size=3"),
    (lambda: minibatch_cka(A, B, 21, generator=np.random.default_rng(0)), "batch_size=21"),
    (lambda: minibatch_cka(A, B, 10, generator=0), "generator=0"),
    (lambda: minibatch_cka(np.ones((20, 2)), B, 10, generator=np.random.default_rng(0)), "X is constant"),
])
def test_degenerate_input_raises_a_one_line_probe_error_naming_it(call, words):
    with pytest.raises(ProbeError) as raised:
        call()
    message = str(raised.value)
    assert words in message
    assert "\n" not in message


def test_a_debiased_self_hsic_that_is_not_positive_raises():
    """X varies, yet at N=4 with one outlying row the unbiased estimate of HSIC(K, K) is 0."""
    X = np.array([[0.0], [0.0], [0.0], [1.0]])
    with pytest.raises(ProbeError, match=r"self-HSIC of X is 0 \(not positive\)"):
        cka(X, np.arange(4.0)[:, None], debiased=True)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_is_cka_of_every_pair(debiased):
    """The sweep's form (probe similarity): one product per left representation against all right ones."""
    from probe.similarity import cka_matrix

    X, Y = related(60, 5, 9, seed=3)
    Z = np.random.default_rng(4).normal(size=(60, 30)) + 1.0
    left, right = [X, Y, Z], [Y, torch.from_numpy(Z)]
    expected = np.array([[cka(a, b, debiased=debiased) for b in right] for a in left])
    np.testing.assert_allclose(cka_matrix(left, right, debiased=debiased), expected, atol=1e-12)
    square = cka_matrix(left, debiased=debiased)
    assert np.array_equal(square, square.T) and np.array_equal(np.diag(square), np.ones(3))
    np.testing.assert_allclose(square, [[cka(a, b, debiased=debiased) for b in left] for a in left], atol=1e-12)
    with pytest.raises(ProbeError, match=r"Ys\[0\] is constant"):
        cka_matrix(left, [np.ones((60, 3))])
    with pytest.raises(ProbeError, match="Xs have 60 rows and Ys 59"):
        cka_matrix(left, [Z[:59]])


def test_neighbour_lists_give_mutual_knn():
    from probe.similarity import nearest_neighbours, neighbour_overlap

    X, Y = related(80, 6, 4, seed=5)
    near = nearest_neighbours(X, 7)
    assert near.shape == (80, 7) and near.base is None  # a copy, not a view of the N x N partition
    assert all(i not in row for i, row in enumerate(near))
    assert neighbour_overlap(near, nearest_neighbours(Y, 7)) == mutual_knn(X, Y, 7)
    with pytest.raises(ProbeError, match="neighbour lists of shapes"):
        neighbour_overlap(near, near[:, :3])


def test_the_docs_table_of_chance_levels_is_what_the_metrics_give():
    """docs/experiments/similarity.md's table (independent Gaussian X, Y of width 512, default_rng(0)) recomputes."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "experiments" / "similarity.md").read_text()
    rows = re.findall(r"^\s*\| (\d+) \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \|$", page, re.M)
    assert [int(row[0]) for row in rows] == [64, 256, 1024, 4096]
    generator = np.random.default_rng(0)
    for n, biased, debiased, knn, chance in rows:
        X, Y = generator.standard_normal((int(n), 512)), generator.standard_normal((int(n), 512))
        computed = (cka(X, Y), cka(X, Y, debiased=True), mutual_knn(X, Y, 10), 10 / (int(n) - 1))
        assert [f"{value:.3f}" for value in computed] == [biased, debiased, knn, chance]
