"""Kernel initialisers of unit scale and the kernel scaling applied after them.

Glorot & Bengio 2010 (fan_avg), He et al. 2015 (fan_in with scale sqrt(2)); the dynamic
``init_scale`` hyperparameter multiplies the kernels after initialisation (:func:`scale_kernels`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


INITS = ("normal", "truncated_normal", "uniform", "fan_in", "fan_out", "fan_avg")


def kernel_init(scheme: str) -> nn.initializers.Initializer:
    """Kernel initialiser of unit scale for `scheme`.

    The dynamic `init_scale` hyperparameter multiplies the kernels after this initialiser
    (see `scale_kernels`), so a scale is a plain multiplier on the weights' standard deviation.

    Args:
      scheme: "normal" (N(0, 1)), "truncated_normal" (N(0, 1) cut at ±2, std 1), "uniform"
        (U(-1, 1)), or "fan_in" / "fan_out" / "fan_avg": variance scaling with variance
        1/fan (truncated normal), so `init_scale=sqrt(2)` with "fan_in" is He init (He et al.
        2015, arXiv 1502.01852) and `init_scale=1` with "fan_avg" is Glorot init (Glorot & Bengio
        2010, AISTATS).

    Returns:
      A Flax initialiser `(key, shape, dtype) -> array`.

    Raises:
      ValueError: an unknown scheme.
    """
    if scheme == "normal":
        return nn.initializers.normal(1.0)
    if scheme == "truncated_normal":
        return _truncated_normal_unit
    if scheme == "uniform":
        return _uniform_sym
    if scheme in ("fan_in", "fan_out", "fan_avg"):
        return nn.initializers.variance_scaling(1.0, scheme, "truncated_normal")
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(INITS)}")


def _uniform_sym(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


# Standard deviation of a unit normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978


def _truncated_normal_unit(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / jnp.asarray(_TRUNC_STD, dtype)


def scale_kernels(params: Any, scale: Array) -> Any:
    """Multiplies every leaf named `kernel` by `scale` (biases, norms and embeddings untouched).

    Args:
      params: parameter pytree.
      scale: scalar multiplier (the `init_scale` hyperparameter).

    Returns:
      The pytree with scaled kernels.
    """

    def f(path, leaf):
        name = getattr(path[-1], "key", None)
        return leaf * scale.astype(leaf.dtype) if name == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(f, params)
