"""Per-epoch parameter snapshots of a run directory: where they are and how they are read.

A run of `jaxweights train` keeps orbax checkpoints in `checkpoints/<epoch>/` (epoch 0 is the
initialisation; `keep_checkpoints=0` keeps them all); a zoo trained in chunks keeps them per chunk
in `chunks/<KK>/checkpoints/`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.dynamics.common import DynamicsError
from jaxweights.io.checkpoints import restore_params
from jaxweights.models import paths


def snapshot_dirs(run_dir: str | Path) -> list[Path]:
    """The folders holding a run's `checkpoints/`: the run itself, or its chunks in network order.

    A zoo trained in chunks (`chunks/plan.json`) keeps each chunk's checkpoints in
    `chunks/<KK>/checkpoints/`; its networks are the chunks' networks one after another.

    Args:
      run_dir: a `jaxweights train` run directory.

    Returns:
      `[run_dir]`, or the chunk folders in order.

    Raises:
      DynamicsError: no checkpoints anywhere.
    """
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").is_dir():
        return [run_dir]
    if (run_dir / "chunks" / "plan.json").exists():
        chunks = sorted(p for p in (run_dir / "chunks").iterdir() if p.name.isdigit())
        missing = [str(p) for p in chunks if not (p / "checkpoints").is_dir()]
        if chunks and not missing:
            return chunks
        raise DynamicsError(f"{run_dir / 'chunks'}: chunk(s) without checkpoints/: {', '.join(missing) or 'none'}")
    raise DynamicsError(f"{run_dir}: no checkpoints/ folder (is this a `jaxweights train` run directory?)")


def checkpoint_epochs(run_dir: str | Path) -> list[int]:
    """The epochs of the checkpoints in `run_dir/checkpoints/` (its numbered folders), sorted.

    Args:
      run_dir: a run directory, or one chunk of a zoo trained in chunks.

    Returns:
      The epochs; empty if there is none.
    """
    ckpts = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit()) if ckpts.is_dir() else []


def load_dir_snapshots(run_dir: str | Path) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """The epochs and flat parameters of every checkpoint of one folder holding `checkpoints/`.

    Args:
      run_dir: a run directory, or one chunk of a zoo trained in chunks.

    Returns:
      `(epochs, params)` as `load_snapshots`.

    Raises:
      DynamicsError: the folder holds no checkpoints.
    """
    run_dir = Path(run_dir)
    epochs = checkpoint_epochs(run_dir)
    if not epochs:
        raise DynamicsError(f"{run_dir / 'checkpoints'}: no checkpoints")
    # parameters only, as host numpy arrays, onto whatever devices are here (one restore for the package)
    return epochs, [paths.flatten(restore_params(run_dir, e)) for e in epochs]


def check_same_epochs(chunk_dir: Path, epochs: list[int], first: list[int]) -> None:
    """Checks that a chunk of a zoo trained in chunks kept the first chunk's epochs.

    Args:
      chunk_dir: the chunk's run directory (named in the error).
      epochs: the chunk's checkpoint epochs.
      first: the first chunk's checkpoint epochs.

    Raises:
      DynamicsError: naming the chunk and both epoch lists.
    """
    if epochs != first:
        raise DynamicsError(f"{chunk_dir / 'checkpoints'}: epochs {epochs} differ from the first chunk's {first}")


def load_snapshots(run_dir: str | Path) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Reads the parameters of every per-epoch checkpoint of a run directory.

    Args:
      run_dir: a `jaxweights train` run directory of one group (with `checkpoints/`, or with
        `chunks/<KK>/checkpoints/` for a zoo trained in chunks; their networks are concatenated).

    Returns:
      `(epochs, params)`: the sorted checkpoint epochs and, for each, the flat parameters
      `{"Dense_0/kernel": (N, ...)}` with the networks axis first.

    Raises:
      DynamicsError: the directory holds no checkpoints, or chunks kept different epochs.
    """
    dirs = snapshot_dirs(run_dir)
    parts = [load_dir_snapshots(d) for d in dirs]
    epochs = parts[0][0]
    for d, (e, _) in zip(dirs, parts):
        check_same_epochs(d, e, epochs)
    if len(parts) == 1:
        return parts[0]
    return epochs, [
        {k: np.concatenate([p[1][i][k] for p in parts]) for k in parts[0][1][i]} for i in range(len(epochs))
    ]


def stack_epochs(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks per-epoch snapshots on a new leading epochs axis.

    Args:
      snapshots: `[{path: (N, ...)}] * E`.

    Returns:
      `{path: (E, N, ...)}`.
    """
    return {k: np.stack([np.asarray(s[k]) for s in snapshots]) for k in snapshots[0]}


def kernel_layers(flat: Mapping[str, Any]) -> list[str]:
    """Layers with a `kernel` leaf, in the order of `flat` (never sorted).

    Args:
      flat: flat parameters; a run's snapshots come in the model's execution order (`models.paths.layer_order`).

    Returns:
      The layer names.
    """
    return list(dict.fromkeys(paths.layer_of(p) for p, x in flat.items() if paths.is_kernel(p, x)))
