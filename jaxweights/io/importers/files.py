"""Reading parameter files into the stacked population the library takes (`read`, `stack`, `load`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.io.importers.formats import (
    FORMATS,
    ParamsError,
    _flatten,
    _leaf_name,
    _params_subtree,
    _read_raw,
    detect_format,
)
from jaxweights.io.importers.torch_layout import (
    LAYOUTS,
    TORCH_BUFFERS,
    _rename_torch,
    _torch_flatten_order,
    detect_layout,
)
from jaxweights.models import paths as param_paths

log = logging.getLogger("jaxweights")


def read(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    fmt: str | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Reads one parameter file as a population, in Flax naming and layout.

    Args:
      path: an orbax checkpoint directory, a `.msgpack`/`.flax`, `.npz` or `.safetensors` file.
      layout: "auto", "torch" or "flax" (see the module docstring).
      stacked: whether the file holds N networks with the networks axis first (None: detect).
      fmt: one of `FORMATS` (None: from the path).
      layers: chain order of the kernel layers (module paths after renaming, "fc1", "features/0");
        used only to find the Linear layers that follow a conv in PyTorch files.

    Returns:
      A flat dict `{"Dense_0/kernel": array}` whose leaves have the networks axis first (of
      size 1 for a file holding one network), float32 (float64 stays float64).

    Raises:
      ParamsError: unreadable file, unknown format or layout, no floating-point parameters.
    """
    p = Path(path)
    if layout not in LAYOUTS:
        raise ParamsError(f"--layout: unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise ParamsError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    tree, zoo = _params_subtree(_read_raw(p, fmt))
    flat, dropped = {}, []
    for k, v in _flatten(tree).items():
        v = np.asarray(v)
        if _leaf_name(k) in TORCH_BUFFERS or "float" not in v.dtype.name:  # bfloat16 is not np.floating
            dropped.append(k)
            continue
        flat[k] = v if v.dtype == np.float64 else v.astype(np.float32)
    if dropped:
        log.info(
            "%s: skipped %d non-weight entries (%s%s)",
            p,
            len(dropped),
            ", ".join(dropped[:3]),
            ", ..." if len(dropped) > 3 else "",
        )
    if not flat:
        raise ParamsError(f"{p}: holds no floating-point parameters")
    resolved = detect_layout(list(flat)) if layout == "auto" else layout
    if stacked is None:
        stacked = zoo or _looks_stacked(flat, resolved)
    if not stacked:
        flat = {k: v[None] for k, v in flat.items()}
    if resolved == "torch" or any(_leaf_name(k) == "weight" for k in flat):
        flat = _rename_torch(flat, transpose=resolved == "torch", stacked=True)
        if resolved == "torch":
            flat = _torch_flatten_order(flat, True, layers)
    else:
        flat = {k.replace(".", "/") if "/" not in k else k: v for k, v in flat.items()}
    n = {v.shape[0] for v in flat.values()}
    if len(n) > 1:
        raise ParamsError(
            f"{p}: read as a population, but its leaves disagree on the number of networks "
            f"({sorted(n)}); pass stacked=False (--stacked=no)"
        )
    if list(flat) == sorted(flat):  # a checkpoint stores sorted keys: its run's config gives the order
        order = next((o for d in [p, *p.parents][:4] if (o := param_paths.execution_order(d))), None)
        if order:
            flat = {**{k: flat[k] for k in order if k in flat}, **flat}
    return flat


def _looks_stacked(flat: dict[str, np.ndarray], layout: str) -> bool:
    biases = [v.ndim for k, v in flat.items() if _leaf_name(k) == "bias"]
    if biases:
        return all(d == 2 for d in biases)
    kernels = [v.ndim for k, v in flat.items() if _leaf_name(k) in ("kernel", "weight")]
    return layout == "flax" and bool(kernels) and all(d in (3, 5) for d in kernels)


def stack(populations: Sequence[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Concatenates flat populations along the networks axis, checking their structures match.

    Args:
      populations: `(source name, flat params with the networks axis first)` pairs.

    Returns:
      One flat dict whose leaves stack every population's networks, in order.

    Raises:
      ParamsError: naming the first leaf (in the sources' order) that is missing from one source or
        whose per-network shape differs from the first source's.
    """
    (name0, ref), rest = populations[0], populations[1:]
    for name, pop in rest:
        for k in list(dict.fromkeys([*ref, *pop])):  # first source's order, then the new leaves
            if k not in pop:
                raise ParamsError(f"{name}: structure differs from {name0}: leaf {k!r} is missing")
            if k not in ref:
                raise ParamsError(f"{name}: structure differs from {name0}: leaf {k!r} is not in {name0}")
            if pop[k].shape[1:] != ref[k].shape[1:]:
                raise ParamsError(
                    f"{name}: structure differs from {name0}: leaf {k!r} has shape "
                    f"{pop[k].shape[1:]}, {name0} has {ref[k].shape[1:]}"
                )
    return {k: np.concatenate([pop[k] for _, pop in populations], 0) for k in ref}


def load(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    layers: Sequence[str] | None = None,
    with_sources: bool = False,
) -> Any:
    """Reads parameter files into one stacked population (networks axis first).

    Args:
      paths: one path or several; each holds one network or a stacked population (see `read`).
      layout: "auto", "torch" or "flax" (see the module docstring).
      stacked: whether the files hold stacked populations (None: detect per file).
      layers: chain order of kernel layers, for PyTorch conv -> Linear row order (see `read`).
      with_sources: also return the source path of every network.

    Returns:
      Nested parameters `{"Dense_0": {"kernel": (N, din, dout), ...}}` in Flax layout, the
      networks of the files concatenated in the order given; ready for `stats`, `strength`,
      `distances` and `analysis.analyze_params`; with `with_sources`, `(params, [path per network])`.

    Raises:
      ParamsError: a file cannot be read, or the files' structures differ (the message names
        the first mismatching leaf).

    Example:
      >>> params = load(["seed0.safetensors", "seed1.safetensors"])   # PyTorch state dicts
      >>> stats.compute_statistics(params)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ParamsError("no parameter files given")
    pops = [(str(p), read(p, layout=layout, stacked=stacked, layers=layers)) for p in paths]
    params = param_paths.unflatten(stack(pops))
    if with_sources:
        return params, [name for name, pop in pops for _ in range(next(iter(pop.values())).shape[0])]
    return params
