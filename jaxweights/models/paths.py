"""Parameter paths: the one flattener to path keys and the one layer order.

A parameter is addressed by its '/'-joined path in the Flax ``params`` collection
(``"Dense_0/kernel"``, ``"encoder_0/attention/query/kernel"``); a layer by the path of its
module (``"Dense_0"``). Layers are ordered as the model executes them, never by sorting names:
Flax creates a parameter when the code that owns it first runs, so ``model.init`` returns the
parameters in execution order (a dict's insertion order). JAX tree operations sort dict keys,
so code that went through ``jax.tree.map`` or ``vmap`` passes ``order`` to restore it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxweights import data
from jaxweights.models.architectures import make_model

__all__ = [
    "flatten",
    "unflatten",
    "param_order",
    "execution_order",
    "layer_of",
    "is_kernel",
    "layer_order",
    "layer_depths",
]


def flatten(params: Mapping[str, Any], order: Sequence[str] | None = None) -> dict[str, Any]:
    """Flattens a (possibly nested) parameter dict to ``{"a/b/kernel": leaf}``, keeping its order.

    Accepts nested dicts / FrozenDicts (a Flax ``params`` collection), a dict with a single
    top-level ``"params"`` key (unwrapped), or an already-flat dict with '/'-joined keys
    (returned as is, e.g. the contents of ``params.npz``). Leaves are returned unchanged
    (``{k: np.asarray(v) ...}`` for host copies).

    Args:
      params: pytree of arrays, networks axis first.
      order: optional leaf paths in execution order (:func:`param_order`); listed paths come
        first in that order, the others follow in the dict's order.

    Returns:
      Dict from '/'-joined path to leaf, in the dict's (execution) order.
    """
    if hasattr(params, "unfreeze"):
        params = params.unfreeze()
    params = dict(params)
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = dict(params["params"])
    out: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                visit(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    visit("", params)
    if order is not None:
        out = {**{k: out[k] for k in order if k in out}, **out}
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`: ``{"Dense_0/kernel": x}`` -> ``{"Dense_0": {"kernel": x}}``, order kept.

    Args:
      flat: '/'-joined path -> leaf.

    Returns:
      The nested dict, keys in the order of ``flat``.
    """
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def param_order(model: nn.Module, image_shape: Sequence[int], dtype: Any = jnp.float32) -> list[str]:
    """Leaf paths ("Dense_0/kernel") of ``model``'s parameters in execution order.

    The order is read inside an abstract (``jax.eval_shape``) init, so no arrays are allocated.
    Works for any linen module (setup or compact): submodules are ordered by when they are
    called, not by their attribute names.

    Args:
      model: a Flax linen module taking ``(batch, *image_shape)`` inputs.
      image_shape: one input's shape, e.g. (28, 28, 1).
      dtype: input dtype.

    Returns:
      Leaf paths in the order the model creates (runs) them.
    """
    order: list[str] = []

    def init(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        params = variables.get("params", {}) if hasattr(variables, "get") else variables["params"]
        order.extend(flatten(params))
        return 0

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, *image_shape), dtype))
    return order


def execution_order(run_dir: str | os.PathLike) -> list[str] | None:
    """Parameter paths in execution order for a run directory's built-in model, from its config.json.

    Rebuilds the model (:func:`~jaxweights.models.make_model` on the config's dataset shape) and
    reads :func:`param_order`.

    Args:
      run_dir: a run directory (holding ``config.json``).

    Returns:
      The leaf paths, or None when there is no config.json or the model cannot be rebuilt (an
      unknown dataset, a model passed in Python).
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        cfg = json.loads(path.read_text())
        spec = data.SPECS[cfg["dataset"]]
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items() if k not in ("name", "init")}
        model = make_model(
            cfg["model"]["name"],
            num_classes=spec.num_classes,
            image_shape=spec.image_shape,
            init=cfg["model"].get("init", "fan_in"),
            **kw,
        )
        return param_order(model, spec.image_shape)
    except Exception:  # noqa: BLE001 - any failure means "order unknown", never a crash
        return None


def layer_of(path: str) -> str:
    """Module path of a leaf path: ``"Dense_0/kernel" -> "Dense_0"``.

    Args:
      path: '/'-joined leaf path.

    Returns:
      The path without its last component (the path itself when it has none).
    """
    return path.rsplit("/", 1)[0] if "/" in path else path


def is_kernel(path: str, x: Any = None) -> bool:
    """True for a kernel leaf: named ``kernel`` and, when ``x`` is given, >= 2 dims per network.

    Args:
      path: '/'-joined leaf path.
      x: optional stacked leaf (networks axis first); its rank is checked when given.

    Returns:
      Whether the leaf is a (stacked) weight matrix or convolution kernel.
    """
    return path.rsplit("/", 1)[-1] == "kernel" and (x is None or np.ndim(x) >= 3)


def layer_order(params_or_paths: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """Layers (module paths) in the order their first leaf appears (execution order; no sorting).

    Args:
      params_or_paths: parameters (nested or flat dict) or a sequence of leaf paths.

    Returns:
      Distinct module paths, first appearance first.
    """
    paths = list(flatten(params_or_paths)) if isinstance(params_or_paths, Mapping) else list(params_or_paths)
    return list(dict.fromkeys(layer_of(p) for p in paths))


def layer_depths(layers: Sequence[str]) -> dict[str, float]:
    """Position in [0, 1] of each layer in the given (execution) order: first 0, last 1.

    ``i / (n - 1)`` for the i-th of n distinct layers (a single layer is 0); repeated names
    keep their first position. Names are never sorted: pass them in the order the model runs
    them (:func:`layer_order`).

    Args:
      layers: layer names in execution order.

    Returns:
      Layer -> normalised depth.
    """
    order = list(dict.fromkeys(layers))
    n = len(order)
    return {name: (i / (n - 1) if n > 1 else 0.0) for i, name in enumerate(order)}
