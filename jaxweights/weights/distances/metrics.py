"""The built-in metrics on one group of N (and M) networks: sample metrics, histograms, KDEs.

Each function takes the group's weights ``x`` (N, D) and ``y`` (M, D') or None (x against itself), the
block size ``b`` and an optional ``mesh`` (rows split over its devices) and returns ``(dist, err)``
or ``dist``. Shared ranges (histogram edges, KDE grid, KS sketch edges) come from the *core* networks
(``histograms.core_networks``); a pair with an exploded (finite, non-core) network is compared on the
pair's own range, so no network changes another pair's value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxweights.weights.binning import core_range, histogram, range_edges
from jaxweights.weights.distances.engine import blocked, l1_sum, pad_rows, pairs
from jaxweights.weights.distances.kernels import (
    energy_sorted,
    kde_logdensity,
    quantile_grid,
    symmetric_kl_log,
)
from jaxweights.weights.distances.ks import _KS_SMALL, ks_exact, ks_grid, ks_pair, ks_sketch_block, own_counts
from jaxweights.weights.distances.sketches import cell_means, cells, w1_bound_pair
from jaxweights.weights.units import sort_rows

_sort = sort_rows


def w1(x, y, b, sketch, with_error, ok=None, mesh=None):
    """W1 (earth mover's) distance of every pair (Vallender 1974; Villani 2003), exact or sketched.

    Exact W1 equals ``scipy.stats.wasserstein_distance``. With ``sketch`` (Q cells, used when both
    samples hold more than Q weights) it is the L1 distance of the Q cell means over Q, a lower bound.

    Args:
      x: (N, D) weights.
      y: (M, D') weights, or None for x against itself.
      b: block size (networks per block side).
      sketch: number of quantile cells Q of the sketch, or None / 0 for exact W1.
      with_error: with a sketch, also compute each pair's error bound.
      ok: unused (the metrics' common signature).
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices.

    Returns:
      ``(dist, err)``: (N, M) float64 distances, and (N, M) upper bounds of ``W1 - dist`` when
      sketched with ``with_error``, else None.
    """
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    n, m = sx.shape[1], (sx if sy is None else sy).shape[1]
    if sketch and min(n, m) > sketch:
        mx, my = cell_means(sx, sketch), None if sy is None else cell_means(sy, sketch)
        d = l1_sum(mx, my, b, mesh) / sketch
        if not with_error:
            return d, None
        ends = lambda s: (s[:, cells(s.shape[1], sketch)[4]], s[:, cells(s.shape[1], sketch)[5]])
        return d, pairs(w1_bound_pair, ends(sx), None if sy is None else ends(sy), b, mesh=mesh)
    if sy is None or n == m:
        return l1_sum(sx, sy, b, mesh) / n, None
    iu, iv, w = quantile_grid(n, m)
    w = jnp.asarray(w, sx.dtype)
    return l1_sum(sx[:, iu] * w, sy[:, iv] * w, b, mesh), None


def ks(x, y, b, sketch, with_error, ok=None, mesh=None):
    """Two-sample KS statistic of every pair (Kolmogorov 1933; Smirnov 1948), exact or sketched.

    Exact values equal ``scipy.stats.ks_2samp(u, v).statistic``. A sketch (samples of more than
    ``sketch`` weights) is within one population, on one device, the ECDF gap at grid edges set by
    the core networks (a lower bound); across populations, or sharded, the KS of the ``sketch``
    cell-end quantiles.

    Args:
      x: (N, D) weights.
      y: (M, D') weights, or None for x against itself.
      b: block size (networks per block side).
      sketch: number of quantile cells Q of the sketch, or None / 0 for exact values.
      with_error: unused: a sketch always returns its error.
      ok: (N,) bool, the networks with finite weights, whose core sets the sketch's edges (default all).
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices.

    Returns:
      ``(dist, err)``: (N, M) float64 statistics and, when sketched, (N, M) error bounds (within one
      population: by how much the statistic may exceed ``dist``; across populations: 1/Q), else None.
    """
    sx = _sort(x)
    n = sx.shape[1]
    sharded = mesh is not None  # block bound-and-refine is single-device: pairs instead
    if y is None and sketch and n > sketch and not sharded:
        ok = np.ones(sx.shape[0], bool) if ok is None else ok
        core = row_core(sx, None, ok, ok)[2]
        pool = sx[np.flatnonzero(core if core.any() else np.ones_like(core))]
        hi, lo = (pad_rows(c, b) for c in ks_grid(sx, max(1, n // sketch), rounds=0, pool=pool))
        lower, upmax = blocked(lambda i, j: ks_sketch_block(hi, lo, i, j, b), x.shape[0], x.shape[0], b, True)
        return lower / n, (upmax - lower) / n
    if y is None and n > _KS_SMALL and not sharded:
        return ks_exact(sx), None
    sy = sx if y is None else _sort(y)
    err = None
    if (y is not None or sharded) and sketch and min(n, sy.shape[1]) > sketch:
        # cross-population (or sharded) sketch: KS between the q cell-end quantiles, |error| <= 1/q
        sx, sy = sx[:, cells(n, sketch)[5]], sy[:, cells(sy.shape[1], sketch)[5]]
        err = np.full((sx.shape[0], sy.shape[0]), 1.0 / sketch)
    xs, ys = (sx, own_counts(sx)), None if y is None else (sy, own_counts(sy))
    return pairs(ks_pair, xs, ys, b, rows=sx.shape[1] > _KS_SMALL, mesh=mesh), err


def energy(x, y, b, sketch, with_error, ok=None, mesh=None):
    """Energy distance of every pair (Székely & Rizzo 2013), exact (= ``scipy.stats.energy_distance``).

    Args:
      x: (N, D) weights.
      y: (M, D') weights, or None for x against itself.
      b: block size (networks per block side).
      sketch, with_error, ok: unused (the metrics' common signature).
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices.

    Returns:
      ``(dist, None)``: (N, M) float64 distances.
    """
    return pairs(energy_sorted, _sort(x), None if y is None else _sort(y), b, rows=True, mesh=mesh), None


_hist = jax.jit(jax.vmap(histogram, (0, None)))


def row_core(sx, sy, okx, oky):
    """Core networks (``binning.core_range``) over both populations and their shared weight range.

    Args:
      sx: (N, D) weights, rows sorted ascending.
      sy: (M, D') weights, rows sorted ascending, or None (one population).
      okx: (N,) bool, networks of x whose weights are all finite.
      oky: (M,) bool, the same for y (unused when ``sy`` is None).

    Returns:
      ``(lo, hi, core_x, core_y)``: the core networks' weight range ((0, 0) when there is none) and
      (N,) / (M,) bool core masks (``core_y`` is ``core_x`` for one population).
    """
    lo = np.concatenate([np.asarray(sx[:, 0]), [] if sy is None else np.asarray(sy[:, 0])])
    hi = np.concatenate([np.asarray(sx[:, -1]), [] if sy is None else np.asarray(sy[:, -1])])
    ok = np.concatenate([okx, [] if sy is None else oky]).astype(bool)
    lo_c, hi_c, core = core_range(jnp.asarray(lo, sx.dtype), jnp.asarray(hi, sx.dtype), jnp.asarray(ok))
    core = np.asarray(core)
    n = sx.shape[0]
    return lo_c, hi_c, core[:n], (core[:n] if sy is None else core[n:])


@functools.lru_cache(maxsize=64)
def _pair_hist(fn, bins):
    """``fn(p, q)`` on histograms over the pair's own range (for exploded networks)."""

    def pair(a, b):
        edges = range_edges(jnp.minimum(a[0], b[0]), jnp.maximum(a[-1], b[-1]), bins, a.dtype)
        return fn(histogram(a, edges), histogram(b, edges))

    return pair


@functools.lru_cache(maxsize=16)
def _pair_kde(grid):
    """Symmetric KL of KDEs on a grid over the pair's own range (for exploded networks)."""

    def pair(a, b):
        g = jnp.linspace(jnp.minimum(a[0], b[0]), jnp.maximum(a[-1], b[-1]), grid).astype(a.dtype)
        return symmetric_kl_log(kde_logdensity(a, g), kde_logdensity(b, g))

    return pair


@functools.partial(jax.jit, static_argnames=("fn",))
def _one_vs_all(fn, a, ys):
    return lax.map(lambda y: fn(a, y), ys)


@functools.partial(jax.jit, static_argnames=("fn",))
def _all_vs_one(fn, xs, b):
    return lax.map(lambda x: fn(x, b), xs)


def _outlier_pairs(d, fn, sx, sy, core_x, core_y, okx, oky):
    """Overwrites the pairs that involve a finite non-core (exploded) network with ``fn`` on the pair.

    A shared range is set by the core networks only; a pair with an exploded network is
    compared on the pair's own range instead, so its value does not depend on the population.
    """
    d = np.array(d, np.float64)
    ys = sx if sy is None else sy
    for i in np.flatnonzero(okx & ~core_x):
        d[i] = np.asarray(_one_vs_all(fn, sx[i], ys), np.float64)
        if sy is None:
            d[:, i] = d[i]
    if sy is not None:
        for j in np.flatnonzero(oky & ~core_y):
            d[:, j] = np.asarray(_all_vs_one(fn, sx, sy[j]), np.float64)
    return d


def hist_metric(fn, x, y, okx, oky, b, bins, mesh=None):
    """``fn(p, q)`` of every pair's histograms (e.g. Jensen-Shannon, Lin 1991), edges over the core networks' range.

    A pair with a finite non-core (exploded) network is compared on histograms over the pair's own range.

    Args:
      fn: jittable ``fn(p, q) -> scalar`` of two histograms.
      x: (N, D) weights.
      y: (M, D') weights, or None for x against itself.
      okx, oky: (N,) / (M,) bool, networks whose weights are all finite.
      b: block size (networks per block side).
      bins: histogram bins.
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices.

    Returns:
      (N, M) float64 numpy array.
    """
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    lo, hi, core_x, core_y = row_core(sx, sy, okx, oky)
    edges = range_edges(lo, hi, bins, sx.dtype)
    d = pairs(fn, _hist(sx, edges), None if sy is None else _hist(sy, edges), b, mesh=mesh)
    return _outlier_pairs(d, _pair_hist(fn, bins), sx, sy, core_x, core_y, okx, oky)


@functools.partial(jax.jit, static_argnames=("size",))
def _kde_logdens(x, lo, hi, size):
    grid = jnp.linspace(lo, hi, size).astype(x.dtype)
    return lax.map(lambda w: kde_logdensity(w, grid), x)


def kde_kl(x, y, okx, oky, b, grid, mesh=None):
    """Symmetric KL of Gaussian KDEs on a grid over the core range (La Malfa et al. 2021, arXiv 2110.02628).

    KDEs use Scott's bandwidth (``scipy.stats.gaussian_kde``); a pair with a finite non-core
    (exploded) network is compared on a grid over the pair's own range.

    Args:
      x: (N, D) weights.
      y: (M, D') weights, or None for x against itself.
      okx, oky: (N,) / (M,) bool, networks whose weights are all finite.
      b: block size (networks per block side).
      grid: number of grid points.
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices.

    Returns:
      (N, M) float64 numpy array of ``KL(p||q) + KL(q||p)``.
    """
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    lo, hi, core_x, core_y = row_core(sx, sy, okx, oky)
    lx = _kde_logdens(sx, lo, hi, grid)
    ly = None if y is None else _kde_logdens(sy, lo, hi, grid)
    d = pairs(symmetric_kl_log, lx, ly, b, mesh=mesh)
    return _outlier_pairs(d, _pair_kde(grid), sx, sy, core_x, core_y, okx, oky)
