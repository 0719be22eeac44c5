"""Modularity over depth and pruning candidates (Lu et al. 2022, ECCV, "Understanding the dynamics of DNNs
through graph modularity").

A k-nearest-neighbour graph of the probe set's representations by cosine similarity (k = 3, binary
edges to the k most similar other samples), symmetrised as A = (A_dir + A_dirᵀ)/2, and Newman's
modularity (Newman 2006) with the true labels as communities. Layers where the modularity curve
stops rising (gain below `tol`) are pruning candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.dynamics.activations import capture_zoo
from jaxweights.dynamics.cka import HIGHEST
from jaxweights.dynamics.common import Array

# Why a representation's modularity (and linear probe) is NaN: `representation_status` codes.
OK, NO_SIGNAL, NON_FINITE = 0, 1, 2
REASONS = {
    OK: "",
    NO_SIGNAL: "no signal: every probe example has the same representation (dead or constant layer)",
    NON_FINITE: "non-finite representation (NaN or inf activations: a blown-up network)",
}


def knn_indices(x_nxd: Array, k: int = 3) -> Array:
    """Indices of each sample's k most cosine-similar other samples (Lu et al. 2022).

    Args:
      x_nxd: a representation `(n, d)`.
      k: neighbours.

    Returns:
      `(n, k)` indices.
    """
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    # Each row scaled by its largest |entry| first: the squares of a blown-up network's activations
    # (above ~1e19) would overflow float32 and turn every cosine into 0 (ties, an artefact).
    x = x / jnp.maximum(jnp.abs(x).max(1, keepdims=True), jnp.finfo(x.dtype).tiny)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = jnp.einsum("nd,md->nm", x, x, precision=HIGHEST)
    s = jnp.where(jnp.eye(s.shape[0], dtype=bool), -jnp.inf, s)
    return jax.lax.top_k(s, k)[1]


def knn_graph(x_nxd: Array, k: int = 3) -> Array:
    """Symmetrised k-NN graph by cosine similarity (Lu et al. 2022): A = (A_dir + A_dirᵀ)/2.

    Args:
      x_nxd: a representation `(n, d)`.
      k: neighbours; `A_dir[i, j] = 1` when j is one of the k samples most cosine-similar to i
        (i itself excluded).

    Returns:
      `(n, n)` adjacency.
    """
    idx = knn_indices(x_nxd, k)
    n = idx.shape[0]
    a_dir = jnp.zeros((n, n), jnp.float32).at[jnp.arange(n)[:, None], idx].set(1.0)
    return (a_dir + a_dir.T) / 2


def modularity(a_nxn: Array, labels_n: Array, num_classes: int) -> Array:
    """Newman modularity Q = 1/(2m) Σ_ij [A_ij − k_i k_j/(2m)] δ(c_i, c_j) of a weighted undirected graph.

    Newman 2006, as Lu et al. 2022 use it; equals `networkx.algorithms.community.modularity(G,
    communities, weight="weight")` for the graph with adjacency `A`.

    Args:
      a_nxn: symmetric adjacency.
      labels_n: community (class) of each node.
      num_classes: number of communities.

    Returns:
      Q (a scalar).
    """
    c = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32)
    deg = a_nxn.sum(1)
    two_m = deg.sum()
    within = jnp.einsum("ic,ij,jc->", c, a_nxn, c)
    return (within - ((c.T @ deg) ** 2).sum() / two_m) / two_m


def representation_status(x_nxd: Array) -> Array:
    """Whether a representation can be read: `OK`, `NO_SIGNAL` or `NON_FINITE` (an int32 scalar).

    No signal: the examples' representations are all equal (spread over examples at most 1e-6 of
    the largest |activation|; an all-zero layer counts). Its k-NN graph then only reflects how ties
    are broken (modularity −0.22 on MNIST, an artefact), so readings of it are NaN.

    Args:
      x_nxd: a representation `(n, d)`.

    Returns:
      The status code (see `REASONS`).
    """
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    spread = (x.max(0) - x.min(0)).max()
    return jnp.where(
        ~jnp.isfinite(x).all(), NON_FINITE, jnp.where(spread <= 1e-6 * jnp.abs(x).max(), NO_SIGNAL, OK)
    ).astype(jnp.int32)


def knn_modularity(x_nxd: Array, labels_n: Array, num_classes: int, k: int = 3) -> Array:
    """Modularity of the label communities in the cosine k-NN graph of one representation (Lu et al. 2022).

    Equals `modularity(knn_graph(x, k), labels)` but works on the `(n, k)` neighbour lists
    instead of an n × n adjacency (no scatter, which is slow when vmapped on CPU): with
    A = (A_dir + A_dirᵀ)/2, 2m = n·k, Σ_ij A_ij δ(c_i, c_j) = #{(i, j ∈ nn(i)): c_i = c_j},
    and the degree total of a class is (k·n_c + #{neighbour entries of class c})/2.

    Args:
      x_nxd: a representation `(n, d)`.
      labels_n: class of each example.
      num_classes: number of classes.
      k: neighbours.

    Returns:
      Q; NaN when the representation has no signal or is non-finite (`representation_status`).
    """
    idx = knn_indices(x_nxd, k)
    n = idx.shape[0]
    nb = labels_n[idx]  # (n, k) labels of the neighbours
    two_m = n * k
    within = (nb == labels_n[:, None]).sum()
    n_c = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32).sum(0)
    in_c = jax.nn.one_hot(nb.reshape(-1), num_classes, dtype=jnp.float32).sum(0)
    deg_c = (k * n_c + in_c) / 2
    q = (within - (deg_c**2).sum() / two_m) / two_m
    return jnp.where(representation_status(x_nxd) == OK, q, jnp.nan)


def _zoo_modularity(r_N, labels, num_classes, k):
    """The traced body of `_modularity_zoo`: `knn_modularity` of every network's representation."""
    return jax.vmap(lambda r: knn_modularity(r, labels, num_classes, k))(r_N)


# built once: one compile per representation shape, not one per call
_modularity_zoo = jax.jit(
    lambda r_N, labels, num_classes, k: _zoo_modularity(r_N, labels, num_classes, k), static_argnums=(2, 3)
)


def modularity_curves(
    model, params_N: Any, x: Array, labels: Array, num_classes: int, k: int = 3, chunk: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Modularity over depth of N networks (Lu et al. 2022).

    Args:
      model: a `flax.linen` module of `jaxweights.models`.
      params_N: parameters with a leading networks axis, nested or flat.
      x: standardised probe images; labels: their classes.
      num_classes: number of classes.
      k: neighbours of the k-NN graph.
      chunk: networks vmapped at once (default `default_chunk()`).

    Returns:
      `(layers, q_NxL)`: layers `["input", ...]` in depth order and each network's modularity.
    """
    reps = capture_zoo(model, params_N, x, chunk)
    labels = jnp.asarray(labels)
    return list(reps), np.stack([np.asarray(_modularity_zoo(r, labels, num_classes, k)) for r in reps.values()], 1)


def pruning_candidates(q_L: np.ndarray, layers: Sequence[str], tol: float = 0.01) -> list[str]:
    """Hidden layers where the modularity curve plateaus or drops (Lu et al. 2022).

    Args:
      q_L: modularity of `["input", hidden..., output]` representations, in depth order.
      layers: their names (same order).
      tol: a hidden layer is a candidate when its modularity exceeds the previous one by less
        than `tol` (a plateau) or falls below it (a drop).

    Returns:
      The candidate layer names (never the input or the output layer).
    """
    q = np.asarray(q_L, np.float64)
    return [layers[i] for i in range(1, len(layers) - 1) if np.isfinite(q[i]) and q[i] - q[i - 1] < tol]
