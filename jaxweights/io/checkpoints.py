"""Orbax checkpoints of a run directory: the per-epoch writer and THE one parameter restore.

`checkpoints/<epoch>/default/` of a run directory holds the stacked train state of that epoch
(`params`, `opt_state`, `step`, `diverged`; networks axis first; epoch 0 is the initialisation).
A checkpoint records the devices it was sharded over; `restore_params` ignores them and reads the
parameters straight into host memory, so a zoo trained on 8 devices is read back on 1 (or on none:
a CPU-only analysis machine).

Orbax does not check what it reads back (a flipped byte in an array's data file restores as a
different number). So each checkpoint carries a digest: a sha256 per array of the state (see
`jaxweights.io.digests`) and one per epoch of metrics rows up to its epoch, in the
`custom_metadata` of orbax's `<epoch>/_CHECKPOINT_METADATA`, which orbax writes inside the
checkpoint's temporary folder: a checkpoint and its digest appear together or not at all. Every
restore checks the arrays it read against the digest and raises `DamagedCheckpoint` when they
differ or cannot be read. Checkpoints written before digests existed (none of the folder's epochs
has one) are restored unchecked.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxweights.io import digests

log = logging.getLogger("jaxweights")

DIGEST_KEY = "jaxweights"  # the key of the digest in a checkpoint's custom_metadata
STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's metadata file of one epoch's folder


class CheckpointError(ValueError):
    """A path that is not a readable orbax checkpoint (the message names the path)."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint that cannot be read or does not match its digest.

    Attributes:
      epoch: the checkpoint's epoch.
      reason: what is wrong, in a few words ("params/Dense_0/kernel does not match its digest").
    """

    def __init__(self, directory: str | os.PathLike, epoch: int, reason: str):
        super().__init__(f"{directory}: checkpoint epoch {epoch} is damaged ({reason})")
        self.epoch, self.reason = epoch, reason


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip()
    text = text.splitlines()[0].split(" See full TensorStore details")[0] if text else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_digest(step_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The digest a checkpoint carries.

    Args:
      step_dir: one epoch's folder (`checkpoints/<epoch>`).

    Returns:
      `{"epoch", "arrays": {leaf name: digest}, "metrics": [sha256 of each epoch's rows]}`, or None
      when the checkpoint has none (or its metadata cannot be read).
    """
    try:
        meta = json.loads((Path(step_dir) / STEP_METADATA).read_text())
        digest = (meta.get("custom_metadata") or {}).get(DIGEST_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(digest, dict) and isinstance(digest.get("arrays"), dict) and isinstance(digest.get("metrics"), list)
    return digest if ok else None


def has_digests(directory: str | os.PathLike) -> bool:
    """Whether a `checkpoints/` folder was written with digests (any of its epochs carries one).

    Args:
      directory: a `checkpoints/` folder.

    Returns:
      False for a folder of checkpoints written before digests existed (or of none).
    """
    d = Path(directory)
    steps = [c for c in d.iterdir() if c.is_dir() and c.name.isdigit()] if d.is_dir() else []
    return any(step_digest(c) is not None for c in steps)


class _HeldLogs(logging.Filter):
    """Holds back the error records of orbax's writer threads (logged through absl) while a save runs.

    A full disk makes each writer thread log its own multi-line traceback; the failed save is
    reported once, as an OSError. Records of a save that fails otherwise, or succeeds, are logged
    after it.
    """

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("absl")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.records.append(record)
            return False
        return True

    def __enter__(self) -> _HeldLogs:
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self)

    def release(self) -> None:
        """Logs the held records."""
        for r in self.records:
            self.logger.handle(r)


def _quiet_closed_loop() -> None:
    """Stops the writes still in flight after a failed save from printing a traceback each.

    They complete in TensorStore's threads after orbax closed its event loop; TensorStore reports
    each `RuntimeError("Event loop is closed")` through `sys.excepthook`, which now drops exactly
    those (any other error is printed as before).
    """
    previous = sys.excepthook
    if getattr(previous, "_jaxweights_quiet", False):
        return

    def hook(kind, value, tb):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)

    hook._jaxweights_quiet = True
    sys.excepthook = hook


def _disk_error(e: BaseException, where: Path) -> OSError | None:
    """An OSError naming `where` for a failed write caused by the disk (full, read-only, ...), else None.

    TensorStore reports such failures as a ValueError ending in "[os_error_code='28']".
    """
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            code = seen.errno
            break
        m = re.search(r"os_error_code='?(\d+)", str(seen))
        if m:
            code = int(m.group(1))
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    return OSError(code, f"cannot write checkpoint {where}: {os.strerror(code)}")


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
        step = p.parent
        if p.name == "default" and step.name.isdigit() and step_digest(step) is not None:
            raise DamagedCheckpoint(step.parent, int(step.name), "its default/_METADATA is missing")
        raise CheckpointError(f"{path}: not an orbax checkpoint directory (no _METADATA in {p})")
    return p


def _no_item_metadata_warning(record: logging.LogRecord) -> bool:
    """False for orbax's warning that an item folder (`<epoch>/default`) has no `_CHECKPOINT_METADATA`:
    it never has one (its step folder holds it), so the warning says nothing when parameters are read."""
    return not str(record.msg).startswith("Metadata file does not exist")


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
      DamagedCheckpoint: a checkpoint of a run directory that cannot be read or does not match
        its digest.
    """
    import orbax.checkpoint as ocp  # heavy import, only when checkpoints are read

    item = item_dir(checkpoint_dir, epoch)
    expected = None
    step = item.parent
    if item.name == "default" and step.name.isdigit() and has_digests(step.parent):
        expected = step_digest(step)
        if expected is None:
            raise DamagedCheckpoint(step.parent, int(step.name), "no digest in its _CHECKPOINT_METADATA")
    ckpt = ocp.PyTreeCheckpointer()
    absl_log = logging.getLogger("absl")
    absl_log.addFilter(_no_item_metadata_warning)
    try:
        tree = ckpt.metadata(item).item_metadata.tree
        whole = not (isinstance(tree, dict) and "params" in tree)
        meta = tree if whole else {"params": tree["params"]}
        is_leaf = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
        target = jax.tree.map(lambda m: np.zeros((), m.dtype), meta, is_leaf=is_leaf)
        args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), meta, is_leaf=is_leaf)
        out = ckpt.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=not whole))
    except Exception as e:  # noqa: BLE001 - any orbax failure means the directory is not a readable checkpoint
        if expected is not None:
            raise DamagedCheckpoint(step.parent, int(step.name), f"unreadable: {_first_line(e)}") from None
        raise CheckpointError(f"{checkpoint_dir}: not a readable orbax checkpoint ({_first_line(e)})") from None
    finally:
        absl_log.removeFilter(_no_item_metadata_warning)
        ckpt.close()
    out = jax.tree.map(np.asarray, out)
    if expected is not None:
        bad = digests.mismatch(expected["arrays"], digests.tree_digests(out), partial=True)
        if bad:
            raise DamagedCheckpoint(step.parent, int(step.name), bad)
    return out if whole else out["params"]


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

    def save(self, epoch: int, state: Any, metrics: list[str] | tuple[str, ...] = ()) -> None:
        """Writes the train state of `epoch` with its digest (synchronously), then releases the writer's memory.

        Args:
          epoch: the epoch (the checkpoint's step).
          state: the train state (device or host arrays).
          metrics: the sha256 of the metrics rows of epochs 1..epoch, recorded in the digest.

        Raises:
          OSError: the disk refused the write (full, read-only, ...); the message names the
            checkpoint's folder and the reason. The earlier checkpoints are left as they were.
        """
        digest = {"epoch": int(epoch), "arrays": digests.tree_digests(state), "metrics": list(metrics)}
        held = _HeldLogs()
        try:
            with held:
                self.manager.save(
                    epoch, args=self._ocp.args.StandardSave(state), force=True, custom_metadata={DIGEST_KEY: digest}
                )
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - a full or read-only disk becomes one OSError naming the folder
            err = _disk_error(e, self.directory / str(epoch))
            if err is None:
                held.release()
                raise
            _quiet_closed_loop()
            raise err from None
        else:
            held.release()
        finally:
            _release_freed_memory()

    def latest_epoch(self) -> int | None:
        """The latest saved epoch, None when there is none."""
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The saved epochs, ascending."""
        return sorted(self.manager.all_steps())

    def verified(self) -> bool:
        """Whether the checkpoints carry digests (False: written before digests existed, restored unchecked)."""
        return has_digests(self.directory)

    def digest(self, epoch: int) -> dict[str, Any] | None:
        """The digest of the checkpoint of `epoch` (see `step_digest`).

        Args:
          epoch: a saved epoch.

        Returns:
          The digest; None when the folder's checkpoints have none (written before digests existed).

        Raises:
          DamagedCheckpoint: the folder's checkpoints have digests, this one has none (or an unreadable one).
        """
        digest = step_digest(self.directory / str(epoch))
        if digest is None and self.verified():
            raise DamagedCheckpoint(self.directory, epoch, "no digest in its _CHECKPOINT_METADATA")
        if digest is not None and digest.get("epoch") != epoch:
            raise DamagedCheckpoint(self.directory, epoch, f"its digest is of epoch {digest.get('epoch')}")
        return digest

    def restore(self, epoch: int, like: Any) -> Any:
        """Restores the whole train state of `epoch` (to resume training) in the layout of `like`, checked.

        Args:
          epoch: a saved epoch.
          like: a pytree of the state's structure whose leaves say where each array goes: a
            `jax.Array` or a `jax.ShapeDtypeStruct` with a sharding (onto that sharding), a
            `numpy.ndarray` (into host memory), or a `ShapeDtypeStruct` without one (onto the
            default device). Shapes and dtypes come from `like`.

        Returns:
          The state, structured like `like`.

        Raises:
          DamagedCheckpoint: the checkpoint cannot be read, has no digest, or its arrays do not
            match it (never for checkpoints written before digests existed).
        """
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def target(x):
            if isinstance(x, np.ndarray):
                return x
            sharding = getattr(x, "sharding", None) or here
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        expected = self.digest(epoch)
        for name in ("default/_METADATA", "default/manifest.ocdbt"):
            if expected is not None and not (self.directory / str(epoch) / name).exists():
                raise DamagedCheckpoint(self.directory, epoch, f"its {name} is missing")
        try:
            state = self.manager.restore(epoch, args=self._ocp.args.StandardRestore(jax.tree.map(target, like)))
        except Exception as e:  # noqa: BLE001 - any orbax failure means the checkpoint is damaged
            raise DamagedCheckpoint(self.directory, epoch, f"unreadable: {_first_line(e)}") from None
        if expected is not None:
            bad = digests.mismatch(expected["arrays"], digests.tree_digests(state))
            if bad:
                raise DamagedCheckpoint(self.directory, epoch, bad)
        return state

    def discard(self, epochs: list[int]) -> None:
        """Deletes the checkpoints of `epochs` (damaged ones, to be written again).

        Args:
          epochs: saved epochs.
        """
        if jax.process_index() == 0:
            for e in epochs:
                shutil.rmtree(self.directory / str(e), ignore_errors=True)
        if jax.process_count() > 1:  # every process sees the deletions before listing the checkpoints again
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"discarded checkpoints {self.directory}")
        self.manager.reload()

    def restore_params(self, epoch: int | None = None) -> Any:
        """The parameters of `epoch` (None: the latest) as host numpy arrays (see `restore_params`)."""
        return restore_params(self.directory, epoch)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.close()
