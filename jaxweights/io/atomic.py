"""Atomic writes: every file goes to a temporary file in the same directory and is renamed into place.

A crash never leaves a half-written file and an earlier complete file survives a failed write.
`.npz` files are written uncompressed and dated 1980-01-01, so equal arrays give byte-identical files.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _umask() -> int:
    """The process umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`.

    Args:
      path: the file to write.
      data: its whole content.
    """
    atomic_write(path, lambda f: f.write(data))


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """Writes `data` to `path` atomically unless the file already holds exactly these bytes.

    A re-run that finds its files intact leaves them untouched (same inode, same mtime).

    Args:
      path: the file to write.
      data: its whole content.

    Returns:
      True when the file was written (it was missing or differed).
    """
    try:
        p = Path(path)
        if p.stat().st_size == len(data) and p.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], mode: str = "wb") -> None:
    """Calls `write(fileobj)` on a temporary file beside `path`, then renames it into place.

    Raises:
      OSError: the write failed (full or read-only disk, ...); the message names `path`, the
        temporary file is removed and an existing `path` is left as it was.

    Args:
      path: the file to write.
      write: called once with the open temporary file.
      mode: the temporary file's open mode ("wb" or "w").
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


def write_json(path: str | os.PathLike, obj: Any, if_changed: bool = False) -> None:
    """Writes `obj` as indented JSON with sorted keys, atomically.

    Args:
      path: the file to write.
      obj: JSON-serialisable data (numpy scalars and arrays allowed; see `json_default`).
      if_changed: leave the file untouched when it already holds these bytes (`write_if_changed`).
    """
    data = (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode()
    write_if_changed(path, data) if if_changed else atomic_write_bytes(path, data)


def json_default(o: Any) -> Any:
    """The `default=` of `json.dumps` for numpy values and tuples.

    Args:
      o: an object `json` cannot serialise.

    Returns:
      Its JSON form (numpy scalars as Python numbers, arrays and tuples as lists).
    """
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: str | os.PathLike, df: pd.DataFrame, if_changed: bool = False) -> bool:
    """Writes `df` as CSV, atomically.

    Args:
      path: the file to write.
      df: the table (written without its index).
      if_changed: leave the file untouched when it already holds these bytes (`write_if_changed`).

    Returns:
      True when the file was written.
    """
    data = df.to_csv(index=False).encode()
    if if_changed:
        return write_if_changed(path, data)
    atomic_write_bytes(path, data)
    return True


def write_npz(f: Any, arrays: dict[str, np.ndarray], keep_order: bool = False) -> None:
    """Writes `arrays` as an uncompressed `.npz` to the binary file object `f` (see `npz_bytes`).

    Members are sorted by name unless `keep_order` (then in the dict's order).

    Args:
      f: a binary file object.
      arrays: name -> array (names such as "Dense_0/kernel"; ".npy" is appended).
      keep_order: keep the dict's order instead of sorting.
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


def finite_json(obj: Any) -> Any:
    """A JSON-ready copy of `obj` with NaN and infinities as None, so the file written is strict JSON.

    Args:
      obj: nested mappings, lists and tuples of Python or numpy scalars.

    Returns:
      The same structure with string keys, numpy integers and booleans as Python values, and
      non-finite floats as None.
    """
    if isinstance(obj, Mapping):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) or hasattr(obj, "dtype"):
        try:
            f = float(obj)
        except (TypeError, ValueError):
            return obj
        if hasattr(obj, "dtype") and obj.dtype.kind in "iub":
            return obj.item()
        return f if math.isfinite(f) else None
    return obj
