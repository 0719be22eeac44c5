"""Independent float64 numpy references for the dynamics tests (never the package's own code)."""

import itertools

import numpy as np


def np_linear_cka(x, y):
    """Kornblith et al. 2019, eq. (feature form): ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), centred columns."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_hsic_u_statistic(k, l):
    """Unbiased HSIC as the U-statistic over distinct 4-tuples (Song et al. 2012, Theorem 2)."""
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def np_hsic_unbiased(k, l):
    """Song et al. 2012, eq. 5, in closed form."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt) + one @ kt @ one * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def np_minibatch_cka(x, y, b):
    """Nguyen et al. 2021: HSIC₁ averaged over consecutive minibatches of size b."""
    m = x.shape[0] // b
    h = np.zeros(3)
    for i in range(m):
        xi, yi = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        k, l = xi @ xi.T, yi @ yi.T
        h += [np_hsic_unbiased(k, l), np_hsic_unbiased(k, k), np_hsic_unbiased(l, l)]
    return h[0] / np.sqrt(h[1] * h[2])


def np_minibatch_cka_centred(x, y, b):
    """Nguyen et al. 2021 in float64, each minibatch's features centred first (allowed: see the offset test)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    h = np.zeros(3)
    for i in range(x.shape[0] // b):
        xi, yi = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        xi, yi = xi - xi.mean(0), yi - yi.mean(0)
        k, l = xi @ xi.T, yi @ yi.T
        h += [np_hsic_unbiased(k, l), np_hsic_unbiased(k, k), np_hsic_unbiased(l, l)]
    return h[0] / np.sqrt(h[1] * h[2])


def np_rwc(prev, cur):
    """Numpy loop: (||Δw||₁/||w||₁, mean of |Δw|/|w| over w != 0, zeros left out)."""
    num = den = acc = 0.0
    count = zeros = 0
    for a, b in zip(prev.ravel(), cur.ravel()):
        num += abs(b - a)
        den += abs(a)
        if a == 0:
            zeros += 1
        else:
            acc += abs(b - a) / abs(a)
            count += 1
    return num / den if den else np.nan, acc / count if count else np.nan, zeros


def np_knn_adjacency(x, k=3):
    """Lu et al. 2022's graph in float64 numpy: each sample's k most cosine-similar others, A = (A_dir + A_dirᵀ)/2."""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    a = np.zeros(s.shape)
    a[np.arange(len(s))[:, None], idx] = 1.0
    return (a + a.T) / 2


def np_mlp_forward(flat, net, x):
    """Every layer's representation of MLP network `net` in float64 numpy: {"input", "Dense_0", ...}.

    ReLU after each hidden layer (the quickstart MLP), logits last; `flat` holds `(N, ...)` leaves.
    """
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"input": h}
    layers = sorted({k.split("/")[0] for k in flat}, key=lambda name: int(name.split("_")[1]))
    for i, name in enumerate(layers):
        h = h @ np.asarray(flat[f"{name}/kernel"][net], np.float64) + np.asarray(flat[f"{name}/bias"][net], np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
        out[name] = h
    return out
