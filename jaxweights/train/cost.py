"""What one training step costs: FLOPs and bytes accessed, from XLA's cost analysis of the compiled step."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxweights.train.state import Hyper, Setup
from jaxweights.train.step import loss_and_logits
from jaxweights.train.zoo import make_zoo_fns

PyTree = Any


def step_flops(setup: Setup, params_one: PyTree, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step of one network, from XLA's cost analysis of forward+backward.

    Args:
      setup: the static setup.
      params_one: one network's parameters.
      image_shape: (H, W, C) of one image.

    Returns:
      FLOPs of one step (0.0 when XLA gives no cost analysis).
    """
    x = jnp.zeros((setup.batch_size, *image_shape), setup.compute_dtype)
    y = jnp.zeros((setup.batch_size,), jnp.int32)
    f = jax.jit(jax.grad(lambda p: loss_and_logits(setup, p, x, y)[0]))
    cost = f.lower(params_one).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def step_cost(setup: Setup, image_shape: tuple[int, ...], n_nets: int = 1) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one whole training step of one network, from XLA's cost analysis.

    Unlike `step_flops` this is the step as `train_epoch` compiles it, the optimizer update and
    the divergence check included, for `n_nets` networks vmapped together (what one device runs
    at a time: a `vmap_chunk` chunk or its share of a sharded zoo), divided by `n_nets`. The bytes
    are those read and written by every fused kernel of the compiled program, with no reuse
    across kernels counted; their ratio to the FLOPs is the step's arithmetic intensity, which
    decides whether memory bandwidth or the matmul units bound a zoo (the roofline columns of
    `benchmarks/train_throughput.py`). The cost analysis counts the step loop's body once, so the
    program is compiled (never run) on one batch.

    Args:
      setup: the static setup.
      image_shape: (H, W, C) of one image.
      n_nets: networks vmapped together.

    Returns:
      (FLOPs, bytes accessed) per network and step.
    """
    f32 = lambda v: jnp.full((n_nets,), v, jnp.float32)
    hp = Hyper(
        seed=jnp.arange(n_nets, dtype=jnp.int32),
        learning_rate=f32(0.01),
        init_scale=f32(1.0),
        weight_decay=f32(0.0),
        label_noise=f32(0.0),
        train_fraction=f32(1.0),
    )
    fns = make_zoo_fns(dataclasses.replace(setup, vmap_chunk=0), image_shape, 1)
    state = jax.eval_shape(fns.init, hp)
    x = jax.ShapeDtypeStruct((setup.batch_size, *image_shape), jnp.uint8)
    y = jax.ShapeDtypeStruct((setup.batch_size,), jnp.int32)
    cost = fns.train_epoch.lower(state, hp, jax.ShapeDtypeStruct((), jnp.int32), x, y).compile().cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return float(cost.get("flops", 0.0)) / n_nets, float(cost.get("bytes accessed", 0.0)) / n_nets
