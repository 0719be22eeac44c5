"""Node strength and layer fluctuation of stacked dense/conv networks (La Malfa et al. 2021).

A network is read as a directed weighted graph whose link weights are the kernel
entries (and biases). The node strength of a neuron is the signed sum of its incoming
weights plus its bias (in-strength) plus the signed sum of its outgoing weights
(out-strength). The input layer has only out-strength; the output layer only
in-strength + bias. Layer fluctuation is the standard deviation (ddof 0) of the node
strengths in a layer.

Conventions (a network is a chain of ``kernel`` layers, in natural name order:
``Conv_0, Conv_1, ..., Dense_0, Dense_1, ...``; override with ``layers=``):
  * Dense kernel ``(din, dout)``: in-strength of output ``k`` is ``W[:, k].sum() + b[k]``;
    out-strength of input ``i`` is ``W[i, :].sum()``.
  * Conv kernel ``(kh, kw, cin, cout)``: nodes are channels (feature maps). An output
    feature map's in-strength is the sum of its kernel ``W[..., k]`` plus its bias; an
    input channel's out-strength is ``W[:, :, c, :].sum()``: every kernel weight that
    touches that channel, counted once per weight (not per spatial position).
  * Conv followed by Dense (flatten of ``(H, W, C)`` feature maps, channel-last as Flax
    reshapes): channel ``c`` of the conv feeds the dense rows ``r`` with ``r % C == c``,
    so its out-strength is the sum of those rows. Global pooling (``din == C``) is the
    same rule with one position.
  * Layers without a bias contribute 0 bias. Other parameters (norm scales) are ignored.

Output keys: ``"input"`` for the network's input nodes, then each layer's name for the
nodes that layer outputs (the last one is the output layer).

Reference: La Malfa, La Malfa, Nicosia, Latora, "Characterizing learning dynamics of
deep neural networks via complex networks", ICTAI 2021, arXiv 2110.02628.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights import stats

INPUT = "input"


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def chain(params: Mapping[str, Any], layers: Sequence[str] | None = None):
  """Returns ``[(layer, kernel_N..., bias_N or None)]`` of the kernel layers in chain order.

  Args:
    params: parameters, networks axis first.
    layers: explicit layer order; default all layers with a ``kernel`` leaf, natural-sorted.

  Raises:
    ValueError: if consecutive layers cannot be connected (``din`` of a layer is neither
      the previous ``dout`` nor a multiple of it).
  """
  flat = stats.flatten(params)
  kernels = {stats.layer_of(p): p for p, x in flat.items() if stats.is_kernel(p, x)}
  names = list(layers) if layers is not None else sorted(kernels, key=_natural_key)
  out = []
  for name in names:
    if name not in kernels:
      raise ValueError(f"layer {name!r} has no kernel; kernel layers: {sorted(kernels)}")
    out.append((name, flat[kernels[name]], flat.get(f"{name}/bias")))
  for (prev, k0, _), (name, k1, _) in zip(out, out[1:]):
    dout, din = k0.shape[-1], (k1.shape[-2] if k1.ndim > 3 else k1.shape[1])
    if din % dout:
      raise ValueError(f"cannot connect {prev!r} (out {dout}) to {name!r} (in {din}); node "
                       "strength needs a sequential dense/conv stack (pass layers=)")
  return out


def _in_out(w):
  """(in-strength of outputs without bias, out-strength of inputs) for one kernel."""
  if w.ndim == 2:
    return w.sum(0), w.sum(1)
  return w.reshape(-1, w.shape[-1]).sum(0), jnp.moveaxis(w, -2, 0).reshape(w.shape[-2], -1).sum(1)


def _strengths(kernels, biases):
  """Node strengths of one network: list of (nodes,) arrays, input first."""
  ins, outs = zip(*[_in_out(w) for w in kernels])
  result = [outs[0]]
  for l, (w_in, b) in enumerate(zip(ins, biases)):
    s = w_in if b is None else w_in + b.reshape(-1)
    if l + 1 < len(kernels):
      nxt = outs[l + 1]
      s = s + nxt.reshape(-1, s.shape[0]).sum(0)  # flatten(H, W, C): row r feeds channel r % C
    result.append(s)
  return result


@jax.jit
def _strengths_N(kernels, biases):
  return jax.vmap(_strengths)(kernels, biases)


def node_strength(params: Mapping[str, Any], *, layers: Sequence[str] | None = None
                  ) -> dict[str, np.ndarray]:
  """Signed node strength of every neuron of every network.

  Args:
    params: parameters, networks axis first.
    layers: explicit chain order of kernel layers (default: natural sort of names).

  Returns:
    ``{"input": (N, din), layer: (N, nodes), ...}``; the last layer is the output layer
    (in-strength + bias only), ``"input"`` has only out-strength.

  Example:
    >>> s = node_strength({"Dense_0": {"kernel": w1, "bias": b1}, "Dense_1": {...}})
    >>> s["Dense_0"].shape  # (N, hidden)
  """
  ch = chain(params, layers)
  kernels = tuple(jnp.asarray(k) for _, k, _ in ch)
  biases = tuple(None if b is None else jnp.asarray(b) for _, _, b in ch)
  out = _strengths_N(kernels, biases)
  names = [INPUT] + [name for name, _, _ in ch]
  return {n: np.asarray(s) for n, s in zip(names, out)}


def layer_fluctuation(params: Mapping[str, Any], *, layers: Sequence[str] | None = None
                      ) -> pd.DataFrame:
  """Layer fluctuation: std (ddof 0) of the node strengths in each layer, per network.

  Args:
    params: parameters, networks axis first.
    layers: explicit chain order of kernel layers.

  Returns:
    Tidy DataFrame ``network, layer, statistic="layer_fluctuation", value, undefined``
    (same columns as :func:`jaxweights.stats.compute_statistics`, so they concatenate).
  """
  rows = []
  for name, s in node_strength(params, layers=layers).items():
    v = s.astype(np.float64).std(axis=1)
    rows.append(pd.DataFrame({"network": np.arange(len(v)), "layer": name,
                              "statistic": "layer_fluctuation", "value": v,
                              "undefined": ~np.isfinite(v)}))
  return pd.concat(rows, ignore_index=True)
