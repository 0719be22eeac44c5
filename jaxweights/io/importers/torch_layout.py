"""PyTorch layout: detecting it and mapping `a.b.weight` (out, in, ...) to Flax `a/b/kernel` (..., in, out)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxweights.io.importers.formats import ParamsError, _leaf_name

LAYOUTS = ("auto", "torch", "flax")
TORCH_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def detect_layout(keys: Sequence[str]) -> str:
    """ "torch" when parameter names end in `weight`, "flax" otherwise.

    Args:
      keys: parameter names ("fc1.weight", "Dense_0/kernel", ...).

    Returns:
      "torch" or "flax".

    Raises:
      ParamsError: names end in both `weight` and `kernel` (set the layout explicitly).
    """
    names = {_leaf_name(k) for k in keys}
    if "weight" in names and "kernel" in names:
        raise ParamsError("parameter names end in both 'weight' and 'kernel'; set the layout (--layout torch|flax)")
    return "torch" if "weight" in names else "flax"


def torch_to_flax_kernel(w: np.ndarray, networks_axis: bool = False) -> np.ndarray:
    """A PyTorch weight `(out, in, *spatial)` in Flax layout `(*spatial, in, out)`.

    Args:
      w: the weight of one network, or of N networks when `networks_axis`.
      networks_axis: whether `w` has a leading networks axis (kept first).

    Returns:
      Linear `(out, in)` -> `(in, out)`; Conv2d `(out, in, kh, kw)` -> `(kh, kw, in, out)`.
    """
    o = 1 if networks_axis else 0
    nd = w.ndim - o
    perm = tuple(range(o)) + tuple(o + i for i in range(2, nd)) + (o + 1, o)
    return np.transpose(w, perm)


def _rename_torch(flat: dict[str, np.ndarray], transpose: bool, stacked: bool) -> dict[str, np.ndarray]:
    out = {}
    for k, v in flat.items():
        parts = [q for q in re.split(r"[/.]", k) if q]
        head, leaf = parts[:-1], parts[-1]
        per_net = v.ndim - (1 if stacked else 0)
        if leaf in ("weight", "kernel") and per_net >= 2:
            leaf, v = "kernel", (torch_to_flax_kernel(v, stacked) if transpose else v)
        elif leaf == "weight" and per_net == 1:
            leaf = "scale"
        name = "/".join(head + [leaf])
        if name in out:
            raise ParamsError(f"parameter {k!r} maps to {name!r}, which another parameter already took")
        out[name] = v
    return out


def _torch_flatten_order(flat: dict[str, np.ndarray], stacked: bool, layers: Sequence[str] | None):
    """Permutes the rows of a dense kernel that follows a conv from (C, H, W) to (H, W, C) order."""
    o = 1 if stacked else 0
    kernels = {k.rsplit("/", 1)[0]: k for k, v in flat.items() if k.endswith("kernel") and v.ndim - o >= 2}
    order = list(layers) if layers is not None else list(kernels)  # the file's stored order
    order = [name for name in order if name in kernels]
    for prev, name in zip(order, order[1:]):
        a, b = flat[kernels[prev]], flat[kernels[name]]
        if a.ndim - o == 4 and b.ndim - o == 2:
            c, din = a.shape[-1], b.shape[o]
            if din != c and din % c == 0:
                hw = din // c
                idx = np.arange(din).reshape(c, hw).T.reshape(-1)  # new row (p, c) <- old row c*hw + p
                flat[kernels[name]] = np.take(b, idx, axis=o)
    return flat
