"""Quantile sketches of sorted weights: Q equal-probability cells per network, for approximate W1 and KS.

* W1: means of the sorted weights over Q cells; a lower bound with 0 <= W1 - sketch <=
  (1/Q) sum over cells where the quantile ranges overlap of (osc_i + osc_j) <= (range_i + range_j) / Q.
* KS: the ECDF difference at Q pooled-quantile edges (``ks.ks_grid``); a lower bound, exceeded by at most
  the largest bin bound minus it (~2/Q for similar networks). Across populations: KS of the Q cell-end
  quantiles, |error| <= 1/Q.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def cells(n: int, q: int):
    """Overlap of element l ([l/n, (l+1)/n]) with the q probability cells, for n >= q.

    Args:
      n: sample size.
      q: number of cells.

    Returns:
      (cell0, cell1, weight0, weight1, lo_index, hi_index): element l adds ``s_l * weight0[l]`` to
      the mean of cell0[l] and ``s_l * weight1[l]`` to that of cell1[l] ((n,) arrays); cell k spans
      sorted indices ``lo_index[k] .. hi_index[k]`` inclusive ((q,) arrays).
    """
    start = np.arange(n, dtype=np.int64) * q  # in units of 1 / (n q)
    c0 = start // n
    w0 = np.minimum(start + q, (c0 + 1) * n) - start
    k = np.arange(q, dtype=np.int64)
    return c0, np.minimum(c0 + 1, q - 1), w0 / n, (q - w0) / n, (k * n) // q, -((-(k + 1) * n) // q) - 1


@functools.partial(jax.jit, static_argnames=("q",))
def cell_means(s_ND, q: int):
    """Quantile sketch: mean of each network's sorted weights over q equal-probability cells.

    The L1 distance of two sketches over q is a lower bound of W1 (Villani 2003: W1 is the L1 distance
    of the quantile functions, and averaging over cells cannot increase it).

    Args:
      s_ND: (N, D) rows sorted ascending, D >= q.
      q: number of cells.

    Returns:
      (N, q) cell means.
    """
    c0, c1, w0, w1, _, _ = cells(s_ND.shape[1], q)
    w0, w1 = jnp.asarray(w0, s_ND.dtype), jnp.asarray(w1, s_ND.dtype)
    seg = lambda s: jax.ops.segment_sum(s * w0, c0, q) + jax.ops.segment_sum(s * w1, c1, q)
    return jax.vmap(seg)(s_ND)


def w1_bound_pair(x, y):
    """Upper bound of ``W1 - sketch`` of one pair from the cells' (first, last) sorted values.

    The sum over the cells where the two quantile functions may cross of both cells' ranges, over q.

    Args:
      x, y: ``(first, last)`` of each network: (q,) arrays of each cell's first and last sorted value.

    Returns:
      Scalar bound.
    """
    (la, ha), (lb, hb) = x, y
    cross = (la < hb) & (lb < ha)  # quantile functions may cross inside the cell
    return jnp.sum(jnp.where(cross, (ha - la) + (hb - lb), 0)) / la.shape[0]
