"""Distances between the weights of two networks, written for one pair (vmapped over blocks of pairs).

Each equals scipy on the same weights:
  * W1, the 1-Wasserstein (earth mover's) distance through quantile functions (Villani 2003, Topics in
    Optimal Transportation): ``scipy.stats.wasserstein_distance``.
  * The two-sample Kolmogorov-Smirnov statistic, the largest ECDF gap (Kolmogorov 1933; Smirnov 1948):
    ``scipy.stats.ks_2samp(u, v).statistic``.
  * The energy distance sqrt(2 int (F_u - F_v)^2) (Szekely & Rizzo 2013, Energy statistics):
    ``scipy.stats.energy_distance``.
  * The Jensen-Shannon distance of histograms, base 2 (Lin 1991): ``scipy.spatial.distance.jensenshannon``.
  * The symmetric Kullback-Leibler divergence of Gaussian KDEs (Scott's bandwidth, ``scipy.stats.gaussian_kde``),
    as used by La Malfa et al. (2021), arXiv 2110.02628.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxweights.weights.stats import std


def scan_searchsorted(a, v, side):
    """``jnp.searchsorted`` with the scan method (fast for many queries on CPU and GPU).

    Args:
      a: 1-D array sorted ascending.
      v: query values, any shape.
      side: "left" or "right", as ``jnp.searchsorted``.

    Returns:
      Integer insertion indices into ``a``, shaped like ``v``.
    """
    return jnp.searchsorted(a, v, side=side, method="scan")


@functools.lru_cache(maxsize=64)
def quantile_grid(n: int, m: int):
    """Merged quantile grid of two sample sizes, for W1 through quantile functions (Vallender 1974).

    The step quantile functions of samples of sizes n and m are both constant between consecutive
    points of {k/n} U {l/m}; ``W1 = sum(width · |a[iu] - b[iv]|)`` for sorted samples a, b
    (= ``scipy.stats.wasserstein_distance``).

    Args:
      n: size of the first sample.
      m: size of the second sample.

    Returns:
      (iu, iv, width): for each grid cell, the index into the sorted first sample, the index into the
      sorted second sample (int64 numpy arrays) and its width in probability (float64, summing to 1).
    """
    pts = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    start = np.concatenate([[0], pts[:-1]])
    return start // m, start // n, (pts - start) / (n * m)


def wasserstein_1d(u, v):
    """W1 between two samples of any sizes (= ``scipy.stats.wasserstein_distance``).

    W1 = int_0^1 |Q_u(p) - Q_v(p)| dp (Villani 2003); both step quantile functions are constant between
    consecutive points of the merged grid {k/n} U {l/m}.

    Args:
      u: first sample, any shape (flattened).
      v: second sample, any shape (flattened).

    Returns:
      Scalar W1 distance.
    """
    a, b = jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v))
    iu, iv, w = quantile_grid(a.shape[0], b.shape[0])
    return jnp.sum(jnp.asarray(w, a.dtype) * jnp.abs(a[iu] - b[iv]))


def ks_sorted(a, b, ra=None, rb=None):
    """Two-sample KS statistic ``max |F_a - F_b|`` of two sorted samples (Kolmogorov 1933; Smirnov 1948).

    Args:
      a: first sample, sorted ascending.
      b: second sample, sorted ascending (any size).
      ra: optional ``searchsorted(a, a, "right")`` (precomputed own counts).
      rb: optional ``searchsorted(b, b, "right")``.

    Returns:
      Scalar KS statistic (= ``scipy.stats.ks_2samp(a, b).statistic``).
    """
    n, m = a.shape[0], b.shape[0]
    ra = scan_searchsorted(a, a, "right") if ra is None else ra
    rb = scan_searchsorted(b, b, "right") if rb is None else rb
    cba, cab = scan_searchsorted(b, a, "right"), scan_searchsorted(a, b, "right")
    if n == m:
        return jnp.maximum(jnp.abs(ra - cba).max(), jnp.abs(cab - rb).max()).astype(a.dtype) / n
    f = lambda c, size: c.astype(a.dtype) / size  # int32 / int would round in float32
    return jnp.maximum(jnp.abs(f(ra, n) - f(cba, m)).max(), jnp.abs(f(cab, n) - f(rb, m)).max())


def ks_1d(u, v):
    """Two-sample Kolmogorov-Smirnov statistic (Kolmogorov 1933; Smirnov 1948).

    Args:
      u: first sample, any shape (flattened).
      v: second sample, any shape (flattened).

    Returns:
      Scalar, ``scipy.stats.ks_2samp(u, v).statistic``.
    """
    return ks_sorted(jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v)))


def energy_sorted(a, b):
    """Energy distance of two sorted samples: sqrt(2 * int (F_a - F_b)^2 dx) (Szekely & Rizzo 2013).

    One pass per sample, O(D log D). Each distinct value of the merged sample is represented once (by its last ``a`` copy if
    any, else its last ``b`` copy) and weighted by the gap to the next distinct value.

    Args:
      a: first sample, sorted ascending.
      b: second sample, sorted ascending (any size).

    Returns:
      Scalar, ``scipy.stats.energy_distance(a, b)``.
    """
    n, m = a.shape[0], b.shape[0]
    cb, ca = scan_searchsorted(b, a, "right"), scan_searchsorted(a, b, "left")  # #b <= a_k, #a < b_l

    def part(x, other, c, k_over, c_over, size):
        nxt = jnp.minimum(
            jnp.append(x[1:], jnp.inf),
            jnp.where(c < other.shape[0], other[jnp.minimum(c, other.shape[0] - 1)], jnp.inf),
        )
        gap = jnp.where(jnp.isfinite(nxt), nxt - x, 0)
        f = jnp.arange(1, size + 1, dtype=x.dtype) / k_over - c.astype(x.dtype) / c_over
        return jnp.sum(gap * f * f)

    return jnp.sqrt(2 * (part(a, b, cb, n, m, n) + part(b, a, ca, m, n, m)))


def energy_1d(u, v):
    """Energy distance sqrt(2 int (F_u - F_v)^2) of two samples (Szekely & Rizzo 2013).

    Args:
      u: first sample, any shape (flattened).
      v: second sample, any shape (flattened).

    Returns:
      Scalar, ``scipy.stats.energy_distance(u, v)``.
    """
    return energy_sorted(jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v)))


def jensenshannon(p, q):
    """Jensen-Shannon distance, base 2, of two histograms (Lin 1991).

    Args:
      p: bin masses (normalised here to sum 1), last axis the bins.
      q: bin masses on the same edges.

    Returns:
      sqrt of the JS divergence in bits (= ``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
    """
    p, q = p / jnp.sum(p, -1, keepdims=True), q / jnp.sum(q, -1, keepdims=True)
    m = (p + q) / 2
    rel = lambda x: jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1) / jnp.where(x > 0, m, 1)), 0)
    return jnp.sqrt(jnp.maximum(jnp.sum(rel(p) + rel(q), -1) / 2, 0) / jnp.log(2.0))


def kde_logdensity(w_D, grid_G, chunk: int = 2048):
    """Log of the Gaussian kernel density estimate of one sample on a grid (Scott 1992 bandwidth).

    The bandwidth is Scott's ``std(ddof=1) * D**(-1/5)``, as ``scipy.stats.gaussian_kde``; the sum over
    weights is a streaming logsumexp, so densities far in the tails stay finite in log space.

    Args:
      w_D: one network's weights, (D,).
      grid_G: evaluation points, (G,).
      chunk: weights per streaming step.

    Returns:
      (G,) log-densities.
    """
    n = w_D.shape[0]
    h = std(w_D) * jnp.sqrt(n / (n - 1)) * n ** (-0.2)  # ddof 1, scaled: no overflow at |w| ~ 1e24
    pad = (-n) % chunk
    x = jnp.pad(w_D, (0, pad)).reshape(-1, chunk)
    valid = (jnp.arange(n + pad) < n).reshape(-1, chunk)

    def step(carry, xv):  # streaming logsumexp over chunks of weights
        mx, s = carry
        z = jnp.where(xv[1][None, :], -0.5 * ((grid_G[:, None] - xv[0][None, :]) / h) ** 2, -jnp.inf)
        mx2 = jnp.maximum(mx, z.max(1))
        return (mx2, s * jnp.exp(mx - mx2) + jnp.exp(z - mx2[:, None]).sum(1)), None

    init = (jnp.full(grid_G.shape, -jnp.inf, w_D.dtype), jnp.zeros(grid_G.shape, w_D.dtype))
    (mx, s), _ = lax.scan(step, init, (x, valid))
    return mx + jnp.log(s) - jnp.log(n * h * jnp.sqrt(2 * jnp.pi))


def symmetric_kl_log(lp, lq):
    """Symmetric Kullback-Leibler divergence ``KL(p||q) + KL(q||p)`` of two grids of log-densities.

    Used between weight KDEs by La Malfa et al. (2021), arXiv 2110.02628 (Kullback & Leibler 1951).

    Args:
      lp: (..., G) log-densities of p; normalised here to sum 1 over the grid.
      lq: (..., G) log-densities of q.

    Returns:
      The divergence in nats (= ``scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p)``).
    """
    lp = lp - jax.nn.logsumexp(lp, -1, keepdims=True)
    lq = lq - jax.nn.logsumexp(lq, -1, keepdims=True)
    return jnp.sum((jnp.exp(lp) - jnp.exp(lq)) * (lp - lq), -1)
