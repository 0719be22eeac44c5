"""Orbax checkpoints of a run directory: the per-epoch writer and THE one parameter restore.

`checkpoints/<epoch>/default/` of a run directory holds the stacked train state of that epoch
(`params`, `opt_state`, `step`, `diverged`; networks axis first; epoch 0 is the initialisation).
A checkpoint records the devices it was sharded over; `restore_params` ignores them and reads the
parameters straight into host memory, so a zoo trained on 8 devices is read back on 1 (or on none:
a CPU-only analysis machine).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger("jaxweights")


class CheckpointError(ValueError):
    """A path that is not a readable orbax checkpoint (the message names the path)."""


def _release_freed_memory() -> None:
    """Hands memory freed by the checkpoint writer back to the OS (glibc only; elsewhere nothing).

    Writing a checkpoint allocates about one copy of the state in many small buffers, in the
    writer threads' malloc arenas; freed, they stay in the process, where the device's large
    allocations on a CPU cannot reuse them, so a zoo's peak memory grew by a state per save.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def item_dir(path: str | os.PathLike, epoch: int | None = None) -> Path:
    """The directory orbax reads one checkpoint from.

    Args:
      path: a run directory (holding `checkpoints/`), a `checkpoints/` folder of numbered epochs,
        one epoch's folder (holding `default/`) or the item folder itself (holding `_METADATA`).
      epoch: the epoch to read from a run directory or `checkpoints/` folder; None for the latest.

    Returns:
      The item directory (absolute).

    Raises:
      CheckpointError: no such epoch, or no checkpoint under `path`.
    """
    p = Path(path).absolute()
    if (p / "checkpoints").is_dir() and not (p / "_CHECKPOINT_METADATA").exists():
        p = p / "checkpoints"  # a run directory
    steps = {int(c.name): c for c in p.iterdir() if c.is_dir() and c.name.isdigit()} if p.is_dir() else {}
    if steps:
        if epoch is None:
            epoch = max(steps)
            log.info("%s: reading its latest checkpoint, %d", p, epoch)
        if epoch not in steps:
            raise CheckpointError(f"{p}: no checkpoint of epoch {epoch} (have {sorted(steps)})")
        p = steps[epoch]
    if (p / "default").is_dir():
        p = p / "default"
    if not (p / "_METADATA").exists():
        raise CheckpointError(f"{path}: not an orbax checkpoint directory (no _METADATA in {p})")
    return p


def restore_params(checkpoint_dir: str | os.PathLike, epoch: int | None = None) -> Any:
    """Reads the parameters of one checkpoint into host memory, whatever devices wrote it.

    The restore target is built from the checkpoint's own metadata (shapes and dtypes), and only
    the `params` subtree is read (never the optimizer's moments), as numpy arrays: no device
    sharding is involved, so a checkpoint sharded over 8 devices restores on 1.

    Args:
      checkpoint_dir: a run directory, its `checkpoints/` folder, one epoch's folder or an item
        folder (see `item_dir`). A checkpoint without a `params` entry (e.g. parameters saved
        alone with `orbax.checkpoint.StandardCheckpointer`) is read whole.
      epoch: the epoch to read; None for the latest.

    Returns:
      The parameter pytree (nested dicts, networks axis first) of `numpy.ndarray` leaves.

    Raises:
      CheckpointError: `checkpoint_dir` holds no readable checkpoint (of that epoch).
    """
    import orbax.checkpoint as ocp  # heavy import, only when checkpoints are read

    item = item_dir(checkpoint_dir, epoch)
    ckpt = ocp.PyTreeCheckpointer()
    try:
        tree = ckpt.metadata(item).item_metadata.tree
        whole = not (isinstance(tree, dict) and "params" in tree)
        meta = tree if whole else {"params": tree["params"]}
        is_leaf = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
        target = jax.tree.map(lambda m: np.zeros((), m.dtype), meta, is_leaf=is_leaf)
        args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), meta, is_leaf=is_leaf)
        out = ckpt.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=not whole))
    except Exception as e:  # noqa: BLE001 - any orbax failure means the directory is not a readable checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{checkpoint_dir}: not a readable orbax checkpoint ({type(e).__name__}: {first})"
        ) from None
    finally:
        ckpt.close()
    out = out if whole else out["params"]
    return jax.tree.map(np.asarray, out)


class Checkpoints:
    """Per-epoch orbax checkpoints of the stacked train state in `<rundir>/checkpoints`.

    Args:
      rundir: the run directory (checkpoints go to its `checkpoints/` folder).
      keep: how many of the latest checkpoints to keep; 0 keeps all.
    """

    def __init__(self, rundir: str | os.PathLike, keep: int = 0):
        import orbax.checkpoint as ocp  # heavy import, only when checkpoints are used

        self._ocp = ocp
        self.directory = Path(rundir).absolute() / "checkpoints"
        # cleanup_tmp_directories: a process killed while saving leaves "<epoch>.orbax-checkpoint-tmp-*";
        # it is never restored from (latest_step skips it) and is removed when the run resumes.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, state: Any) -> None:
        """Writes the train state of `epoch` (synchronously) and releases the writer's memory."""
        self.manager.save(epoch, args=self._ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        _release_freed_memory()

    def latest_epoch(self) -> int | None:
        """The latest saved epoch, None when there is none."""
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The saved epochs, ascending."""
        return sorted(self.manager.all_steps())

    def restore(self, epoch: int, like: Any) -> Any:
        """Restores the whole train state of `epoch` (to resume training) in the layout of `like`.

        Args:
          epoch: a saved epoch.
          like: a pytree of the state's structure whose leaves say where each array goes: a
            `jax.Array` or a `jax.ShapeDtypeStruct` with a sharding (onto that sharding), a
            `numpy.ndarray` (into host memory), or a `ShapeDtypeStruct` without one (onto the
            default device). Shapes and dtypes come from `like`.

        Returns:
          The state, structured like `like`.
        """
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def target(x):
            if isinstance(x, np.ndarray):
                return x
            sharding = getattr(x, "sharding", None) or here
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        return self.manager.restore(epoch, args=self._ocp.args.StandardRestore(jax.tree.map(target, like)))

    def restore_params(self, epoch: int | None = None) -> Any:
        """The parameters of `epoch` (None: the latest) as host numpy arrays (see `restore_params`)."""
        return restore_params(self.directory, epoch)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.close()
