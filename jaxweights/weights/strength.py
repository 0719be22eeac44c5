"""Node strength and layer fluctuation of stacked dense/conv networks (La Malfa et al. 2021).

A network is read as a directed weighted graph whose link weights are the kernel
entries (and biases). The node strength of a neuron is the signed sum of its incoming
weights plus its bias (in-strength) plus the signed sum of its outgoing weights
(out-strength). The input layer has only out-strength; the output layer only
in-strength + bias. Layer fluctuation is the standard deviation (ddof 0) of the node
strengths in a layer.

Conventions (a network is a chain of ``kernel`` layers in the params' order, which is the
model's execution order when the params come from ``model.init`` or a ``params.npz`` written
with its order (``models.paths.flatten``); names are never sorted; override with ``layers=``):
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

Two conv definitions, chosen by ``conv_strength`` (default ``"channel"``):
  * ``"channel"`` (above): nodes are feature maps; needs no input size and works through
    pooling. It counts each kernel weight once, so it ignores that one weight links many
    position pairs.
  * ``"position"`` (La Malfa et al.'s per-position reading): nodes are positions
    ``(h, w, c)``. The out-strength of an input position is the sum of every kernel weight that
    touches it across all output positions (border positions are touched by fewer taps under
    "SAME" padding, and by none when a stride skips them); the in-strength of an output
    position is the sum of the kernel taps that land on real (not padded) inputs plus the bias.
    These are the row and column sums of the convolution's dense matrix. Needs the input's
    spatial size, the strides and the padding (``models.Conv``: "SAME", padding split as
    ``pad // 2`` before), and no pooling between layers (a max pool has no weights).
  The default stays ``"channel"``: it is defined for every CNN the library trains (which pool)
  and its node counts do not grow with the image. Through a stride-1 convolution a position away
  from the borders gets exactly its channel's per-channel in- or out-strength; the readings
  differ at borders, under strides and before a dense layer.

Output keys: ``"input"`` for the network's input nodes, then each layer's name for the
nodes that layer outputs (the last one is the output layer).

Reference: La Malfa, La Malfa, Nicosia, Latora, "Characterizing learning dynamics of
deep neural networks via complex networks", ICTAI 2021, arXiv 2110.02628.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights.models.paths import flatten, is_kernel, layer_of

INPUT = "input"


def chain(params: Mapping[str, Any], layers: Sequence[str] | None = None):
    """Returns ``[(layer, kernel_N..., bias_N or None)]`` of the kernel layers in chain order.

    Args:
      params: parameters, networks axis first.
      layers: explicit layer order; default all layers with a ``kernel`` leaf, in the params'
        (execution) order (``models.paths.layer_order``).

    Returns:
      ``[(layer name, kernel (N, ...), bias (N, dout) or None)]``.

    Raises:
      ValueError: if consecutive layers cannot be connected (``din`` of a layer is neither
        the previous ``dout`` nor a multiple of it).
    """
    flat = flatten(params)
    kernels = {layer_of(p): p for p, x in flat.items() if is_kernel(p, x)}
    names = list(layers) if layers is not None else list(kernels)
    out = []
    for name in names:
        if name not in kernels:
            raise ValueError(f"layer {name!r} has no kernel; kernel layers: {sorted(kernels)}")
        out.append((name, flat[kernels[name]], flat.get(f"{name}/bias")))
    for (prev, k0, _), (name, k1, _) in zip(out, out[1:]):
        dout, din = k0.shape[-1], (k1.shape[-2] if k1.ndim > 3 else k1.shape[1])
        if din % dout:
            raise ValueError(
                f"cannot connect {prev!r} (out {dout}) to {name!r} (in {din}); node "
                "strength needs a sequential dense/conv stack (pass layers=)"
            )
    return out


def _pad_before(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) of one spatial axis, as ``models.Conv`` / XLA compute them."""
    if padding == "SAME":
        out = -(-size // stride)
        return out, max((out - 1) * stride + k - size, 0) // 2
    if padding == "VALID":
        return (size - k) // stride + 1, 0
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _tap_masks(size: int, k: int, stride: int, padding: str):
    """(k, out) valid-output mask and (k, size) touched-input mask of each tap along one axis."""
    out, before = _pad_before(size, k, stride, padding)
    pos = np.arange(out)[None, :] * stride + np.arange(k)[:, None] - before  # input index of tap i at o
    valid = (pos >= 0) & (pos < size)  # (k, out)
    touched = np.zeros((k, size))
    for i in range(k):
        np.add.at(touched[i], pos[i][valid[i]], 1.0)  # times tap i reads input h
    return valid.astype(np.float64), touched


def conv_position_strength(kernel, bias, input_hw: Sequence[int], stride: int = 1, padding: str = "SAME"):
    """Per-position strengths of one conv layer (La Malfa et al. 2021, arXiv 2110.02628).

    Args:
      kernel: one network's kernel ``(kh, kw, cin, cout)``.
      bias: ``(cout,)`` or None.
      input_hw: the input's spatial size ``(H, W)``.
      stride, padding: as ``models.Conv`` ("SAME" or "VALID").

    Returns:
      ``(in_OHxOWxCout, out_HxWxCin)``: the in-strength (incoming weights + bias) of every output
      position and the out-strength of every input position: the column and row sums of the
      layer's dense matrix.
    """
    kh, kw, cin, cout = kernel.shape
    (vh, th), (vw, tw) = (
        _tap_masks(int(input_hw[0]), kh, stride, padding),
        _tap_masks(int(input_hw[1]), kw, stride, padding),
    )
    dt = kernel.dtype
    w_in = jnp.einsum("ijck,io,jp->opk", kernel, jnp.asarray(vh, dt), jnp.asarray(vw, dt))
    if bias is not None:
        w_in = w_in + bias.reshape(-1)
    w_out = jnp.einsum("ijck,ih,jw->hwc", kernel, jnp.asarray(th, dt), jnp.asarray(tw, dt))
    return w_in, w_out


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


def _position_strengths(ch, input_hw, strides, padding):
    """Node strengths with conv nodes per position: list of (N, nodes) arrays, input first."""
    n = len(ch)
    strides = [strides] * n if isinstance(strides, int) else list(strides)
    hw, ins, outs, shapes = tuple(input_hw), [], [], []
    for (_name, k, b), st in zip(ch, strides):
        k = jnp.asarray(k)
        if k.ndim == 5:
            f = jax.vmap(
                lambda kk, bb: conv_position_strength(kk, bb, hw, st, padding), (0, 0 if b is not None else None)
            )
            i, o = f(k, None if b is None else jnp.asarray(b))
            shapes.append((hw, i.shape[1:3]))
            hw = tuple(i.shape[1:3])
            ins.append(i.reshape(i.shape[0], -1))
            outs.append(o.reshape(o.shape[0], -1))
        else:
            ins.append(k.sum(1) + (0 if b is None else jnp.asarray(b)))
            outs.append(k.sum(2))
            shapes.append((None, None))
    result = [outs[0]]
    for l in range(n):
        s = ins[l]
        if l + 1 < n:
            if outs[l + 1].shape[1] != s.shape[1]:
                raise ValueError(
                    f"conv_strength='position': layer {ch[l + 1][0]!r} has {outs[l + 1].shape[1]} input "
                    f"positions but {ch[l][0]!r} outputs {s.shape[1]} (pooling between layers has no "
                    "weights; use conv_strength='channel')"
                )
            s = s + outs[l + 1]  # flatten (H, W, C) or the next conv: position by position
        result.append(s)
    return [np.asarray(r) for r in result]


def node_strength(
    params: Mapping[str, Any],
    *,
    layers: Sequence[str] | None = None,
    conv_strength: str = "channel",
    input_hw: Sequence[int] | None = None,
    strides: int | Sequence[int] = 1,
    padding: str = "SAME",
) -> dict[str, np.ndarray]:
    """Signed node strength of every neuron of every network (La Malfa et al. 2021, arXiv 2110.02628).

    Args:
      params: parameters, networks axis first.
      layers: explicit chain order of kernel layers (default: the params' execution order).
      conv_strength: "channel" (nodes are feature maps; default) or "position" (nodes are
        positions ``(h, w, c)``, flattened; La Malfa et al.'s per-position reading, see the
        module docstring).
      input_hw: the input's spatial size ``(H, W)``; needed for "position".
      strides: conv stride (one for all conv layers or one per chain layer), for "position".
      padding: "SAME" or "VALID", for "position".

    Returns:
      ``{"input": (N, din), layer: (N, nodes), ...}``; the last layer is the output layer
      (in-strength + bias only), ``"input"`` has only out-strength.

    Example:
      >>> s = node_strength({"Dense_0": {"kernel": w1, "bias": b1}, "Dense_1": {...}})
      >>> s["Dense_0"].shape  # (N, hidden)
    """
    ch = chain(params, layers)
    if conv_strength not in ("channel", "position"):
        raise ValueError(f"conv_strength must be 'channel' or 'position', got {conv_strength!r}")
    if conv_strength == "position":
        if input_hw is None and any(np.ndim(k) == 5 for _, k, _ in ch):
            raise ValueError("conv_strength='position' needs input_hw=(H, W)")
        out = _position_strengths(ch, input_hw, strides, padding)
        return dict(zip([INPUT] + [name for name, _, _ in ch], out))
    kernels = tuple(jnp.asarray(k) for _, k, _ in ch)
    biases = tuple(None if b is None else jnp.asarray(b) for _, _, b in ch)
    out = _strengths_N(kernels, biases)
    names = [INPUT] + [name for name, _, _ in ch]
    return {n: np.asarray(s) for n, s in zip(names, out)}


def layer_fluctuation(
    params: Mapping[str, Any], *, layers: Sequence[str] | None = None, **strength_options
) -> pd.DataFrame:
    """Layer fluctuation: std (ddof 0) of the node strengths in each layer (La Malfa et al. 2021, arXiv 2110.02628).

    Args:
      params: parameters, networks axis first.
      layers: explicit chain order of kernel layers.
      strength_options: ``conv_strength``, ``input_hw``, ``strides``, ``padding`` of :func:`node_strength`.

    Returns:
      Tidy DataFrame ``network, layer, statistic="layer_fluctuation", value, undefined``
      (same columns as :func:`jaxweights.weights.compute.compute_statistics`, so they concatenate).
    """
    rows = []
    for name, s in node_strength(params, layers=layers, **strength_options).items():
        v = s.astype(np.float64).std(axis=1)
        rows.append(
            pd.DataFrame(
                {
                    "network": np.arange(len(v)),
                    "layer": name,
                    "statistic": "layer_fluctuation",
                    "value": v,
                    "undefined": ~np.isfinite(v),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)
