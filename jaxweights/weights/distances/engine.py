"""The blocked and sharded engines that fill N x M distance matrices, one block of networks at a time.

Within one population only blocks on or above the diagonal are computed and mirrored (metrics are
symmetric); a block of B networks needs O(B^2) (or, mapping rows, O(B D)) working memory, never
O(N^2 D). With a mesh (a 1-D ``"networks"`` mesh, ``train.networks_mesh()``) passed explicitly, the rows
are split over its devices instead and every device holds all columns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxweights.train.sharding import shard_networks

_CHUNK = 4096  # W1: columns streamed per step


def dyn_rows(x, i, b):
    """Rows ``i .. i + b`` of x (a traced start index).

    Args:
      x: array, rows (networks) first.
      i: start row, a scalar that may be traced (clamped by ``lax.dynamic_slice`` so the rows fit).
      b: number of rows, static.

    Returns:
      (b, ...) array.
    """
    return lax.dynamic_slice_in_dim(x, i, b, axis=0)


def pad_rows(x, b):
    """Pads the rows of x to a multiple of b with copies of the first row.

    Args:
      x: (N, ...) array.
      b: block size.

    Returns:
      (ceil(N / b) · b, ...) array; x itself when N is already a multiple of b.
    """
    pad = (-x.shape[0]) % b
    return jnp.concatenate([x, jnp.repeat(x[:1], pad, 0)]) if pad else x


def blocked(block_fn, n: int, m: int, b: int, symmetric: bool):
    """Fills N x M matrices block by block from ``block_fn(i0, j0) -> (b, b) array or tuple of them``.

    Only blocks on or above the diagonal are computed when ``symmetric``; the upper triangle
    (i <= j) is mirrored. Blocks are dispatched asynchronously, then copied to host one by one.

    Args:
      block_fn: the block starting at rows ``i0`` and columns ``j0`` (numpy int32 starts); inputs
        padded to a multiple of b so every block is full.
      n, m: rows and columns of the matrices.
      b: block size.
      symmetric: the matrices are symmetric (n == m, one population).

    Returns:
      A tuple of (n, m) float64 numpy arrays, one per output of ``block_fn``.
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
    x = jnp.pad(pad_rows(x_ND, b), ((0, 0), (0, (-x_ND.shape[1]) % c)))
    return x.reshape(x.shape[0], -1, c).transpose(1, 0, 2)


def l1_sum(x_ND, y_MD, b, mesh=None):
    """Blocked ``sum_d |x_i,d - y_j,d|`` (y None: x against itself, upper blocks only).

    Args:
      x_ND: (N, D) rows.
      y_MD: (M, D) rows, or None for x against itself.
      b: block size (networks per block side).
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices (:func:`pairs_sharded`).

    Returns:
      (N, M) float64 numpy array.
    """
    if mesh is not None:
        return pairs(_l1_pair, x_ND, y_MD, b, rows=True, mesh=mesh)
    xs = _chunked(x_ND, b)
    ys = xs if y_MD is None else _chunked(y_MD, b)
    m = x_ND.shape[0] if y_MD is None else y_MD.shape[0]
    return blocked(lambda i, j: _l1_block(xs, ys, i, j, b), x_ND.shape[0], m, b, y_MD is None)[0]


def _l1_pair(x, y):
    return jnp.sum(jnp.abs(x - y))


def pairs_sharded(fn, xs, ys, mesh, rows):
    """:func:`pairs` with the rows of xs split over ``mesh``'s devices and all of ys on every device.

    Rows are padded to a multiple of the device count with copies of the last row
    (``shard_networks``) and sliced off; the whole matrix is computed (no mirroring), so a
    device needs O(rows x D) temporaries (``rows=True``: O(M x D) per row). With several
    processes the rows are gathered onto every process.

    Args:
      fn: jittable ``fn(x, y) -> scalar`` of one row of each pytree.
      xs: pytree of arrays, rows (networks) first.
      ys: pytree of arrays with the same structure, or None for xs against itself.
      mesh: a 1-D ``"networks"`` mesh.
      rows: map over the rows (O(M D) memory per row) instead of vmapping both sides.

    Returns:
      (N, M) float64 numpy array.
    """
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
    d = f(shard_networks(xs_h, mesh), yall)
    if jax.process_count() > 1:
        d = multihost_utils.process_allgather(d, tiled=True)
    return np.asarray(d, np.float64)[:n]


@functools.partial(jax.jit, static_argnames=("fn", "b", "rows"))
def _pairs_block(xs, ys, i0, j0, fn, b, rows):
    """Block of ``fn(x, y)`` over pairs; ``rows``: map rows (O(B D) memory) instead of vmapping both."""
    xa = jax.tree.map(lambda x: dyn_rows(x, i0, b), xs)
    xb = jax.tree.map(lambda x: dyn_rows(x, j0, b), ys)
    inner = jax.vmap(fn, (None, 0))
    return lax.map(lambda x: inner(x, xb), xa) if rows else jax.vmap(inner, (0, None))(xa, xb)


def pairs(fn, xs, ys, b, rows=False, mesh=None):
    """N x M matrix of ``fn`` over all pairs of rows of the pytrees xs (and ys).

    Args:
      fn: jittable ``fn(x, y) -> scalar`` of one row of each pytree.
      xs: pytree of arrays, rows (networks) first.
      ys: pytree of arrays with the same structure, or None for xs against itself (only blocks on or
        above the diagonal are computed; ``fn`` is assumed symmetric).
      b: block size (networks per block side).
      rows: map over the rows of a block (O(B D) memory) instead of vmapping both sides (O(B^2 D)).
      mesh: optional 1-D ``"networks"`` mesh: the rows are split over its devices (:func:`pairs_sharded`).

    Returns:
      (N, M) float64 numpy array.
    """
    if mesh is not None:
        return pairs_sharded(fn, xs, ys, mesh, rows)
    pad = lambda t: jax.tree.map(lambda x: pad_rows(x, b), t)
    n = jax.tree.leaves(xs)[0].shape[0]
    m = n if ys is None else jax.tree.leaves(ys)[0].shape[0]
    px = pad(xs)
    py = px if ys is None else pad(ys)
    return blocked(lambda i, j: _pairs_block(px, py, i, j, fn, b, rows), n, m, b, ys is None)[0]
