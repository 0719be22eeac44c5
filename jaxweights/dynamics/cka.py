"""Centred kernel alignment between representations of the same examples.

* Linear CKA (Kornblith et al. 2019, arXiv 1905.00414): `HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`
  with `HSIC(K, L) = <HKH, HLH>` on linear Gram matrices.
* Minibatch CKA (Nguyen, Raghu, Kornblith 2021, arXiv 2010.15327): the unbiased HSIC estimator of
  Song et al. 2012 averaged over minibatches.

Used layer × layer within a network, epoch × epoch for one layer (Sharon & Dar 2024, arXiv
2405.17377) and network × network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxweights.dynamics.common import Array

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 products on GPU/TPU too (their default is TF32/bf16 passes)


def gram(x_nxd: Array) -> Array:
    """Linear Gram matrix `Xc Xcᵀ` of one representation, features centred first (at least float32).

    Each feature's mean over the n examples is subtracted before the products: `Xc Xcᵀ = H X Xᵀ H`
    in exact arithmetic (what linear CKA's HSIC centres anyway, Kornblith et al. 2019), but without
    the cancellation of centring a Gram matrix built from large uncentred features afterwards (a
    float32 feature mean of 1e3 left linear and unbiased CKA wrong by 0.1 to NaN). Unbiased HSIC is
    invariant to a constant offset of the features, so centring changes it only by rounding.

    Args:
      x_nxd: one representation `(n, d)`.

    Returns:
      `(n, n)` Gram matrix.
    """
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    x = x - x.mean(0, keepdims=True)
    return jnp.einsum("nd,md->nm", x, x, precision=HIGHEST)  # no explicit transpose: one batched matmul when vmapped


def _center(k):
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_biased(k: Array, l: Array) -> Array:
    """Biased HSIC `<HKH, HLH>` of two Gram matrices (Gretton et al. 2005; Kornblith et al. 2019).

    Args:
      k, l: `(n, n)` Gram matrices.

    Returns:
      The unnormalised HSIC (the (n−1)² cancels in CKA).
    """
    return (_center(k) * _center(l)).sum()


def _unbiased_form(k):
    """A(K) with `hsic_unbiased(K, L) = <A(K), L̃>` for any symmetric L (L̃: L with a zero diagonal)."""
    n = k.shape[0]
    kt = k * (1.0 - jnp.eye(n, dtype=k.dtype))
    r = kt.sum(1)
    a = kt + r.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * r[:, None]
    return a * (1.0 - jnp.eye(n, dtype=k.dtype)) / (n * (n - 3))


def hsic_unbiased(k: Array, l: Array) -> Array:
    """Unbiased HSIC estimator of Song et al. 2012 (eq. 5), as used by Nguyen et al. 2021.

    `[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))`, K̃, L̃ with zero diagonals.

    Args:
      k, l: `(n, n)` Gram matrices, n > 3.

    Returns:
      The estimate (a scalar).
    """
    n = l.shape[0]
    return (_unbiased_form(k) * (l * (1.0 - jnp.eye(n, dtype=l.dtype)))).sum()


def cka_linear(x: Array, y: Array) -> Array:
    """Linear CKA of two representations of the same n examples (Kornblith et al. 2019, arXiv 1905.00414).

    Args:
      x, y: representations `(n, d1)`, `(n, d2)`.

    Returns:
      CKA in [0, 1] (NaN for a constant representation).
    """
    k, l = gram(x), gram(y)
    return hsic_biased(k, l) / jnp.sqrt(hsic_biased(k, k) * hsic_biased(l, l))


def minibatch_grams(x: Array, batch_size: int) -> Array:
    """Gram matrices `(b, B, B)` of consecutive minibatches, each centred with its own feature means.

    Args:
      x: a representation `(n, d)`; `b = n // batch_size` minibatches (a remainder is dropped).
      batch_size: B.

    Returns:
      `(b, B, B)` Gram matrices.
    """
    b = x.shape[0] // batch_size
    xb = x[: b * batch_size].reshape(b, batch_size, -1)
    return jax.vmap(gram)(xb)


def cka_minibatch(x: Array, y: Array, batch_size: int) -> Array:
    """Minibatch CKA with the unbiased HSIC (Nguyen, Raghu, Kornblith 2021, arXiv 2010.15327).

    The n examples are split into `n // batch_size` consecutive minibatches (a remainder is
    dropped); `CKA = mean HSIC₁(K, L) / sqrt(mean HSIC₁(K, K) · mean HSIC₁(L, L))`. Each minibatch's
    features are centred with that minibatch's means before its Gram matrix (`gram`): HSIC₁ is
    invariant to a constant feature offset, so this changes it only by removing rounding error.

    Args:
      x, y: representations `(n, d1)`, `(n, d2)` of the same examples.
      batch_size: minibatch size (> 3).

    Returns:
      The minibatch CKA (a scalar).
    """
    gx, gy = minibatch_grams(x, batch_size), minibatch_grams(y, batch_size)
    kl = jax.vmap(hsic_unbiased)(gx, gy).mean()
    kk = jax.vmap(hsic_unbiased)(gx, gx).mean()
    ll = jax.vmap(hsic_unbiased)(gy, gy).mean()
    return kl / jnp.sqrt(kk * ll)


def _forms(g_MxBxBxB, unbiased: bool):
    """Flattened left/right factors so that a pairwise HSIC matrix is one matmul.

    Input: Gram matrices `(M, b, B, B)` of M representations over b minibatches (b = 1 and the
    biased HSIC for linear CKA). Returns `(left, right)`, each `(M, b·B·B)`, with
    `HSIC(i, j) = left[i] · right[j] / b`.
    """
    m, b, n, _ = g_MxBxBxB.shape
    if unbiased:
        left = jax.vmap(jax.vmap(_unbiased_form))(g_MxBxBxB)
        right = g_MxBxBxB * (1.0 - jnp.eye(n, dtype=g_MxBxBxB.dtype))
    else:
        left = right = jax.vmap(jax.vmap(_center))(g_MxBxBxB)
    return left.reshape(m, -1), right.reshape(m, -1)


def cka_forms(x_nxd: Array, unbiased: bool, batch_size: int) -> tuple[Array, Array]:
    """The factors of one representation with `HSIC(x, y) ∝ left(x) · right(y)`.

    Args:
      x_nxd: a representation `(n, d)`.
      unbiased: minibatch CKA's unbiased HSIC (Nguyen et al. 2021); else linear CKA's biased HSIC.
      batch_size: minibatch size of the unbiased HSIC.

    Returns:
      `(left, right)` vectors (equal for the biased HSIC).
    """
    g = minibatch_grams(x_nxd, batch_size) if unbiased else gram(x_nxd)[None]
    left, right = _forms(g[None], unbiased)
    return left[0], right[0]


def normalise_hsic(h: Array) -> Array:
    """CKA from a matrix of pairwise HSIC values: `h[i, j] / sqrt(h[i, i] h[j, j])`.

    Args:
      h: `(M, M)` HSIC matrix.

    Returns:
      `(M, M)` CKA matrix.
    """
    d = jnp.diagonal(h)
    return h / jnp.sqrt(jnp.outer(d, d))


def cka_matrix(grams: Array, unbiased: bool = False) -> Array:
    """CKA between every pair of M representations of the same examples, from their Gram matrices.

    Args:
      grams: `(M, B, B)` Gram matrices (linear CKA), or `(M, b, B, B)` per-minibatch Gram matrices
        for minibatch CKA.
      unbiased: use the unbiased HSIC (minibatch CKA of Nguyen et al. 2021); else the biased HSIC
        of linear CKA (Kornblith et al. 2019).

    Returns:
      `(M, M)` CKA matrix (symmetric, ones on the diagonal up to rounding).
    """
    g = grams if grams.ndim == 4 else grams[:, None]
    left, right = _forms(g, unbiased)
    return normalise_hsic(jnp.matmul(left, right.T, precision=HIGHEST))
