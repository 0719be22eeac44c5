"""Health of a network after an epoch: its largest weight and the "exploded" rule."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.train.state import Hyper, Setup, init_network

Array = jax.Array
PyTree = Any


def max_abs_weight(params: PyTree) -> Array:
    """The largest |w| over all parameters of one network (float32 scalar; inf/NaN if any is).

    Args:
      params: one network's parameters.

    Returns:
      max |w| over every leaf (float32 scalar).
    """
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(params)]))


def reference_max_abs_weight(setup: Setup, hp: Hyper, image_shape: tuple[int, ...]) -> Array:
    """The yardstick of one network's `exploded` weight rule: the larger of its initial max |w| and
    that of the same seed's initialisation at init scale 1 (so a small init scale does not make
    ordinary learned weights look like a blow-up).

    Args:
      setup: the static setup.
      hp: this network's hyperparameters.
      image_shape: (H, W, C) of one image.

    Returns:
      The reference max |w| (float32 scalar).
    """
    own = init_network(setup, hp, image_shape).params
    unit = init_network(setup, hp._replace(init_scale=jnp.ones_like(hp.init_scale)), image_shape).params
    return jnp.maximum(max_abs_weight(own), max_abs_weight(unit))


def exploded(
    test_loss_N: np.ndarray,
    max_abs_weight_N: np.ndarray,
    reference_N: np.ndarray,
    diverged_N: np.ndarray,
    num_classes: int,
    loss_factor: float = 10.0,
    weight_factor: float = 100.0,
) -> np.ndarray:
    """Which networks blew up without becoming non-finite (bool (N,)).

    exploded = not diverged and (test loss > `loss_factor` · ln(num_classes), i.e. that many times
    the loss of a uniform guess, or not finite; or max |w| > `weight_factor` · `reference_N`, the
    network's `reference_max_abs_weight`, or not finite). NaN comparisons count as blown up.

    Args:
      test_loss_N: test loss per network (N,).
      max_abs_weight_N: max |w| per network (N,).
      reference_N: `reference_max_abs_weight` per network (N,).
      diverged_N: the diverged flags (N,).
      num_classes: classes of the task (the uniform guess's loss is ln(num_classes)).
      loss_factor: `config.explode_loss_factor`.
      weight_factor: `config.explode_weight_factor`.

    Returns:
      bool (N,).
    """
    loss_ok = np.asarray(test_loss_N, np.float64) <= loss_factor * np.log(num_classes)
    w_ok = np.asarray(max_abs_weight_N, np.float64) <= weight_factor * np.asarray(reference_N, np.float64)
    return ~np.asarray(diverged_N, bool) & ~(loss_ok & w_ok)
