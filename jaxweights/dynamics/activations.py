"""Representations of networks on a probe batch: every top-level layer's output, flattened.

Captured with Flax's `capture_intermediates`: the output of every top-level layer (after the model's
activation for hidden MLP/CNN layers, logits for the last), flattened to `(n, features)`; `"input"`
is the standardised image. A zoo is mapped over its leading networks axis with
`jax.lax.map(..., batch_size=chunk)` inside one compiled program, compiled once per model, chunk
size and input shapes (`capture_zoo`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxweights.dynamics.common import INPUT, Array, default_chunk
from jaxweights.models import ACTIVATIONS, paths


def capture(model, params: Any, x: Array) -> dict[str, Array]:
    """Representations of one network on a batch: each top-level layer's output, flattened.

    Hidden layers of models with an `activation` field (MLP, CNN) are reported after the activation
    (what the next layer reads, before pooling); the last layer gives the logits; other modules (ViT
    blocks) give their output as is.

    Args:
      model: a `flax.linen` module of `jaxweights.models`.
      params: one network's parameters (nested, as `model.init` makes them).
      x: standardised inputs `(n, H, W, C)`.

    Returns:
      `{"input": (n, H·W·C), layer: (n, features), ...}` in the order the layers run.
    """
    _, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    names = [k for k in inter if k != "__call__"]
    act = getattr(model, "activation", None)
    out = {INPUT: x.reshape(x.shape[0], -1).astype(jnp.float32)}
    for i, name in enumerate(names):
        h = inter[name]["__call__"][0]
        if act is not None and i < len(names) - 1:
            h = ACTIVATIONS[act](h)
        out[name] = h.reshape(h.shape[0], -1).astype(jnp.float32)
    return out


def _capture_networks(model, chunk: int, names: list[str], params_N: Any, x: Array) -> list[Array]:
    """The traced body of `capture_zoo`: `capture` of every network, layers as a list in depth order.

    A list keeps the layers in depth order (a dict pytree would come back sorted); their names are
    written into `names` while tracing.
    """

    def one(p):
        reps = capture(model, p, x)
        names[:] = list(reps)
        return [reps[k] for k in names]

    return jax.lax.map(one, params_N, batch_size=chunk)


def _build_program(model, chunk: int):
    names: list[str] = []
    fn = jax.jit(lambda params_N, x: _capture_networks(model, chunk, names, params_N, x))
    return fn, names


_cached_program = functools.lru_cache(maxsize=16)(_build_program)


def _program(model, chunk: int):
    """The jitted `capture_zoo` of one model and chunk size, built once (a module that cannot be hashed: per call)."""
    try:
        hash(model)
    except TypeError:
        return _build_program(model, chunk)
    return _cached_program(model, chunk)


def capture_zoo(model, params_N: Any, x: Array, chunk: int | None = None) -> dict[str, Array]:
    """`capture` mapped over the networks axis, `chunk` networks vmapped at a time.

    One compiled program per model, chunk size and input shapes: calling it for every snapshot of a
    block of networks compiles once.

    Args:
      model: a `flax.linen` module of `jaxweights.models`.
      params_N: parameters with a leading networks axis, nested or flat (`{"Dense_0/kernel": (N, ...)}`).
      x: standardised inputs `(n, H, W, C)`.
      chunk: networks vmapped at once (default `default_chunk()`).

    Returns:
      `{layer: (N, n, features)}` in depth order, `"input"` first.
    """
    params_N = paths.unflatten(params_N) if "/" in next(iter(params_N)) else params_N
    fn, names = _program(model, chunk or default_chunk())
    out = fn(params_N, x)
    return dict(zip(names, out))
