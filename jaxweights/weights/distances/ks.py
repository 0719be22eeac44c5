"""The exact two-sample Kolmogorov-Smirnov statistic of N equal-size samples, all pairs, in blocks.

At ~D/8 pooled-quantile edges (split where a network is crowded) the ECDF counts give a lower bound,
and each bin an upper bound; only bins whose bound beats the best exact value so far are merged
exactly. Pairs left unresolved (long runs of ties) use searchsorted. The same grid counts give the KS
sketch (:func:`ks_sketch_block`): a lower bound and the largest bin bound.

References: Kolmogorov (1933), Smirnov (1948); ``scipy.stats.ks_2samp``.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxweights.weights.distances.engine import blocked, dyn_rows, pad_rows
from jaxweights.weights.distances.kernels import ks_sorted, scan_searchsorted

log = logging.getLogger(__name__)

# exact KS: bin width (weights per network), in-bin capacity, bins per chunk, refinement rounds,
# bins refined per round, block size, size up to which plain searchsorted is used
_KS_R, _KS_M, _KS_CHUNK, _KS_ITERS, _KS_T, _KS_BLOCK, _KS_SMALL = 8, 32, 128, 64, 4, 8, 256


@functools.partial(jax.jit, static_argnames=("r",))
def _pooled_edges(s_ND, r):
    """~D/r pooled quantiles: network i contributes ranks i (mod N), every r-th pooled point is kept."""
    n_net, n = s_ND.shape
    pos = jnp.minimum(jnp.arange(n_net)[:, None] + n_net * jnp.arange(-(-n // n_net))[None, :], n - 1)
    return jnp.sort(jnp.take_along_axis(s_ND, pos, 1).ravel())[r // 2 :: r]


@jax.jit
def _grid_counts(s_ND, edges):
    """Per-bin (hi, lo) counts, (N, C, R): bin g = (e_{g-1}, e_g] holds sorted indices lo..hi-1."""
    n_net, n = s_ND.shape
    c = jax.vmap(lambda s: scan_searchsorted(s, edges, "right"))(s_ND).astype(jnp.int32)
    c = jnp.concatenate([jnp.zeros((n_net, 1), jnp.int32), c, jnp.full((n_net, 1), n, jnp.int32)], 1)
    return c[:, 1:].reshape(n_net, -1, _KS_CHUNK), c[:, :-1].reshape(n_net, -1, _KS_CHUNK)


def ks_grid(s_ND, r, rounds: int = 4, pool=None):
    """Grid counts with bins of ~r weights per network, split where a network has more than _KS_M.

    Bins are split at the crowded network's own order statistics (every _KS_M/2-th), so after a
    few rounds only runs of tied values can exceed _KS_M (those pairs fall back to searchsorted).
    ``pool``: the sorted rows whose pooled quantiles give the first edges (default all rows; the
    sketch passes the core networks so that other networks cannot move the edges).

    Args:
      s_ND: (N, D) rows sorted ascending.
      r: target weights per bin per network.
      rounds: splitting rounds.
      pool: rows whose pooled quantiles give the first edges.

    Returns:
      ``(hi, lo)`` int32 counts, (N, chunks, bins per chunk).
    """
    edges = np.asarray(_pooled_edges(s_ND if pool is None else pool, r))
    for k in range(rounds + 1):
        unit = 1024 if edges.size > 4096 else _KS_CHUNK  # few distinct shapes to compile
        pad = -(-(edges.size + 1) // unit) * unit - edges.size - 1
        hi, lo = _grid_counts(s_ND, jnp.asarray(np.concatenate([edges, np.full(pad, np.inf, edges.dtype)])))
        occ = np.asarray(hi - lo).reshape(s_ND.shape[0], -1)
        bad = np.flatnonzero(occ.max(0) > _KS_M)
        if k == rounds or not bad.size:
            return hi, lo
        who = occ[:, bad].argmax(0)
        start = np.asarray(lo).reshape(s_ND.shape[0], -1)[who, bad]
        step = _KS_M // 2
        parts = [np.arange(a + step, a + o, step) for a, o in zip(start, occ[who, bad])]
        rows = np.repeat(who, [len(p) for p in parts])
        new = np.asarray(s_ND)[rows, np.concatenate(parts) - 1]
        grown = np.unique(np.concatenate([edges, new]))
        if grown.size == edges.size:
            return hi, lo
        edges = grown


def _upper(ha, la, hb, lb):
    """Upper bound of |#(a <= x) - #(b <= x)| for x inside a bin."""
    return jnp.maximum(ha - lb, hb - la)


def _grid_bounds(ha, la, hb, lb):
    """(B, B) exact max |h| at the edges (a lower bound) and (B, B, C) chunk maxima of bin bounds."""
    lower = jnp.abs(ha[:, None] - hb[None]).max((-2, -1))
    return lower, _upper(ha[:, None], la[:, None], hb[None], lb[None]).max(-1)


@functools.partial(jax.jit, static_argnames=("b",))
def ks_sketch_block(hi, lo, i0, j0, b):
    """KS sketch of a block from grid counts (:func:`ks_grid`), scaled by the sample size n.

    Args:
      hi, lo: (N', chunks, bins per chunk) int32 grid counts of :func:`ks_grid`, rows padded to a
        multiple of b.
      i0, j0: first row and first column of the block.
      b: block size, static.

    Returns:
      (lower, upper): (b, b) ``n ×`` the largest ECDF gap at the grid edges (a lower bound of the KS
      statistic) and ``n ×`` the largest bin bound (an upper bound).
    """
    lower, cmax = _grid_bounds(dyn_rows(hi, i0, b), dyn_rows(lo, i0, b), dyn_rows(hi, j0, b), dyn_rows(lo, j0, b))
    return lower, cmax.max(-1)


def _inbin(s_ND, ia, ib, a0, a1, b0, b1):
    """Exact max |#(a <= x) - #(b <= x)| over the sample points x of one bin; flags bins over _KS_M.

    ``a = s_ND[ia]``, ``b = s_ND[ib]``; the bin holds ``a[a0:a1]`` and ``b[b0:b1]``. F_a - F_b peaks
    at points of a, F_b - F_a at points of b; at the k-th point of a in the bin
    ``#(a <= x) >= a0 + k + 1`` with equality at the last of tied values, enough for a max.
    """
    n, k = s_ND.shape[1], jnp.arange(_KS_M)
    xa, va = s_ND[ia, jnp.minimum(a0 + k, n - 1)], k < a1 - a0
    xb, vb = s_ND[ib, jnp.minimum(b0 + k, n - 1)], k < b1 - b0
    nb_le_a = jnp.sum((xb[None, :] <= xa[:, None]) & vb[None, :], 1)
    na_le_b = jnp.sum((xa[None, :] <= xb[:, None]) & va[None, :], 1)
    up = jnp.max(jnp.where(va, (a0 - b0) + k + 1 - nb_le_a, 0))
    down = jnp.max(jnp.where(vb, (b0 - a0) + k + 1 - na_le_b, 0))
    return jnp.maximum(up, down).astype(jnp.int32), (a1 - a0 > _KS_M) | (b1 - b0 > _KS_M)


@functools.partial(jax.jit, static_argnames=("b",))
def _ks_exact_block(s_ND, hi, lo, i0, j0, b):
    """n * KS for a block by bound-and-refine; returns (value, status 0 exact / 1 unresolved).

    Each round takes, for every pair, the chunk with the largest bin bound and merges its _KS_T
    largest bins exactly. Within a chunk bins go in decreasing (bound, -index) order, so the last
    refined (bound, index) per chunk is all the state needed to skip refined bins.
    """
    ha, la, hb, lb = dyn_rows(hi, i0, b), dyn_rows(lo, i0, b), dyn_rows(hi, j0, b), dyn_rows(lo, j0, b)
    rr = hi.shape[-1]
    lower, cmax = _grid_bounds(ha, la, hb, lb)
    ii, jj = jnp.meshgrid(jnp.arange(b), jnp.arange(b), indexing="ij")
    cmax = jnp.where(((i0 == j0) & (ii == jj))[..., None], -1, cmax)  # KS(i, i) = 0
    inbin = jnp.vectorize(functools.partial(_inbin, s_ND), signature="(),(),(),(),(),()->(),()")
    flat = lambda x, idx, g: x.reshape(b, -1)[idx, g]

    def cond(st):
        best, _, _, cm, ovf, it = st
        return (it < _KS_ITERS) & jnp.any((cm.max(-1) > best) & ~ovf)

    def body(st):
        best, tval, tidx, cm, ovf, it = st
        c = jnp.argmax(cm, -1).astype(jnp.int32)
        tv, ti, ar = tval[ii, jj, c], tidx[ii, jj, c], jnp.arange(rr)
        u = _upper(ha[ii, c], la[ii, c], hb[jj, c], lb[jj, c])
        row = jnp.where((u > tv[..., None]) | ((u == tv[..., None]) & (ar <= ti[..., None])), -1, u)
        for _ in range(_KS_T):
            r, ur = jnp.argmax(row, -1).astype(jnp.int32), row.max(-1)
            g = c * rr + r
            active = (ur > best) & ~ovf
            e, o = inbin(i0 + ii, j0 + jj, flat(la, ii, g), flat(ha, ii, g), flat(lb, jj, g), flat(hb, jj, g))
            best, ovf = jnp.where(active, jnp.maximum(best, e), best), ovf | (active & o)
            tv, ti = jnp.where(ur >= 0, ur, tv), jnp.where(ur >= 0, r, ti)
            row = jnp.where(ar == r[..., None], -1, row)
        return (
            best,
            tval.at[ii, jj, c].set(tv),
            tidx.at[ii, jj, c].set(ti),
            cm.at[ii, jj, c].set(row.max(-1)),
            ovf,
            it + 1,
        )

    init = (
        lower,
        jnp.full(cmax.shape, jnp.iinfo(jnp.int32).max, jnp.int32),
        jnp.full(cmax.shape, -1, jnp.int32),
        cmax,
        jnp.zeros((b, b), bool),
        0,
    )
    best, _, _, cmax, ovf, _ = lax.while_loop(cond, body, init)
    return best, ovf | (cmax.max(-1) > best)


def ks_pair(x, y):
    """Two-sample KS statistic of one pair (Kolmogorov 1933; Smirnov 1948), each given with its own counts.

    Args:
      x, y: ``(sorted sample, own right-counts)`` of each network (:func:`own_counts`).

    Returns:
      Scalar KS statistic (= ``scipy.stats.ks_2samp(u, v).statistic``).
    """
    return ks_sorted(x[0], y[0], x[1], y[1])


_ks_pairs = jax.jit(jax.vmap(ks_sorted))


@jax.jit
def own_counts(s_ND):
    """``searchsorted(s, s, "right")`` of every sorted row: each point's count of points <= it.

    Args:
      s_ND: (N, D) rows sorted ascending.

    Returns:
      (N, D) integer counts.
    """
    return jax.vmap(lambda s: scan_searchsorted(s, s, "right"))(s_ND)


def ks_exact(s_ND, block: int | None = None):
    """Exact N x N two-sample KS statistics of equal-size sorted samples: block bounds, refinement, fallback.

    Equals ``scipy.stats.ks_2samp(u, v).statistic`` for every pair (Kolmogorov 1933; Smirnov 1948).

    Args:
      s_ND: (N, D) rows sorted ascending, all finite.
      block: networks per block side. Default: its own block size, 8 for big layers (the bound pass
        is cache-bound), else 32 (amortises the per-round cost of the refinement loop).

    Returns:
      (N, N) float64 numpy array.
    """
    n_net, n = s_ND.shape
    b = min(n_net, block or (_KS_BLOCK if n > 32768 else 4 * _KS_BLOCK))
    hi, lo = (pad_rows(x, b) for x in ks_grid(s_ND, _KS_R))
    sp = pad_rows(s_ND, b)
    best, unresolved = blocked(lambda i, j: _ks_exact_block(sp, hi, lo, i, j, b), n_net, n_net, b, True)
    out = best / n
    todo = np.argwhere(np.triu(unresolved > 0))
    for k in range(0, len(todo), 8):  # rare: long runs of ties overflow a bin; plain searchsorted
        log.debug("ks: %d pairs fall back to searchsorted", len(todo[k : k + 8]))
        idx = np.resize(todo[k : k + 8], (1 << int(np.ceil(np.log2(len(todo[k : k + 8])))), 2))
        for (i, j), v in zip(todo[k : k + 8], np.asarray(_ks_pairs(s_ND[idx[:, 0]], s_ND[idx[:, 1]]))):
            out[i, j] = out[j, i] = v
    return out
