"""The run directory: its parameters, config and metrics (the contract users rely on).

Layout of a run directory:

    config.json         resolved config
    metrics.csv         one row per network per epoch
    params.npz          final parameters, keys like "Dense_0/kernel", networks axis first
    hparams.csv         one row per network: network, seed and its dynamic hyperparameters
    checkpoints/<epoch>/  orbax checkpoints of the stacked train state (epoch 0 = initialisation;
                        see `jaxweights.io.checkpoints`)

A zoo with static groups writes one such directory per group under `groups/<name>/` and a
combined `metrics.csv` (with a `group` column) at the top. Every file is written atomically
(`jaxweights.io.atomic`).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxweights.io import atomic
from jaxweights.models import paths

# What reading a damaged or truncated `.npz` raises (numpy, zipfile, zlib), a missing member included.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class RunDirError(ValueError):
    """A run-directory file that cannot be read: damaged, truncated, or not what it should be; names the file."""


def unreadable(path: str | os.PathLike, error: BaseException, hint: str = "") -> RunDirError:
    """The one-line error for a run-directory file that cannot be read.

    Args:
      path: the file.
      error: what reading it raised.
      hint: what the user can do, appended to the message.

    Returns:
      The `RunDirError` to raise (naming `path` and the error).
    """
    what = (str(error).strip().splitlines() or [""])[0][:200]
    return RunDirError(
        f"{path}: cannot read ({type(error).__name__}: {what}); damaged or truncated?{hint and ' ' + hint}"
    )


def write_params(path: str | os.PathLike, params: Any, order: Sequence[str] | None = None) -> None:
    """Writes stacked parameters to an `.npz` keyed by parameter path (see `npz_bytes`).

    Members are stored in `order` (the model's execution order, `models.param_order`; paths
    not in it follow, sorted) so that `load_params` gives them back in that order; without
    `order`, sorted by name. Streamed into the file one array at a time.

    Args:
      path: the `.npz` to write.
      params: stacked parameters (nested or flat), networks axis first.
      order: parameter paths in the order to store them.
    """
    flat = {k: np.asarray(v) for k, v in paths.flatten(params).items()}
    if order is not None:
        flat = {**{k: flat[k] for k in order if k in flat}, **{k: flat[k] for k in sorted(flat)}}
    atomic.atomic_write(path, lambda f: atomic.write_npz(f, flat, keep_order=order is not None))


def load_params(path: str | os.PathLike, order: Sequence[str] | None = None) -> dict[str, Any]:
    """Reads a `params.npz` back into a nested dict with the networks axis first, in execution order.

    Order: `order` when given (listed paths first); else, for a file stored in sorted order next
    to a `config.json` of a built-in model (runs written before the order was stored), the
    model's execution order (`models.paths.execution_order`); else the file's member order.

    Args:
      path: a `params.npz`.
      order: parameter paths to put first.

    Returns:
      Nested dict of numpy arrays, networks axis first.

    Raises:
      RunDirError: the file is damaged, truncated or not an `.npz` (one line naming it).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if order is None and list(z.files) == sorted(z.files):
                order = paths.execution_order(Path(path).parent)
            names = [k for k in (order or ()) if k in z.files] + list(z.files)
            flat = {k: z[k] for k in dict.fromkeys(names)}  # reads every member: its CRC-32 is checked
    except NPZ_ERRORS as e:
        raise unreadable(path, e) from None
    return paths.unflatten(flat)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a run directory's `config.json`.

    Args:
      path: a `config.json` (or any JSON file).

    Returns:
      The parsed dict.

    Raises:
      RunDirError: the file is not JSON, or holds something other than a JSON object (one line naming it).
    """
    try:
        cfg = json.loads(Path(path).read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"{path}: not valid JSON ({str(e).splitlines()[0][:200]}); damaged or truncated?") from None
    if not isinstance(cfg, dict):
        raise RunDirError(f"{path}: holds a JSON {type(cfg).__name__}, not an object; damaged, or not from jaxweights?")
    return cfg


def config_differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) config dicts.

    Args:
      saved: the config a run directory holds.
      new: the config asked for.
      prefix: dotted prefix of the keys (for the recursion).

    Returns:
      "key: saved -> new" per differing key, sorted.
    """
    out = []
    for k in sorted(set(saved) | set(new)):
        a, b = saved.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif _norm(a) != _norm(b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=atomic.json_default))


def last_epoch(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of each network's last epoch in a metrics table.

    Args:
      metrics: a `metrics.csv` table (one row per network per epoch; columns `network` and `epoch`).

    Returns:
      The rows whose `epoch` is the largest of their network's, in the table's order and with its index.
    """
    return metrics[metrics["epoch"] == metrics.groupby("network")["epoch"].transform("max")]
