"""Shared histograms: bin edges over the range of the *core* networks, and normalised bin masses.

The core networks are the finite ones with ``max|w|`` within ``OUTLIER_FACTOR`` of the median, so a
network with non-finite or exploded weights never moves a shared range (histogram edges, KDE grids).
Bins follow ``numpy.histogram``. Histograms of weights as a network descriptor: Unterthiner et al. (2020),
arXiv 2002.11448.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.weights.units import finite_rows, groups, sort_rows

OUTLIER_FACTOR = 1e3


def core_networks(lo_N, hi_N, ok_N):
    """Networks that set shared ranges: finite, with ``max|w| <= OUTLIER_FACTOR * median max|w|``.

    The median is over the finite networks (``ok_N``). Networks with non-finite weights never
    count, and exploded but finite ones (|w| ~ 1e24 among |w| ~ 1) are left out as well, so a
    shared range (histogram edges, KDE grid) is the same with or without them. When the median
    is 0 every finite network counts. Jittable.

    Args:
      lo_N: per-network minimum weight.
      hi_N: per-network maximum weight.
      ok_N: True for networks whose weights are all finite.

    Returns:
      (N,) bool, True for the core networks.
    """
    amax = jnp.maximum(jnp.abs(lo_N), jnp.abs(hi_N))
    med = jnp.nanmedian(jnp.where(ok_N, amax, jnp.nan))
    return ok_N & ((amax <= OUTLIER_FACTOR * med) | ~(med > 0))


def core_range(lo_N, hi_N, ok_N):
    """The weight range of the :func:`core_networks`.

    Args:
      lo_N: per-network minimum weight.
      hi_N: per-network maximum weight.
      ok_N: True for networks whose weights are all finite.

    Returns:
      ``(lo, hi, core_N)``; ``(0, 0)`` when there is no core network.
    """
    core = core_networks(lo_N, hi_N, ok_N)
    lo = jnp.min(jnp.where(core, lo_N, jnp.inf))
    hi = jnp.max(jnp.where(core, hi_N, -jnp.inf))
    return jnp.where(core.any(), lo, 0.0), jnp.where(core.any(), hi, 0.0), core


def range_edges(lo, hi, bins: int, dtype=jnp.float32):
    """Equal-width edges over ``[lo, hi]`` (numpy's rule: a flat range becomes ``lo - 0.5, hi + 0.5``).

    Args:
      lo: lower end.
      hi: upper end.
      bins: number of bins.
      dtype: dtype of the edges.

    Returns:
      (bins + 1,) edges, the last exactly ``hi``.
    """
    flat = lo == hi
    lo, hi = jnp.where(flat, lo - 0.5, lo).astype(dtype), jnp.where(flat, hi + 0.5, hi).astype(dtype)
    edges = lo + (hi - lo) * jnp.arange(bins + 1, dtype=dtype) / bins
    return edges.at[-1].set(hi)


def shared_edges(s_ND: jax.Array, bins: int) -> jax.Array:
    """Equal-width bin edges over the range of the core networks of sorted rows (:func:`core_range`).

    Rows with non-finite weights and exploded rows (:data:`OUTLIER_FACTOR`) do not move the
    edges, so healthy networks' histograms do not depend on them.

    Args:
      s_ND: (N, D) rows sorted ascending.
      bins: number of bins.

    Returns:
      (bins + 1,) edges.
    """
    ok = jnp.isfinite(s_ND[:, 0]) & jnp.isfinite(s_ND[:, -1])  # sorted: -inf first, inf/NaN last
    lo, hi, _ = core_range(s_ND[:, 0], s_ND[:, -1], ok)
    return range_edges(lo, hi, bins, s_ND.dtype)


def histogram(s_D: jax.Array, edges_B1: jax.Array) -> jax.Array:
    """Normalised histogram (bin masses summing to 1) of one network's sorted weights.

    Bins are half-open ``[e_k, e_k+1)`` except the last, closed, as ``numpy.histogram``.

    Args:
      s_D: one network's weights sorted ascending.
      edges_B1: (B + 1,) bin edges.

    Returns:
      (B,) bin masses (weights outside the edges are not counted).
    """
    cum = jnp.searchsorted(s_D, edges_B1, side="left", method="scan")
    cum = cum.at[-1].set(jnp.searchsorted(s_D, edges_B1[-1], side="right").astype(cum.dtype))
    counts = jnp.diff(cum).astype(s_D.dtype)
    return counts / jnp.maximum(jnp.sum(counts), 1)


@functools.partial(jax.jit, static_argnames=("bins",))
def _histograms(g: dict, bins: int):
    def one(w_ND):
        edges = shared_edges(w_ND, bins)
        return edges, jax.vmap(histogram, (0, None))(w_ND, edges)

    return jax.tree.map(one, g)


def histograms(params: Mapping[str, Any], bins: int = 32, *, per="leaf") -> dict:
    """Normalised histograms of every network on edges shared by all networks of a group.

    Args:
      params: parameters, networks axis first.
      bins: number of equal-width bins spanning the group's range over its core networks
        (finite, not exploded: :func:`core_networks`). An exploded network's histogram counts
        only its weights inside that range (all zeros if none); non-finite networks get NaN.
      per: "leaf", "layer", "network" or a tuple.

    Returns:
      ``{group: (edges_B1, hist_NxB)}``; each row of ``hist_NxB`` sums to 1.
    """
    sorted_groups = {k: sort_rows(v) for k, v in groups(params, per).items()}
    out = _histograms(sorted_groups, bins)
    return {
        k: (np.asarray(e), np.where(finite_rows(sorted_groups[k])[:, None], np.asarray(h), np.nan))
        for k, (e, h) in out.items()
    }
