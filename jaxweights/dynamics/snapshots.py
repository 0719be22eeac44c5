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

from jaxweights import rundir, stats
from jaxweights.dynamics.common import DynamicsError


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


def _restore_all_params(run_dir: Path) -> tuple[list[int], list[Any]]:
    """Every checkpoint's parameters (host arrays, nested) of one folder with `checkpoints/`, oldest first.

    TODO(layout): the one place that reads checkpoints for the dynamics; becomes a loop over
    `jaxweights.io.checkpoints.restore_params(checkpoint_dir, epoch)` when that lands.
    """
    import orbax.checkpoint as ocp  # heavy import, only when checkpoints are read

    ckpt = rundir.Checkpoints(run_dir)
    try:
        epochs = ckpt.epochs()
        params = [ckpt.manager.restore(e, args=ocp.args.StandardRestore())["params"] for e in epochs]
    finally:
        ckpt.close()
    return epochs, params


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
    epochs, params = _restore_all_params(run_dir)
    if not epochs:
        raise DynamicsError(f"{run_dir / 'checkpoints'}: no checkpoints")
    return epochs, [rundir.flatten_params(p) for p in params]


def check_same_epochs(chunk_dir: Path, epochs: list[int], first: list[int]) -> None:
    """Every chunk of a zoo trained in chunks must have kept the first chunk's epochs.

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
      flat: flat parameters; a run's snapshots come in the model's execution order (`stats.layer_order`).

    Returns:
      The layer names.
    """
    return list(dict.fromkeys(stats.layer_of(p) for p, x in flat.items() if stats.is_kernel(p, x)))
