"""Representation similarity: how alike two feature matrices X (N x D1) and Y (N x D2) are, row i of each being the
same input. Numpy arrays or torch tensors in (computed in float64), a Python float out; bad input raises ProbeError.

    cka            linear or RBF CKA, biased or debiased      Kornblith et al., ICML 2019; Song et al., JMLR 2012
    minibatch_cka  debiased CKA accumulated over minibatches   Nguyen et al., ICLR 2021
    mutual_knn     shared nearest neighbours                   Huh et al., ICML 2024
    cknna          CKA over mutual nearest-neighbour pairs     Huh et al., ICML 2024
    svcca          SVD, then CCA                               Raghu et al., NeurIPS 2017

`cka_matrix` gives linear CKA for every pair of two lists of representations; `nearest_neighbours` and
`neighbour_overlap` split mutual_knn for many pairs (each representation's neighbours
found once); METRICS names the metrics of `probe similarity` (probe.tasks.compare), check_metrics reads
a list of them.

Notation: K = X X^T and L = Y Y^T are the Gram matrices, H = I - 11^T/N the centring matrix, and
HSIC(K, L) = tr(K H L H) / (N-1)^2 the biased HSIC estimator.
"""

from __future__ import annotations

import numpy as np

from probe.errors import ProbeError

KERNELS = ("linear", "rbf")
# The metrics `probe similarity` computes, by the name its --metrics takes: what each one is.
METRICS = {
    "cka": "linear CKA, biased HSIC: cka(X, Y)",
    "cka_debiased": "linear CKA, Song et al.'s unbiased HSIC: cka(X, Y, debiased=True)",
    "mutual_knn": "mutual k-nearest neighbours: mutual_knn(X, Y, k)",
    "cknna": "CKA over mutual nearest-neighbour pairs: cknna(X, Y, k)",
    "svcca": "SVCCA: svcca(X, Y, dims)",
}



def check_metrics(text: str) -> list[str]:
    """The metrics of a --metrics list (`cka,mutual_knn`), each once, in the given order; an unknown name is one
    ProbeError line."""
    chosen = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        what = f"unknown metric {unknown[0]!r}" if unknown else "no metric"
        raise ProbeError(f"--metrics {text!r}: {what}; choose among {', '.join(METRICS)}, e.g. cka,mutual_knn")
    return chosen

def cka(X, Y, *, debiased: bool = False, kernel: str = "linear", sigma: float | None = None) -> float:
    """Centred kernel alignment (Kornblith et al., "Similarity of Neural Network Representations Revisited",
    ICML 2019): CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), in [0, 1] when biased, 1 for X = Y.

    kernel="linear": K = X X^T. Then CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc,
    Yc, the form computed when it is cheaper than the N x N Gram matrices (N large against D1, D2): the same value.
    kernel="rbf": K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 m)), m the median of the N x N squared distances
    ||x_i - x_j||^2 (the N zeros of the diagonal included), as Kornblith et al.'s code: `sigma` (default 1.0) is
    the bandwidth in units of sqrt(m), so sigma=1 puts the bandwidth at the median distance. Invariant to rotation
    and isotropic scaling of either representation, like linear CKA.

    debiased=True replaces HSIC with Song et al.'s (JMLR 2012) unbiased estimator (needs N >= 4): with K~, L~ the
    Gram matrices with zeroed diagonals,
    HSIC_u(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((N-1)(N-2)) - 2/(N-2) 1^T K~ L~ 1] / (N(N-3)).
    The biased CKA of unrelated representations is pushed up when D is not small against N (about D/(N+D) for two
    independent isotropic Gaussians); the debiased one is about 0 there, and may come out slightly negative.
    """
    X, Y = _pair(X, Y)
    n = X.shape[0]
    if debiased:
        _need_rows(n, 4, "debiased CKA (Song et al.'s unbiased HSIC)", "or pass debiased=False")
    else:
        _need_rows(n, 2, "CKA", "")
    if kernel not in KERNELS:
        raise ProbeError(f"kernel={kernel!r}: choose one of {', '.join(KERNELS)}")
    if kernel == "linear":
        if sigma is not None:
            raise ProbeError(f"sigma={sigma} is the RBF bandwidth: drop it, or pass kernel='rbf'")
        _not_constant(X, "X")
        _not_constant(Y, "Y")
        return _ratio(*_linear_hsics(X, Y, debiased), debiased)
    sigma = 1.0 if sigma is None else sigma
    if not (np.isfinite(sigma) and sigma > 0):
        raise ProbeError(f"sigma={sigma}: give the RBF bandwidth as a positive multiple of the median distance")
    K, L = _rbf_gram(X, sigma, "X"), _rbf_gram(Y, sigma, "Y")
    hsic = _hsic_unbiased if debiased else _hsic_biased
    return _ratio(hsic(K, L), hsic(K, K), hsic(L, L), debiased)


def minibatch_cka(X, Y, batch_size: int, *, generator: np.random.Generator) -> float:
    """Minibatch linear CKA (Nguyen et al., "Do Wide and Deep Networks Learn the Same Things?", ICLR 2021):
    CKA = mean_b HSIC_u(K_b, L_b) / sqrt(mean_b HSIC_u(K_b, K_b) mean_b HSIC_u(L_b, L_b)), with HSIC_u Song et al.'s
    unbiased estimator (see `cka`) on the Gram matrices of minibatch b. The rows are shuffled by `generator`
    (a seeded numpy Generator, e.g. np.random.default_rng(0)) and cut into N // batch_size batches of batch_size
    rows; the last N % batch_size rows of the shuffle are left out. Each HSIC_u being unbiased, the value estimates
    the full debiased CKA (`cka(X, Y, debiased=True)`) with an error that shrinks as N grows, while memory stays at
    one batch's Gram matrices.
    """
    X, Y = _pair(X, Y)
    n = X.shape[0]
    if not isinstance(generator, np.random.Generator):
        raise ProbeError(f"generator={generator!r}: pass a seeded numpy Generator, e.g. np.random.default_rng(0)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 4 <= batch_size <= n:
        raise ProbeError(f"batch_size={batch_size!r}: give an integer from 4 (the unbiased HSIC needs 4 rows) to "
                         f"N={n}")
    _not_constant(X, "X")
    _not_constant(Y, "Y")
    order = generator.permutation(n)
    sums = np.zeros(3)
    batches = n // batch_size
    for b in range(batches):
        rows = order[b * batch_size:(b + 1) * batch_size]
        sums += _linear_hsics(X[rows], Y[rows], debiased=True)
    return _ratio(*(sums / batches), debiased=True)


def cka_matrix(Xs, Ys=None, *, debiased: bool = False) -> np.ndarray:
    """Linear CKA of every pair of two lists of representations of the same N inputs: M[i, j] = cka(Xs[i], Ys[j],
    debiased=debiased), to float rounding (Ys None: Xs against itself, a symmetric matrix with ones on its diagonal).
    Each representation is centred and its self-HSIC found once, and the cross products X_i^T [Y_1 ... Y_m] of one
    left representation with all right ones are one matrix product: the form for the many pairs of a sweep (probe
    similarity). With centred columns (1^T X = 0) the unbiased HSIC's sums of `cka` reduce to the squared row norms
    d: 1^T K~ 1 = -sum(d), K~ 1 = -d. Memory: the centred representations in float64 (N x sum of D, each side)."""
    left = _linear_parts(Xs, "Xs", debiased)
    right = left if Ys is None else _linear_parts(Ys, "Ys", debiased)
    if left[0].shape[0] != right[0].shape[0]:
        raise ProbeError(f"Xs have {left[0].shape[0]} rows and Ys {right[0].shape[0]}: pass the same N inputs, in "
                         "the same order")
    (X, d, x_self, x_starts), (Y, e, y_self, y_starts) = left, right
    n = X.shape[0]
    matrix = np.empty((len(x_self), len(y_self)))
    for i in range(len(x_self)):
        first = i if Ys is None else 0  # Xs against itself: the upper triangle, mirrored
        products = X[:, x_starts[i]:x_starts[i + 1]].T @ Y[:, y_starts[first]:]
        cross = np.add.reduceat((products ** 2).sum(axis=0), np.asarray(y_starts[first:-1]) - y_starts[first])
        for j, value in enumerate(cross, start=first):
            if debiased:
                de = d[i] @ e[j]
                value = ((value - de) + d[i].sum() * e[j].sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * de) / (n * (n - 3))
            else:
                value = value / (n - 1) ** 2
            matrix[i, j] = 1.0 if Ys is None and j == i else _ratio(value, x_self[i], y_self[j], debiased)
            if Ys is None:
                matrix[j, i] = matrix[i, j]
    return matrix


def _linear_parts(Zs, name: str, debiased: bool) -> tuple[np.ndarray, list, list, list]:
    """For cka_matrix, after `cka`'s checks of each representation: (the centred representations side by side, N x
    sum of D in float64; their squared row norms; their self-HSICs; where each one's columns start, and the end)."""
    Zs = list(Zs)
    if not Zs:
        raise ProbeError(f"{name} is empty: pass at least one (N, D) representation")
    shapes = [_matrix(Z, f"{name}[{i}]").shape for i, Z in enumerate(Zs)]  # checked, then converted one by one
    rows = {shape[0] for shape in shapes}
    if len(rows) > 1:
        raise ProbeError(f"{name} holds representations of {sorted(rows)} rows: pass the same N inputs, in the same "
                         "order")
    starts = np.cumsum([0] + [shape[1] for shape in shapes]).tolist()
    joined = np.empty((shapes[0][0], starts[-1]))
    norms, selves = [], []
    for i, Z in enumerate(Zs):
        Z = _matrix(Z, f"{name}[{i}]")
        if Z.shape[1] == 0:
            raise ProbeError(f"{name}[{i}] is {Z.shape}: it needs at least one feature column")
        if debiased:
            _need_rows(Z.shape[0], 4, "debiased CKA (Song et al.'s unbiased HSIC)", "or pass debiased=False")
        else:
            _need_rows(Z.shape[0], 2, "CKA", "")
        _not_constant(Z, f"{name}[{i}]")
        part = joined[:, starts[i]:starts[i + 1]]
        np.subtract(Z, Z.mean(axis=0), out=part)
        norms.append((part ** 2).sum(axis=1))
        n, own, d = part.shape[0], _frobenius2(part.T @ part), norms[-1]
        selves.append(((own - d @ d) + d.sum() ** 2 / ((n - 1) * (n - 2)) - 2 / (n - 2) * d @ d) / (n * (n - 3))
                      if debiased else own / (n - 1) ** 2)
    return joined, norms, selves, starts


def mutual_knn(X, Y, k: int) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al., "The Platonic Representation Hypothesis", ICML 2024):
    mean_i |N_X(i) ∩ N_Y(i)| / k, with N_X(i) the k rows of X nearest to row i (itself excluded) by inner product of
    L2-normalised rows, i.e. by cosine similarity. 1 when the neighbourhoods agree, about k/(N-1) for unrelated
    representations. Ties are broken arbitrarily. Equal to
    `neighbour_overlap(nearest_neighbours(X, k), nearest_neighbours(Y, k))`, the form for many pairs of one set of
    representations (each one's neighbours found once).
    """
    X, Y = _pair(X, Y)
    _check_k(k, X.shape[0])
    X, Y = _unit_rows(X, "X"), _unit_rows(Y, "Y")
    _not_constant(X, "X (rows L2-normalised)")
    _not_constant(Y, "Y (rows L2-normalised)")
    return neighbour_overlap(_top_k(X @ X.T, k, owned=True), _top_k(Y @ Y.T, k, owned=True))


def nearest_neighbours(X, k: int) -> np.ndarray:
    """(N, k) int: the k rows of X nearest to each row (itself excluded) by cosine similarity, as `mutual_knn` finds
    them (in no particular order)."""
    X = _matrix(X, "X")
    if X.shape[1] == 0:
        raise ProbeError(f"X is {X.shape}: it needs at least one feature column")
    _check_k(k, X.shape[0])
    X = _unit_rows(X, "X")
    _not_constant(X, "X (rows L2-normalised)")
    return _top_k(X @ X.T, k, owned=True)


def neighbour_overlap(A: np.ndarray, B: np.ndarray) -> float:
    """mean_i |A(i) ∩ B(i)| / k for two (N, k) neighbour lists (`nearest_neighbours` of two representations of the
    same N inputs): their mutual k-NN alignment."""
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or A.shape != B.shape:
        raise ProbeError(f"neighbour lists of shapes {A.shape} and {B.shape}: pass two (N, k) lists of one N and k")
    shared = (A[:, :, None] == B[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / A.shape[1])


def cknna(X, Y, k: int, *, debiased: bool = True) -> float:
    """Centred kernel nearest-neighbour alignment (Huh et al., "The Platonic Representation Hypothesis", ICML 2024):
    CKA with each kernel kept only on mutual nearest-neighbour pairs.

    Rows are L2-normalised, K = X X^T, L = Y Y^T (cosine similarities). With N_X(i) the k rows nearest to row i by
    K (by L for N_Y), a_X(i, j) = 1[j in N_X(i)], a(i, j) = a_X(i, j) a_Y(i, j) and (*) the elementwise product,
    CKNNA = HSIC(a (*) K, a (*) L) / sqrt(HSIC(a_X (*) K, a_X (*) K) HSIC(a_Y (*) L, a_Y (*) L)).
    The masked kernels are not symmetric; HSIC takes them as written in `cka` (tr(K~ L~), tr(K H L H)), so a pair
    counts in tr when i and j are neighbours of each other. debiased=True (the paper's choice) uses Song et al.'s
    unbiased HSIC and excludes row i from N(i); debiased=False uses the biased HSIC and picks the k neighbours among
    all N rows, row i included, as the authors' code does. With debiased=True and k = N - 1 it is the debiased
    linear CKA of the normalised rows; smaller k keeps only local structure.
    """
    X, Y = _pair(X, Y)
    n = X.shape[0]
    if debiased:
        _need_rows(n, 4, "debiased CKNNA (Song et al.'s unbiased HSIC)", "or pass debiased=False")
        _check_k(k, n)
    else:
        _need_rows(n, 2, "CKNNA", "")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ProbeError(f"k={k!r}: give an integer number of neighbours from 1 to N={n} (with debiased=False a "
                             "row counts among its own neighbours)")
    X, Y = _unit_rows(X, "X"), _unit_rows(Y, "Y")
    _not_constant(X, "X (rows L2-normalised)")
    _not_constant(Y, "Y (rows L2-normalised)")
    K, L = X @ X.T, Y @ Y.T
    a_x, a_y = _neighbours(K, k, include_self=not debiased), _neighbours(L, k, include_self=not debiased)
    hsic = _hsic_unbiased if debiased else _hsic_biased
    both = a_x & a_y
    kl, kk, ll = hsic(both * K, both * L), hsic(a_x * K, a_x * K), hsic(a_y * L, a_y * L)
    for name, value in (("X", kk), ("Y", ll)):
        if not value > 0:
            raise ProbeError(f"the neighbour-restricted self-HSIC of {name} is {value:.3g} (not positive): increase "
                             f"k={k} or the number of rows")
    return float(kl / np.sqrt(kk * ll))


def svcca(X, Y, dims: int) -> float:
    """SVCCA (Raghu et al., "SVCCA: Singular Vector Canonical Correlation Analysis for Deep Learning Dynamics and
    Interpretability", NeurIPS 2017): centre the columns of each matrix, keep its top `dims` left singular vectors
    (U_X, U_Y: N x dims, the subspace of its top `dims` singular directions), then CCA between the two; the
    canonical correlations rho_1..rho_dims are the singular values of U_X^T U_Y. Returns mean_i rho_i, in [0, 1]:
    1 when both keep the same subspace, e.g. Y = X A with A invertible and dims the rank of centred X.
    """
    X, Y = _pair(X, Y)
    n = X.shape[0]
    limit = min(n, X.shape[1], Y.shape[1])
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= limit:
        raise ProbeError(f"dims={dims!r}: give an integer from 1 to min(N, D1, D2)={limit}")
    bases = []
    for name, Z in (("X", X), ("Y", Y)):
        U, s, _ = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
        rank = int((s > s[0] * max(Z.shape) * np.finfo(float).eps).sum()) if s[0] > 0 else 0
        if rank < dims:
            raise ProbeError(f"dims={dims} but centred {name} has rank {rank}: use dims <= {rank}")
        bases.append(U[:, :dims])
    rho = np.linalg.svd(bases[0].T @ bases[1], compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def _matrix(x, name: str) -> np.ndarray:
    """x as a float64 (N, D) array; a torch tensor is detached and copied to the CPU (torch imported only then)."""
    if type(x).__module__.partition(".")[0] == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ProbeError(f"{name} has shape {array.shape}: pass an (N, D) matrix, one row per input "
                         "(e.g. features.reshape(N, -1))")
    if not np.isfinite(array).all():
        raise ProbeError(f"{name} holds NaN or infinite values: drop or fix those rows")
    return array


def _pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ProbeError(f"X has {X.shape[0]} rows and Y {Y.shape[0]}: pass the same N inputs, in the same order")
    if X.shape[1] == 0 or Y.shape[1] == 0:
        raise ProbeError(f"X is {X.shape} and Y {Y.shape}: each needs at least one feature column")
    return X, Y


def _need_rows(n: int, least: int, what: str, fix: str) -> None:
    if n < least:
        raise ProbeError(f"N={n} rows: {what} needs at least {least}; pass more rows {fix}".rstrip())


def _check_k(k, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ProbeError(f"k={k!r}: give an integer number of neighbours from 1 to N-1={n - 1} (a row is not its "
                         "own neighbour)")


def _not_constant(Z: np.ndarray, name: str) -> None:
    """Raise when every row of Z is the same (to float precision): its centred kernel, so its self-HSIC, is 0."""
    spread = ((Z - Z.mean(axis=0)) ** 2).sum(axis=1).mean()
    size = (Z ** 2).sum(axis=1).mean()
    if not spread > 1e-12 * size:
        raise ProbeError(f"{name} is constant: all its {Z.shape[0]} rows are equal, so its self-HSIC is 0 and "
                         "similarity is undefined; pass a representation that varies across inputs")


def _unit_rows(Z: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ProbeError(f"row {zero[0]} of {name} is all zeros ({zero.size} such rows): it has no direction, so no "
                         "neighbours; drop it")
    return Z / norms


def _top_k(S: np.ndarray, k: int, *, owned: bool = False) -> np.ndarray:
    """(N, k): the columns of the k largest S[i, :] other than i itself, per row i (a copy: a view would keep the
    N x N partition alive). `owned`: S is the caller's temporary, overwritten here instead of copied."""
    if not owned:
        S = S.copy()
    np.fill_diagonal(S, -np.inf)
    n = S.shape[1]
    return np.argpartition(S, n - k, axis=1)[:, n - k:].copy()


def _neighbours(S: np.ndarray, k: int, include_self: bool) -> np.ndarray:
    """(N, N) boolean: [i, j] when j is among the k largest S[i, :] (the diagonal excluded unless include_self)."""
    top = np.argpartition(-S, k - 1, axis=1)[:, :k] if include_self else _top_k(S, k)
    mask = np.zeros(S.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def _rbf_gram(Z: np.ndarray, sigma: float, name: str) -> np.ndarray:
    squares = (Z ** 2).sum(axis=1)
    distances = np.maximum(squares[:, None] + squares[None, :] - 2 * Z @ Z.T, 0.0)
    median = np.median(distances)
    if not median > 0:
        raise ProbeError(f"the median squared distance between rows of {name} is 0 (at least half its rows are "
                         "equal), so the RBF bandwidth is 0: pass kernel='linear' or a representation that varies")
    return np.exp(-distances / (2 * sigma ** 2 * median))


def _centre(A: np.ndarray) -> np.ndarray:
    """H A H."""
    return A - A.mean(axis=0, keepdims=True) - A.mean(axis=1, keepdims=True) + A.mean()


def _hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """tr(K H L H) / (N-1)^2."""
    n = K.shape[0]
    return float((_centre(K) * _centre(L).T).sum() / (n - 1) ** 2)


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC (formula in `cka`); K, L need not be symmetric."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    trace = (K * L.T).sum()
    return float((trace + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * K.sum(axis=0) @ L.sum(axis=1))
                 / (n * (n - 3)))


def _linear_hsics(X: np.ndarray, Y: np.ndarray, debiased: bool) -> np.ndarray:
    """(HSIC(K, L), HSIC(K, K), HSIC(L, L)) for K = X X^T, L = Y Y^T, through the N x N Gram matrices or, when
    cheaper, through D x D products of the features. Columns are centred first: HSIC does not change (the biased
    estimator centres K anyway; the unbiased one is invariant to shifting the features) and rounding shrinks."""
    n, d1, d2 = X.shape[0], X.shape[1], Y.shape[1]
    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    if n * (d1 * d2 + d1 * d1 + d2 * d2) >= n * n * (d1 + d2):
        K, L = X @ X.T, Y @ Y.T
        hsic = _hsic_unbiased if debiased else _hsic_biased
        return np.array([hsic(K, L), hsic(K, K), hsic(L, L)])
    if not debiased:  # tr(K H L H) = ||Y^T X||_F^2 for centred X, Y
        return np.array([_frobenius2(Y.T @ X), _frobenius2(X.T @ X), _frobenius2(Y.T @ Y)]) / (n - 1) ** 2
    # The unbiased HSIC's three sums in D x D and N-vector products, with K~ = K - diag(d_K), d_K = row norms^2:
    # tr(K~ L~) = ||Y^T X||^2 - d_K.d_L, 1^T K~ 1 = ||X^T 1||^2 - sum(d_K), K~ 1 = X (X^T 1) - d_K.
    parts = []
    for Z in (X, Y):
        d = (Z ** 2).sum(axis=1)
        s = Z.sum(axis=0)
        parts.append((d, s @ s - d.sum(), Z @ s - d))

    def hsic(A: np.ndarray, B: np.ndarray, a: tuple, b: tuple) -> float:
        trace = _frobenius2(B.T @ A) - a[0] @ b[0]
        return (trace + a[1] * b[1] / ((n - 1) * (n - 2)) - 2 / (n - 2) * a[2] @ b[2]) / (n * (n - 3))

    px, py = parts
    return np.array([hsic(X, Y, px, py), hsic(X, X, px, px), hsic(Y, Y, py, py)])


def _frobenius2(M: np.ndarray) -> float:
    return float((M * M).sum())


def _ratio(kl: float, kk: float, ll: float, debiased: bool) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), raising when a self-HSIC is not positive."""
    for name, value in (("X", kk), ("Y", ll)):
        if not value > 0:
            fix = "pass more rows or debiased=False" if debiased else "pass a representation that varies"
            raise ProbeError(f"the self-HSIC of {name} is {value:.3g} (not positive), so CKA is undefined: {fix}")
    return float(kl / np.sqrt(kk * ll))
