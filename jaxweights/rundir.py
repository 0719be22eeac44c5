"""The run directory: atomic writes, the metrics table, parameters and orbax checkpoints.

Layout of a run directory (the contract users rely on):

    config.json         resolved config
    metrics.csv         one row per network per epoch
    params.npz          final parameters, keys like "Dense_0/kernel", networks axis first
    hparams.csv         one row per network: network, seed and its dynamic hyperparameters
    checkpoints/<epoch>/  orbax checkpoints of the stacked train state (epoch 0 = initialisation)

A zoo with static groups writes one such directory per group under `groups/<name>/` and a
combined `metrics.csv` (with a `group` column) at the top.

Every file is written to a temporary file in the same directory and renamed into place, so a
crash never leaves a half-written file and an earlier complete file survives a failed write.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flax import traverse_util


def _umask() -> int:
    """The process umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], mode: str = "wb") -> None:
    """Calls `write(fileobj)` on a temporary file beside `path`, then renames it into place.

    Raises:
      OSError: the write failed (full or read-only disk, ...); the message names `path`, the
        temporary file is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
        os.replace(tmp, path)
        # A writer killed mid-write (SIGKILL, power loss) leaves its temporary file: sweep those
        # older than ours, which no live writer can still be using.
        started = os.stat(path).st_mtime
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            try:
                if stale.stat().st_mtime < started - 1.0:
                    stale.unlink()
            except OSError:
                pass
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # already renamed, or the disk refuses even this
                pass
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    atomic_write_bytes(path, df.to_csv(index=False).encode())


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """Nested parameter dict → {"Dense_0/kernel": array} (numpy)."""
    if not any(isinstance(v, dict) for v in params.values()):  # already flat
        return {k: np.asarray(v) for k, v in params.items()}
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of `flatten_params`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def write_params(path: str | os.PathLike, params: Any, order: Sequence[str] | None = None) -> None:
    """Writes stacked parameters to an `.npz` keyed by parameter path (see `npz_bytes`).

    Members are stored in `order` (the model's execution order, `models.param_order`; paths
    not in it follow, sorted) so that `load_params` gives them back in that order; without
    `order`, sorted by name. Streamed into the file one array at a time.
    """
    flat = flatten_params(params)
    if order is not None:
        flat = {**{k: flat[k] for k in order if k in flat}, **{k: flat[k] for k in sorted(flat)}}
    atomic_write(path, lambda f: write_npz(f, flat, keep_order=order is not None))


def write_npz(f: Any, arrays: dict[str, np.ndarray], keep_order: bool = False) -> None:
    """Writes `arrays` as an uncompressed `.npz` to the binary file object `f` (see `npz_bytes`).

    Members are sorted by name unless `keep_order` (then in the dict's order).
    """
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in arrays if keep_order else sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as g:
                np.lib.format.write_array(g, np.asarray(arrays[name]), allow_pickle=False)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz` (readable by `np.load`) that depends only on `arrays`.

    `np.savez` stamps every member with the current time, so equal arrays saved twice give
    different files; here members are sorted by name and dated 1980-01-01, so equal results
    give byte-identical files (runs compare with `cmp`).

    Args:
      arrays: name -> array (names such as "Dense_0/kernel").

    Returns:
      The file's bytes.
    """
    buf = io.BytesIO()
    write_npz(buf, arrays)
    return buf.getvalue()


def execution_order(run_dir: str | os.PathLike) -> list[str] | None:
    """Parameter paths in execution order for a run directory's built-in model, from its config.json.

    Rebuilds the model (`models.make_model` on the config's dataset shape) and reads
    `models.param_order`; None when there is no config.json or the model cannot be rebuilt
    (an unknown dataset, a model passed in Python).
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        from jaxweights import data, models

        cfg = read_config(path)
        spec = data.SPECS[cfg["dataset"]]
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items() if k not in ("name", "init")}
        model = models.make_model(
            cfg["model"]["name"],
            num_classes=spec.num_classes,
            image_shape=spec.image_shape,
            init=cfg["model"].get("init", "fan_in"),
            **kw,
        )
        return models.param_order(model, spec.image_shape)
    except Exception:  # noqa: BLE001 - any failure means "order unknown", never a crash
        return None


def load_params(path: str | os.PathLike, order: Sequence[str] | None = None) -> dict[str, Any]:
    """Reads a `params.npz` back into a nested dict with the networks axis first, in execution order.

    Order: `order` when given (listed paths first); else, for a file stored in sorted order next
    to a `config.json` of a built-in model (runs written before the order was stored), the
    model's execution order (`execution_order`); else the file's member order.
    """
    with np.load(path) as z:
        if order is None and list(z.files) == sorted(z.files):
            order = execution_order(Path(path).parent)
        names = [k for k in (order or ()) if k in z.files] + list(z.files)
        return unflatten_params({k: z[k] for k in dict.fromkeys(names)})


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def config_differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) config dicts."""
    out = []
    for k in sorted(set(saved) | set(new)):
        a, b = saved.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif _norm(a) != _norm(b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_json_default))


def _release_freed_memory() -> None:
    """Hands memory freed by the checkpoint writer back to the OS (glibc only; elsewhere nothing).

    Writing a checkpoint allocates about one copy of the state in many small buffers, in the
    writer threads' malloc arenas; freed, they stay in the process, where the device's large
    allocations on a CPU cannot reuse them, so a zoo's peak memory grew by a state per save.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Checkpoints:
    """Per-epoch orbax checkpoints of the stacked train state in `<rundir>/checkpoints`."""

    def __init__(self, rundir: str | os.PathLike, keep: int = 0):
        import orbax.checkpoint as ocp  # heavy import, only when checkpoints are used

        self._ocp = ocp
        # cleanup_tmp_directories: a process killed while saving leaves "<epoch>.orbax-checkpoint-tmp-*";
        # it is never restored from (latest_step skips it) and is removed when the run resumes.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(Path(rundir).absolute() / "checkpoints", options=options)

    def save(self, epoch: int, state: Any) -> None:
        self.manager.save(epoch, args=self._ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        _release_freed_memory()

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, epoch: int, like: Any) -> Any:
        import jax

        # Checkpoints of a sharded zoo record their devices; restoring on other devices needs
        # target shardings: `like`'s own, else the default device.
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding if isinstance(x, jax.Array) else here),
            like,
        )
        return self.manager.restore(epoch, args=self._ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.close()
