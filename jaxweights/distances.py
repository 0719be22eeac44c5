"""Distances between the weights of N networks: one N x N matrix per group, in blocks.

Metrics of ``pairwise(params, metric)`` (each equal to scipy on the same weights):
  * "wasserstein": W1 (``scipy.stats.wasserstein_distance``). Equal sizes: ``mean|s_i - s_j|`` of
    sorted weights. Unequal: W1 = int_0^1 |Q_u - Q_v| dp; both step quantile functions are constant
    between consecutive points of the merged grid {k/n} U {l/m} (exact integers in units 1/(nm)).
  * "ks": KS statistic (``scipy.stats.ks_2samp(u, v).statistic``).
  * "energy": sqrt(2 int (F_u - F_v)^2) (``scipy.stats.energy_distance``); O(D log D) per pair.
  * "jensenshannon": base 2, on histograms of ``bins`` bins over the core networks' range
    (``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
  * "kde_kl": ``KL(p||q) + KL(q||p)`` (nats) of Gaussian KDEs on ``grid`` (1000) points spanning the
    core networks' range, Scott's bandwidth ``std(ddof=1) * D**(-1/5)`` as
    ``scipy.stats.gaussian_kde``, values normalised to sum 1 as ``scipy.stats.entropy``. Kept in log
    space: finite where scipy's densities underflow to 0 and it returns inf.
  * "euclidean" / "cosine": between statistic vectors (``statistics``) z-scored with the core
    networks' mean and sd (ddof 0; constant columns -> 0; columns undefined in a core network
    dropped with a warning), ``scipy.spatial.distance.cdist`` in float64.
    ``per="network"`` gives ``"__all__"``, the concatenation of every leaf's vector.

Memory: only blocks of B = ``block_size`` networks on or above the diagonal are computed (then
mirrored). Per group of D weights the extra memory is one sorted copy (N x D, sorted by numpy
on CPU), a chunked copy for W1 or int32 bin counts for KS (N D / 4 bytes), and the float64 result
(8 N^2 bytes); per block O(B^2) for W1 (D streamed in chunks of 4096), histograms, KDE and
statistic vectors, O(B^2 D / 1024) for KS and O(B D) for energy and custom "sorted" distances.
Nothing is O(N^2 D).

Exact KS (equal sizes): at ~D/8 pooled-quantile edges (split where a network is crowded) the
ECDF counts give a lower bound, and each bin an upper bound; only bins whose bound beats the best
exact value so far are merged exactly. Pairs left unresolved (long runs of ties) use searchsorted.

Sketches (``sketch=Q``; "wasserstein", "ks"), returned with per-pair error bounds (``with_error``):
  * W1: means of the sorted weights over Q equal-probability cells; a lower bound with
    0 <= W1 - sketch <= (1/Q) sum over cells where the quantile ranges overlap of (osc_i + osc_j)
    <= (range_i + range_j) / Q.
  * KS: ECDF difference at Q pooled-quantile edges; a lower bound, exceeded by at most the largest
    bin bound minus it (~2/Q for similar networks). Across populations: KS of the Q cell-end
    quantiles, |error| <= 1/Q.

Bad networks: a network with a NaN or infinite weight anywhere gets NaN rows and columns. Shared
quantities (histogram edges, KDE grid, KS sketch edges, z-scoring) come from the *core* networks
(``stats.core_networks``: finite, ``max|w|`` within ``stats.OUTLIER_FACTOR`` of the median), so no
other network changes a core network's distances; a pair with an exploded (finite, non-core)
network uses the pair's own range for histograms and KDEs.

References: Villani (2003), Topics in Optimal Transportation, W1 via quantile functions; Szekely
& Rizzo (2013), Energy statistics; Lin (1991), Jensen-Shannon divergence; La Malfa et al. (2021),
arXiv 2110.02628 (symmetric KL of KDEs).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial.distance
from jax import lax

from jaxweights import rundir, stats

log = logging.getLogger(__name__)
ALL = stats.ALL
_CHUNK = 4096  # W1: columns streamed per step
# exact KS: bin width (weights per network), in-bin capacity, bins per chunk, refinement rounds,
# bins refined per round, block size, size up to which plain searchsorted is used
_KS_R, _KS_M, _KS_CHUNK, _KS_ITERS, _KS_T, _KS_BLOCK, _KS_SMALL = 8, 32, 128, 64, 4, 8, 256

# ----------------------------------------------------------------------- one pair


def _ss(a, v, side):
    return jnp.searchsorted(a, v, side=side, method="scan")


@functools.lru_cache(maxsize=64)
def _quantile_grid(n: int, m: int):
    """Merged quantile grid of sizes n, m: indices into each sorted sample and cell widths."""
    pts = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    start = np.concatenate([[0], pts[:-1]])
    return start // m, start // n, (pts - start) / (n * m)


def wasserstein_1d(u, v):
    """W1 between two samples of any sizes (= ``scipy.stats.wasserstein_distance``)."""
    a, b = jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v))
    iu, iv, w = _quantile_grid(a.shape[0], b.shape[0])
    return jnp.sum(jnp.asarray(w, a.dtype) * jnp.abs(a[iu] - b[iv]))


def ks_sorted(a, b, ra=None, rb=None):
    """KS statistic of two sorted samples (``ra``/``rb``: optional own right-counts)."""
    n, m = a.shape[0], b.shape[0]
    ra = _ss(a, a, "right") if ra is None else ra
    rb = _ss(b, b, "right") if rb is None else rb
    cba, cab = _ss(b, a, "right"), _ss(a, b, "right")
    if n == m:
        return jnp.maximum(jnp.abs(ra - cba).max(), jnp.abs(cab - rb).max()).astype(a.dtype) / n
    f = lambda c, size: c.astype(a.dtype) / size  # int32 / int would round in float32
    return jnp.maximum(jnp.abs(f(ra, n) - f(cba, m)).max(), jnp.abs(f(cab, n) - f(rb, m)).max())


def ks_1d(u, v):
    """Two-sample KS statistic (= ``scipy.stats.ks_2samp(u, v).statistic``)."""
    return ks_sorted(jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v)))


def energy_sorted(a, b):
    """Energy distance of two sorted samples: sqrt(2 * int (F_a - F_b)^2 dx), one pass per sample.

    Each distinct value of the merged sample is represented once (by its last ``a`` copy if
    any, else its last ``b`` copy) and weighted by the gap to the next distinct value.
    """
    n, m = a.shape[0], b.shape[0]
    cb, ca = _ss(b, a, "right"), _ss(a, b, "left")  # #b <= a_k, #a < b_l

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
    """Energy distance (= ``scipy.stats.energy_distance(u, v)``)."""
    return energy_sorted(jnp.sort(jnp.ravel(u)), jnp.sort(jnp.ravel(v)))


def jensenshannon(p, q):
    """Jensen-Shannon distance, base 2, of two histograms (= scipy's ``jensenshannon(p, q, 2)``)."""
    p, q = p / jnp.sum(p, -1, keepdims=True), q / jnp.sum(q, -1, keepdims=True)
    m = (p + q) / 2
    rel = lambda x: jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1) / jnp.where(x > 0, m, 1)), 0)
    return jnp.sqrt(jnp.maximum(jnp.sum(rel(p) + rel(q), -1) / 2, 0) / jnp.log(2.0))


def kde_logdensity(w_D, grid_G, chunk: int = 2048):
    """Log of the Gaussian KDE (Scott's bandwidth, as scipy's ``gaussian_kde``) of one sample on a grid."""
    n = w_D.shape[0]
    h = stats.std(w_D) * jnp.sqrt(n / (n - 1)) * n ** (-0.2)  # ddof 1, scaled: no overflow at |w| ~ 1e24
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
    """``KL(p||q) + KL(q||p)`` of two grids of log-densities, each normalised to sum 1."""
    lp = lp - jax.nn.logsumexp(lp, -1, keepdims=True)
    lq = lq - jax.nn.logsumexp(lq, -1, keepdims=True)
    return jnp.sum((jnp.exp(lp) - jnp.exp(lq)) * (lp - lq), -1)


# ---------------------------------------------------------------- registry & blocks


class Distance(NamedTuple):
    """A registered distance: ``fn(a_sorted, b_sorted)`` ("sorted") or ``fn(p, q)`` ("histogram")."""

    fn: Callable
    kind: str


_REGISTRY: dict[str, Distance] = {}
BUILTIN = ("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean", "cosine")


def register_distance(name: str, fn: Callable, kind: str = "sorted", overwrite: bool = False) -> None:
    """Registers a distance by name for :func:`pairwise`.

    Args:
      name: metric name (also the ``distances/<name>.npz`` file name).
      fn: pure JAX function of two sorted weight vectors (kind "sorted") or two normalised
        histograms on shared edges (kind "histogram"), returning a scalar. It is vmapped over
        pairs of networks in blocks and jitted.
      kind: "sorted" or "histogram".
      overwrite: allow replacing an existing name.
    """
    if kind not in ("sorted", "histogram"):
        raise ValueError(f"kind must be 'sorted' or 'histogram', got {kind!r}")
    if (name in _REGISTRY or name in BUILTIN) and not overwrite:
        raise ValueError(f"distance {name!r} already registered (pass overwrite=True)")
    _REGISTRY[name] = Distance(fn, kind)


def registered_distances() -> tuple[str, ...]:
    """Names of built-in and registered distances."""
    return BUILTIN + tuple(_REGISTRY)


def _dyn(x, i, b):
    return lax.dynamic_slice_in_dim(x, i, b, axis=0)


def _pad_rows(x, b):
    pad = (-x.shape[0]) % b
    return jnp.concatenate([x, jnp.repeat(x[:1], pad, 0)]) if pad else x


def _blocked(block_fn, n: int, m: int, b: int, symmetric: bool):
    """Fills N x M matrices from ``block_fn(i0, j0) -> (B, B) array or tuple``.

    Only blocks on or above the diagonal are computed when ``symmetric``; the upper triangle
    (i <= j) is mirrored. Blocks are dispatched asynchronously, then copied to host one by one.
    """
    nb, mb = -(-n // b), -(-m // b)
    todo = [(i, j) for i in range(nb) for j in range(i if symmetric else 0, mb)]
    blocks = [block_fn(np.int32(i * b), np.int32(j * b)) for i, j in todo]  # np: no device op
    outs = None
    for (i, j), blk in zip(todo, blocks):
        blk = blk if isinstance(blk, tuple) else (blk,)
        if outs is None:
            outs = [np.zeros((nb * b, mb * b)) for _ in blk]
        for out, x in zip(outs, blk):
            x = np.asarray(x, np.float64)
            if symmetric and i == j:
                x = np.triu(x) + np.triu(x, 1).T
            out[i * b : (i + 1) * b, j * b : (j + 1) * b] = x
            if symmetric:
                out[j * b : (j + 1) * b, i * b : (i + 1) * b] = x.T
    return tuple(o[:n, :m] for o in outs)


@functools.partial(jax.jit, static_argnames=("b",))
def _l1_block(xs, ys, i0, j0, b):
    """Sum over columns of |x_i - y_j| for a block; xs is (D/C, N, C): chunks stay in cache."""

    def step(acc, ab):
        x, y = ab
        return acc + jnp.abs(x[:, None, :] - y[None, :, :]).sum(-1), None

    xa, xb = lax.dynamic_slice_in_dim(xs, i0, b, 1), lax.dynamic_slice_in_dim(ys, j0, b, 1)
    return lax.scan(step, jnp.zeros((b, b), xs.dtype), (xa, xb))[0]


def _chunked(x_ND, b):
    """(N, D) -> (D/C, N', C), rows padded to a multiple of b, columns zero padded (|0 - 0| = 0)."""
    c = min(_CHUNK, x_ND.shape[1])
    x = jnp.pad(_pad_rows(x_ND, b), ((0, 0), (0, (-x_ND.shape[1]) % c)))
    return x.reshape(x.shape[0], -1, c).transpose(1, 0, 2)


def _l1_sum(x_ND, y_MD, b):
    """Blocked ``sum_d |x_i,d - y_j,d|`` (y None: x against itself, upper blocks only)."""
    if _MESH.get() is not None:
        return _pairs(_l1_pair, x_ND, y_MD, b, rows=True)
    xs = _chunked(x_ND, b)
    ys = xs if y_MD is None else _chunked(y_MD, b)
    m = x_ND.shape[0] if y_MD is None else y_MD.shape[0]
    return _blocked(lambda i, j: _l1_block(xs, ys, i, j, b), x_ND.shape[0], m, b, y_MD is None)[0]


def _l1_pair(x, y):
    return jnp.sum(jnp.abs(x - y))


def _pairs_sharded(fn, xs, ys, mesh, rows):
    """``_pairs`` with the rows of xs split over ``mesh``'s devices and all of ys on every device.

    Rows are padded to a multiple of the device count with copies of the last row
    (``stats.shard_networks``) and sliced off; the whole matrix is computed (no mirroring), so a
    device needs O(rows x D) temporaries (``rows=True``: O(M x D) per row).
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    n = jax.tree.leaves(xs)[0].shape[0]
    host = lambda t: jax.tree.map(np.asarray, t)
    xs_h = host(xs)
    ys_h = xs_h if ys is None else host(ys)
    rep = NamedSharding(mesh, P())
    yall = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, rep, lambda idx: a[idx]), ys_h)
    inner = jax.vmap(fn, (None, 0))
    body = (lambda xa, yb: lax.map(lambda r: inner(r, yb), xa)) if rows else jax.vmap(inner, (0, None))
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(axis), check_vma=False))
    d = f(stats.shard_networks(xs_h, mesh), yall)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        d = multihost_utils.process_allgather(d, tiled=True)
    return np.asarray(d, np.float64)[:n]


@functools.partial(jax.jit, static_argnames=("fn", "b", "rows"))
def _pairs_block(xs, ys, i0, j0, fn, b, rows):
    """Block of ``fn(x, y)`` over pairs; ``rows``: map rows (O(B D) memory) instead of vmapping both."""
    xa = jax.tree.map(lambda x: _dyn(x, i0, b), xs)
    xb = jax.tree.map(lambda x: _dyn(x, j0, b), ys)
    inner = jax.vmap(fn, (None, 0))
    return lax.map(lambda x: inner(x, xb), xa) if rows else jax.vmap(inner, (0, None))(xa, xb)


_MESH = contextvars.ContextVar("jaxweights_distances_mesh", default=None)


def _pairs(fn, xs, ys, b, rows=False):
    """N x M matrix of ``fn`` over all pairs of rows of the pytrees xs (and ys).

    Inside ``pairwise(..., mesh=...)`` the rows are split over the mesh (:func:`_pairs_sharded`).
    """
    if _MESH.get() is not None:
        return _pairs_sharded(fn, xs, ys, _MESH.get(), rows)
    pad = lambda t: jax.tree.map(lambda x: _pad_rows(x, b), t)
    n = jax.tree.leaves(xs)[0].shape[0]
    m = n if ys is None else jax.tree.leaves(ys)[0].shape[0]
    px = pad(xs)
    py = px if ys is None else pad(ys)
    return _blocked(lambda i, j: _pairs_block(px, py, i, j, fn, b, rows), n, m, b, ys is None)[0]


# --------------------------------------------------------------------- exact KS fast path


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
    c = jax.vmap(lambda s: _ss(s, edges, "right"))(s_ND).astype(jnp.int32)
    c = jnp.concatenate([jnp.zeros((n_net, 1), jnp.int32), c, jnp.full((n_net, 1), n, jnp.int32)], 1)
    return c[:, 1:].reshape(n_net, -1, _KS_CHUNK), c[:, :-1].reshape(n_net, -1, _KS_CHUNK)


def _ks_grid(s_ND, r, rounds: int = 4, pool=None):
    """Grid counts with bins of ~r weights per network, split where a network has more than _KS_M.

    Bins are split at the crowded network's own order statistics (every _KS_M/2-th), so after a
    few rounds only runs of tied values can exceed _KS_M (those pairs fall back to searchsorted).
    ``pool``: the sorted rows whose pooled quantiles give the first edges (default all rows; the
    sketch passes the core networks so that other networks cannot move the edges).
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
def _ks_sketch_block(hi, lo, i0, j0, b):
    lower, cmax = _grid_bounds(_dyn(hi, i0, b), _dyn(lo, i0, b), _dyn(hi, j0, b), _dyn(lo, j0, b))
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
    ha, la, hb, lb = _dyn(hi, i0, b), _dyn(lo, i0, b), _dyn(hi, j0, b), _dyn(lo, j0, b)
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


def _ks_pair(x, y):
    return ks_sorted(x[0], y[0], x[1], y[1])


_ks_pairs = jax.jit(jax.vmap(ks_sorted))


@jax.jit
def _own_counts(s_ND):
    return jax.vmap(lambda s: _ss(s, s, "right"))(s_ND)


def _ks_exact(s_ND):
    """Exact N x N KS of equal-size sorted samples: block bounds and refinement, then fallback.

    Uses its own block size: 8 for big layers (the bound pass is cache-bound), else 32 (amortises
    the per-round cost of the refinement loop).
    """
    n_net, n = s_ND.shape
    b = min(n_net, _KS_BLOCK if n > 32768 else 4 * _KS_BLOCK)
    hi, lo = (_pad_rows(x, b) for x in _ks_grid(s_ND, _KS_R))
    sp = _pad_rows(s_ND, b)
    best, unresolved = _blocked(lambda i, j: _ks_exact_block(sp, hi, lo, i, j, b), n_net, n_net, b, True)
    out = best / n
    todo = np.argwhere(np.triu(unresolved > 0))
    for k in range(0, len(todo), 8):  # rare: long runs of ties overflow a bin; plain searchsorted
        log.debug("ks: %d pairs fall back to searchsorted", len(todo[k : k + 8]))
        idx = np.resize(todo[k : k + 8], (1 << int(np.ceil(np.log2(len(todo[k : k + 8])))), 2))
        for (i, j), v in zip(todo[k : k + 8], np.asarray(_ks_pairs(s_ND[idx[:, 0]], s_ND[idx[:, 1]]))):
            out[i, j] = out[j, i] = v
    return out


# ------------------------------------------------------------------------------ sketches


@functools.lru_cache(maxsize=64)
def _cells(n: int, q: int):
    """Overlap of element l ([l/n, (l+1)/n]) with the q probability cells, for n >= q.

    Returns (cell0, cell1, weight0, weight1, lo_index, hi_index): element l adds
    ``s_l * weight`` to the mean of its one or two cells; cell k spans sorted indices
    ``lo_index[k] .. hi_index[k]``.
    """
    start = np.arange(n, dtype=np.int64) * q  # in units of 1 / (n q)
    c0 = start // n
    w0 = np.minimum(start + q, (c0 + 1) * n) - start
    k = np.arange(q, dtype=np.int64)
    return c0, np.minimum(c0 + 1, q - 1), w0 / n, (q - w0) / n, (k * n) // q, -((-(k + 1) * n) // q) - 1


@functools.partial(jax.jit, static_argnames=("q",))
def cell_means(s_ND, q: int):
    """Quantile sketch: mean of each network's sorted weights over q equal probability cells."""
    c0, c1, w0, w1, _, _ = _cells(s_ND.shape[1], q)
    w0, w1 = jnp.asarray(w0, s_ND.dtype), jnp.asarray(w1, s_ND.dtype)
    seg = lambda s: jax.ops.segment_sum(s * w0, c0, q) + jax.ops.segment_sum(s * w1, c1, q)
    return jax.vmap(seg)(s_ND)


def _w1_bound_pair(x, y):
    (la, ha), (lb, hb) = x, y
    cross = (la < hb) & (lb < ha)  # quantile functions may cross inside the cell
    return jnp.sum(jnp.where(cross, (ha - la) + (hb - lb), 0)) / la.shape[0]


# ------------------------------------------------------------------------------- metrics

_sort = stats.sort_rows


def _w1(x, y, b, sketch, with_error, ok=None):
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    n, m = sx.shape[1], (sx if sy is None else sy).shape[1]
    if sketch and min(n, m) > sketch:
        mx, my = cell_means(sx, sketch), None if sy is None else cell_means(sy, sketch)
        d = _l1_sum(mx, my, b) / sketch
        if not with_error:
            return d, None
        ends = lambda s: (s[:, _cells(s.shape[1], sketch)[4]], s[:, _cells(s.shape[1], sketch)[5]])
        return d, _pairs(_w1_bound_pair, ends(sx), None if sy is None else ends(sy), b)
    if sy is None or n == m:
        return _l1_sum(sx, sy, b) / n, None
    iu, iv, w = _quantile_grid(n, m)
    w = jnp.asarray(w, sx.dtype)
    return _l1_sum(sx[:, iu] * w, sy[:, iv] * w, b), None


def _ks(x, y, b, sketch, with_error, ok=None):
    sx = _sort(x)
    n = sx.shape[1]
    sharded = _MESH.get() is not None  # block bound-and-refine is single-device: pairs instead
    if y is None and sketch and n > sketch and not sharded:
        ok = np.ones(sx.shape[0], bool) if ok is None else ok
        core = _row_core(sx, None, ok, ok)[2]
        pool = sx[np.flatnonzero(core if core.any() else np.ones_like(core))]
        hi, lo = (_pad_rows(c, b) for c in _ks_grid(sx, max(1, n // sketch), rounds=0, pool=pool))
        lower, upmax = _blocked(lambda i, j: _ks_sketch_block(hi, lo, i, j, b), x.shape[0], x.shape[0], b, True)
        return lower / n, (upmax - lower) / n
    if y is None and n > _KS_SMALL and not sharded:
        return _ks_exact(sx), None
    sy = sx if y is None else _sort(y)
    err = None
    if (y is not None or sharded) and sketch and min(n, sy.shape[1]) > sketch:
        # cross-population (or sharded) sketch: KS between the q cell-end quantiles, |error| <= 1/q
        sx, sy = sx[:, _cells(n, sketch)[5]], sy[:, _cells(sy.shape[1], sketch)[5]]
        err = np.full((sx.shape[0], sy.shape[0]), 1.0 / sketch)
    xs, ys = (sx, _own_counts(sx)), None if y is None else (sy, _own_counts(sy))
    return _pairs(_ks_pair, xs, ys, b, rows=sx.shape[1] > _KS_SMALL), err


def _energy(x, y, b, sketch, with_error, ok=None):
    return _pairs(energy_sorted, _sort(x), None if y is None else _sort(y), b, rows=True), None


_hist = jax.jit(jax.vmap(stats.histogram, (0, None)))


def _row_core(sx, sy, okx, oky):
    """Core networks (``stats.core_range``) over both populations: ``(lo, hi, core_x, core_y)``."""
    lo = np.concatenate([np.asarray(sx[:, 0]), [] if sy is None else np.asarray(sy[:, 0])])
    hi = np.concatenate([np.asarray(sx[:, -1]), [] if sy is None else np.asarray(sy[:, -1])])
    ok = np.concatenate([okx, [] if sy is None else oky]).astype(bool)
    lo_c, hi_c, core = stats.core_range(jnp.asarray(lo, sx.dtype), jnp.asarray(hi, sx.dtype), jnp.asarray(ok))
    core = np.asarray(core)
    n = sx.shape[0]
    return lo_c, hi_c, core[:n], (core[:n] if sy is None else core[n:])


@functools.lru_cache(maxsize=64)
def _pair_hist(fn, bins):
    """``fn(p, q)`` on histograms over the pair's own range (for exploded networks)."""

    def pair(a, b):
        edges = stats.range_edges(jnp.minimum(a[0], b[0]), jnp.maximum(a[-1], b[-1]), bins, a.dtype)
        return fn(stats.histogram(a, edges), stats.histogram(b, edges))

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


def _hist_metric(fn, x, y, okx, oky, b, bins):
    """``fn(p, q)`` on histograms with edges over the core networks' range; exploded pairs per pair."""
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    lo, hi, core_x, core_y = _row_core(sx, sy, okx, oky)
    edges = stats.range_edges(lo, hi, bins, sx.dtype)
    d = _pairs(fn, _hist(sx, edges), None if sy is None else _hist(sy, edges), b)
    return _outlier_pairs(d, _pair_hist(fn, bins), sx, sy, core_x, core_y, okx, oky)


@functools.partial(jax.jit, static_argnames=("size",))
def _kde_logdens(x, lo, hi, size):
    grid = jnp.linspace(lo, hi, size).astype(x.dtype)
    return lax.map(lambda w: kde_logdensity(w, grid), x)


def _kde_kl(x, y, okx, oky, b, grid):
    sx = _sort(x)
    sy = None if y is None else _sort(y)
    lo, hi, core_x, core_y = _row_core(sx, sy, okx, oky)
    lx = _kde_logdens(sx, lo, hi, grid)
    ly = None if y is None else _kde_logdens(sy, lo, hi, grid)
    d = _pairs(symmetric_kl_log, lx, ly, b)
    return _outlier_pairs(d, _pair_kde(grid), sx, sy, core_x, core_y, okx, oky)


def _group_core(params, per, net_ok):
    """``{group: (ok_N, core_N)}``: finite networks (``net_ok``) and core networks (``stats.core_networks``)."""
    out = {}
    for k, w_ND in stats.groups(params, per).items():
        w = np.asarray(w_ND)
        ok = np.isfinite(w).all(1) & net_ok
        lo, hi = np.where(ok, w.min(1), 0), np.where(ok, w.max(1), 0)
        out[k] = ok, np.asarray(stats.core_networks(jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(ok)))
    return out


def _stat_pairwise(params, other, metric, per, layers, statistics, b):
    per = stats._normalise_per(per)
    want = tuple(p for p in per if p != "network")
    base = tuple(set(want) | ({"leaf"} if "network" in per else set()))
    va = stats.statistic_vectors(params, statistics=statistics, per=base)
    vb = va if other is None else stats.statistic_vectors(other, statistics=statistics, per=base)
    ca = _group_core(params, base, finite_networks(params))
    cb = ca if other is None else _group_core(other, base, finite_networks(other))
    z, dropped = {}, []
    for key, (names, xa) in va.items():
        if key not in vb:
            continue
        n = len(xa)
        both = xa if other is None else np.concatenate([xa, vb[key][1]])
        core = ca[key][1] if other is None else np.concatenate([ca[key][1], cb[key][1]])
        # columns, mean and sd from the core networks only (finite, not exploded), so that
        # non-finite or exploded networks never move the healthy networks' standardised vectors
        keep = np.isfinite(both[core]).all(0)
        dropped += [(key, name) for name, good in zip(names, keep) if not good]
        both, ref = both[:, keep], both[core][:, keep]
        mu, sd = (ref.mean(0), ref.std(0)) if len(ref) else (np.zeros(both.shape[1]), np.zeros(both.shape[1]))
        both = np.where(sd > 0, (both - mu) / np.where(sd > 0, sd, 1), 0.0)
        ok = ca[key][0] if other is None else np.concatenate([ca[key][0], cb[key][0]])
        both[~(np.isfinite(both).all(1) & ok)] = np.nan  # non-finite network or undefined kept column
        z[key] = (both[:n], both[n:])
    if dropped:
        log.warning(
            "%s distance: %d statistic column(s) undefined in a core network and dropped, e.g. %r of layer %r",
            metric,
            len(dropped),
            dropped[0][1],
            dropped[0][0],
        )
    keys = [k for k in stats.group_names(params, want) if k in z] if want else []
    if "network" in per:  # whole-network vector: every leaf's standardised statistics
        leaves = [k for k in stats.group_names(params, "leaf") if k in z]
        z[ALL] = tuple(np.concatenate([z[k][i] for k in leaves], 1) for i in (0, 1))
        keys.append(ALL)
    if layers is not None:
        keys = [k for k in keys if k in layers]
    out = {}
    for k in keys:  # float64 on the host: z-scores of exploded networks (~1e60) overflow float32
        xa, xb = z[k]
        xb = xa if other is None else xb
        oka, okb = np.isfinite(xa).all(1), np.isfinite(xb).all(1)
        d = np.full((len(xa), len(xb)), np.nan)
        if oka.any() and okb.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                d[np.ix_(oka, okb)] = scipy.spatial.distance.cdist(xa[oka], xb[okb], metric)
        if other is None:
            np.fill_diagonal(d, np.where(oka, 0.0, np.nan) if metric == "euclidean" else np.diag(d))
        out[k] = d
    return out


_SAMPLE = {"wasserstein": _w1, "ks": _ks, "energy": _energy}


def finite_networks(params) -> np.ndarray:
    """(N,) True for networks whose every weight is finite (the others get NaN in every group)."""
    return np.logical_and.reduce(
        [np.isfinite(np.asarray(w).reshape(w.shape[0], -1)).all(1) for w in stats.flatten(params).values()]
    )


def _clean(x, net_ok):
    """Rows of networks with non-finite weights are replaced by a finite row (result set to NaN later)."""
    ok = np.asarray(jnp.all(jnp.isfinite(x), axis=1)) & net_ok
    if not ok.all():
        x = jnp.where(jnp.asarray(ok)[:, None], x, x[int(np.argmax(ok))] if ok.any() else 0)
    return x, ok


def pairwise(
    params,
    metric: str | Callable,
    *,
    other=None,
    per="leaf",
    layers=None,
    block_size: int = 16,
    sketch: int | None = None,
    with_error: bool = False,
    bins: int = 32,
    grid: int = 1000,
    statistics=stats.SUMMARY,
    kind: str = "sorted",
    mesh=None,
):
    """N x N distances between the networks' weights, one matrix per group.

    Args:
      params: parameters, networks axis first (nested or '/'-flat dict).
      metric: a built-in or registered name (see module docstring), or a callable
        ``fn(a_sorted, b_sorted)`` / ``fn(p, q)`` (with ``kind``); assumed symmetric
        (only i <= j is computed within a population).
      other: optional second population (any architecture): returns N x M matrices
        between same-named groups (or ``layers={name: other_name}``); sizes may differ.
      per: "leaf", "layer", "network" or a tuple (keys: leaf path, layer path, ``"__all__"``).
      layers: restrict to these group names (a dict maps params' names to other's names).
      block_size: networks per block; the working set grows with its square.
      sketch: number of quantile cells for the approximate "wasserstein" / "ks" modes.
      with_error: also return per-pair error bounds (zero for exact results).
      bins: histogram bins for "jensenshannon" and histogram-kind distances.
      grid: KDE grid size for "kde_kl".
      statistics: statistics for "euclidean" / "cosine".
      kind: "sorted" or "histogram", for a callable ``metric``.
      mesh: optional 1-D ``"networks"`` mesh (``train.networks_mesh()``): the rows of each N x M
        matrix are split over its devices and every device holds all columns (``_pairs_sharded``).
        Every metric, ``other``, ``sketch`` and ``with_error`` work; the numbers equal the
        one-device ones except within-population ``ks`` with ``sketch``, which then uses the
        cell-end quantiles of the cross-population sketch (error at most 1/sketch).

    Returns:
      ``{group: dist_NxN}`` float64 numpy arrays (``(dist, err)`` dicts if ``with_error``).
      A network with a NaN or infinite weight anywhere gets NaN rows and columns in every group
      (one warning per call names them) and never changes other networks' values: shared
      ranges and standardisations come from the core networks only (``stats.core_networks``).
    """
    if callable(metric):
        name, spec = getattr(metric, "__name__", "custom"), Distance(metric, kind)
    else:
        name, spec = metric, _REGISTRY.get(metric)
        if spec is None and name not in BUILTIN:
            raise KeyError(f"unknown distance {name!r}; known: {registered_distances()}")
    if mesh is not None:
        token = _MESH.set(mesh)
        try:
            return pairwise(
                params,
                metric,
                other=other,
                per=per,
                layers=layers,
                block_size=block_size,
                sketch=sketch,
                with_error=with_error,
                bins=bins,
                grid=grid,
                statistics=statistics,
                kind=kind,
            )
        finally:
            _MESH.reset(token)
    stats.warn_non_finite(f"{name} distances", stats.non_finite_networks(params, "network"))
    if other is not None:
        stats.warn_non_finite(f"{name} distances (other population)", stats.non_finite_networks(other, "network"))
    net_a = finite_networks(params)
    net_b = net_a if other is None else finite_networks(other)
    if name in ("euclidean", "cosine") and spec is None:
        out = _stat_pairwise(params, other, name, per, layers, statistics, block_size)
        return (out, {k: np.zeros_like(v) for k, v in out.items()}) if with_error else out
    ga = stats.groups(params, per)
    gb = ga if other is None else stats.groups(other, per)
    pairs = (
        layers.items()
        if isinstance(layers, Mapping)
        else [(k, k) for k in ga if (layers is None or k in layers) and k in gb]
    )
    dists, errs = {}, {}
    for ka, kb in pairs:
        x, okx = _clean(ga[ka], net_a)
        y, oky = (None, okx) if other is None else _clean(gb[kb], net_b)
        b = max(1, min(block_size, max(x.shape[0], 0 if y is None else y.shape[0])))
        err = None
        if spec is not None and spec.kind == "sorted":
            d = _pairs(spec.fn, _sort(x), None if y is None else _sort(y), b, rows=True)
        elif spec is not None:
            d = _hist_metric(spec.fn, x, y, okx, oky, b, bins)
        elif name in _SAMPLE:
            d, err = _SAMPLE[name](x, y, b, sketch, with_error, okx)
        elif name == "jensenshannon":
            d = _hist_metric(jensenshannon, x, y, okx, oky, b, bins)
        else:
            d = _kde_kl(x, y, okx, oky, b, grid)
        d = np.where(okx[:, None] & oky[None, :], d, np.nan)
        dists[ka], errs[ka] = d, np.zeros_like(d) if err is None else np.asarray(err, np.float64)
    return (dists, errs) if with_error else dists


def compute(
    params, metrics=("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean", "cosine"), **kwargs
) -> dict[str, dict[str, np.ndarray]]:
    """Runs :func:`pairwise` for several metrics: ``{metric: {group: dist_NxN}}``."""
    return {m if isinstance(m, str) else m.__name__: pairwise(params, m, **kwargs) for m in metrics}


def write(directory: str, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Writes ``directory/distances/<metric>.npz`` (keys: group paths) atomically.

    Args:
      directory: output directory (created if needed).
      results: ``{metric: {group: dist_NxN}}`` as returned by :func:`compute`.

    Returns:
      The written paths.
    """
    paths = []
    for metric, mats in results.items():
        path = os.path.join(directory, "distances", f"{metric}.npz")
        arrays = {k: np.asarray(v) for k, v in mats.items()}
        rundir.atomic_write(path, lambda f: np.savez(f, **arrays))
        paths.append(path)
    return paths
