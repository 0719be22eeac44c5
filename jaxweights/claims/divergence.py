"""Divergence of accuracy bins: symmetric KL between Gaussian KDEs of a quantity (La Malfa et al. 2021, arXiv 2110.02628).

Samples of different lengths (one per accuracy bin) are padded to one bucketed length with a validity mask, so a
single compiled KDE serves every bin of a call, and every call whose longest sample falls in the same bucket.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.weights import distances

GRID_CHUNK = 64  # grid points per step: bounds memory at GRID_CHUNK × padded length


def bucket(n: int, smallest: int = 256) -> int:
    """The padded length of a sample of `n` values: the next power of two, at least `smallest`.

    Args:
      n: the sample's length (values below 1 count as 1).
      smallest: the shortest padded length.

    Returns:
      ``max(smallest, 2**ceil(log2(n)))``.
    """
    return max(smallest, 1 << (max(int(n), 1) - 1).bit_length())


def pad_samples(samples) -> tuple[np.ndarray, np.ndarray]:
    """Stacks 1-D samples of different lengths into one zero-padded array and its validity mask.

    Args:
      samples: a sequence of B 1-D arrays (at least one).

    Returns:
      (values, mask): (B, L) float32 values (zeros past each sample's end) and (B, L) bool mask
      (True for a sample's own values), L = `bucket` of the longest sample's length.
    """
    length = bucket(max(len(s) for s in samples))
    x = np.zeros((len(samples), length), np.float32)
    m = np.zeros((len(samples), length), bool)
    for i, s in enumerate(samples):
        x[i, : len(s)] = s
        m[i, : len(s)] = True
    return x, m


def _kde_logdensities(x_BxL, valid_BxL, grid_G):
    """Log Gaussian KDE (Scott's bandwidth, as scipy's ``gaussian_kde``) of B masked samples on one grid."""
    g = grid_G.shape[0]
    gpad = (-g) % GRID_CHUNK
    grid_CxK = jnp.pad(grid_G, (0, gpad), mode="edge").reshape(-1, GRID_CHUNK)

    def one(x, v):
        n = v.sum()
        scale = jnp.max(jnp.where(v, jnp.abs(x), 0))
        scale = jnp.where(scale > 0, scale, 1)
        y = x / scale  # rescaled: the variance does not overflow float32 at |w| ~ 1e24
        mean = jnp.sum(jnp.where(v, y, 0)) / n
        h = scale * jnp.sqrt(jnp.sum(jnp.where(v, (y - mean) ** 2, 0)) / (n - 1)) * n ** (-0.2)

        def block(gk):
            z = jnp.where(v[None, :], -0.5 * ((gk[:, None] - x[None, :]) / h) ** 2, -jnp.inf)
            return jax.nn.logsumexp(z, axis=1)

        lse = jax.lax.map(block, grid_CxK).reshape(-1)[:g]
        return lse - jnp.log(n * h * jnp.sqrt(2 * jnp.pi))

    return jax.lax.map(lambda xv: one(*xv), (x_BxL, valid_BxL))


kde_logdensities = jax.jit(_kde_logdensities)
kde_logdensities.__doc__ = """Log Gaussian KDEs of padded samples on one grid: (B, L) values, (B, L) mask, (G,) -> (B, G).

Scott's bandwidth ``std (ddof 1) · n^(-1/5)`` over each row's valid entries, as ``scipy.stats.gaussian_kde``.
"""


def kde_grid_logdens(samples: list[np.ndarray], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian KDEs of several samples on one shared grid (La Malfa et al. 2021, arXiv 2110.02628).

    The grid spans the pooled samples' range with a 5% margin on each side (±1 when all values are
    equal); each KDE uses Scott's bandwidth, as ``scipy.stats.gaussian_kde`` (`kde_logdensities`).

    Args:
      samples: B 1-D samples (each needs at least 2 distinct values for a finite density).
      grid: number of grid points G.

    Returns:
      (grid_G, logdens_BxG): the (G,) float32 grid and the (B, G) log densities (natural log).
    """
    pooled = np.concatenate(samples)
    lo, hi = pooled.min(), pooled.max()
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    g = jnp.linspace(lo - pad, hi + pad, grid).astype(jnp.float32)
    x, m = pad_samples(samples)
    return np.asarray(g), np.asarray(kde_logdensities(jnp.asarray(x), jnp.asarray(m), g))


def bin_divergence(values_N, bins_N, *, grid: int = 1000, max_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """Symmetric KL between the accuracy bins' distributions of a quantity (La Malfa et al. 2021, arXiv 2110.02628).

    Each bin pools the values of its networks (node strengths of a layer: an (N, nodes) array;
    layer fluctuation: an (N,) array), estimates a Gaussian KDE (Scott's bandwidth) on a shared grid
    of `grid` points and compares bins by ``KL(p||q) + KL(q||p)`` of the normalised grid values.

    Args:
      values_N: (N,) or (N, K) values per network.
      bins_N: bin index per network (-1 = left out).
      grid: KDE grid points.
      max_samples: pooled values per bin beyond which a random subsample is used.
      seed: seed of that subsample.

    Returns:
      (B, B) symmetric matrix (NaN where a bin has fewer than 2 distinct values).
    """
    v = np.asarray(values_N, np.float64).reshape(len(bins_N), -1)
    bins_N = np.asarray(bins_N)
    nb = int(bins_N.max()) + 1 if (bins_N >= 0).any() else 0
    rng = np.random.default_rng(seed)
    samples, ok = [], []
    for b in range(nb):
        s = v[bins_N == b].ravel()
        s = s[np.isfinite(s)]
        if len(s) > max_samples:
            s = rng.choice(s, max_samples, replace=False)
        ok.append(len(np.unique(s)) >= 2)
        samples.append(s if ok[-1] else np.zeros(2))
    out = np.full((nb, nb), np.nan)
    if not any(ok):
        return out
    _, logd = kde_grid_logdens(samples, grid)
    sym = np.asarray(distances.symmetric_kl_log(jnp.asarray(logd)[:, None, :], jnp.asarray(logd)[None, :, :]))
    ok = np.asarray(ok)
    out[np.ix_(ok, ok)] = sym[np.ix_(ok, ok)]
    return out
