"""Parameter-file formats: which one a path is, and the raw tree it holds (orbax, msgpack, npz, safetensors)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.io import checkpoints

log = logging.getLogger("jaxweights")

FORMATS = ("orbax", "msgpack", "npz", "safetensors")


class ParamsError(ValueError):
    """A parameter file that cannot be read as asked; the message names the file and leaf."""


def detect_format(path: str | os.PathLike) -> str:
    """The format of a parameter file from its name (a directory is an orbax checkpoint).

    Args:
      path: a file or directory.

    Returns:
      One of `FORMATS`.

    Raises:
      ParamsError: the path does not exist or its suffix is not a known format.
    """
    p = Path(path)
    if not p.exists():
        raise ParamsError(f"{p}: no such file or directory")
    if p.is_dir():
        return "orbax"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".msgpack", ".flax", ".msgpk"):
        return "msgpack"
    raise ParamsError(
        f"{p}: unknown format {suffix or '(no suffix)'!r}; expected an orbax checkpoint directory, "
        ".msgpack/.flax, .npz or .safetensors"
    )


def _read_orbax(p: Path) -> Any:
    """The parameters of an orbax checkpoint (its latest epoch), read by `checkpoints.restore_params`."""
    try:
        return checkpoints.restore_params(p)
    except checkpoints.CheckpointError as e:
        raise ParamsError(str(e)) from None


def _read_raw(p: Path, fmt: str) -> Any:
    """The tree a file holds (nested mappings or a flat dict), before any renaming."""
    try:
        if fmt == "npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if fmt == "safetensors":
            from safetensors.numpy import load_file

            return load_file(str(p))
        if fmt == "msgpack":
            from flax import serialization

            return serialization.msgpack_restore(p.read_bytes())
    except ParamsError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupted or truncated files raise many types
        raise ParamsError(f"{p}: cannot read as {fmt} ({type(e).__name__}: {str(e).strip()[:200]})") from None
    if fmt == "orbax":
        return _read_orbax(p)
    raise ParamsError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}/{i}" if prefix else str(i)))
        return out
    return {prefix: tree} if tree is not None else {}


def _params_subtree(tree: Any) -> tuple[Any, bool]:
    """(the `params` part of a saved state, whether it carried a jaxweights `diverged` flag)."""
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    zoo = False
    while isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
        zoo = zoo or ("diverged" in tree and np.ndim(tree["diverged"]) == 1)
        tree = tree["params"]
    return tree, zoo


def _leaf_name(key: str) -> str:
    return re.split(r"[/.]", key)[-1]
