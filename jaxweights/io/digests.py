"""Digests of arrays: a sha256 per leaf of a pytree, and per member of an `.npz`, read in blocks.

A leaf's digest is `{"dtype", "shape", "sha256"}`, the sha256 of its C-order bytes. The same
arrays give the same digest whether they are held by devices, restored from a checkpoint or
read from a `params.npz`, so each of these can be checked against what was written.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

BLOCK = 16 * 2**20  # bytes hashed at a time when reading a file


def leaf_name(path: tuple) -> str:
    """The '/'-joined name of a pytree path ("params/Dense_0/kernel"), whatever the containers.

    Args:
      path: a key path of `jax.tree_util.tree_flatten_with_path`.

    Returns:
      The name: dict keys, attribute names and sequence indices joined by "/".
    """
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def host_array(x: Any) -> np.ndarray:
    """A leaf as one host numpy array; an array spread over several hosts is gathered (every process calls).

    Args:
      x: a `jax.Array`, numpy array or scalar.

    Returns:
      The whole array in host memory, C-contiguous.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.ascontiguousarray(np.asarray(x))


def array_digest(a: np.ndarray) -> dict[str, Any]:
    """The digest of one array.

    Args:
      a: a numpy array.

    Returns:
      `{"dtype": str, "shape": list, "sha256": hex}` of its C-order bytes.
    """
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(memoryview(a).cast("B")).hexdigest()}


def tree_digests(tree: Any) -> dict[str, dict[str, Any]]:
    """The digest of every leaf of a pytree, by leaf name, one leaf in host memory at a time.

    Args:
      tree: a pytree of arrays (device arrays are copied to the host leaf by leaf).

    Returns:
      `{leaf name: array_digest}`, sorted by name.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return dict(sorted((leaf_name(p), array_digest(host_array(x))) for p, x in flat))


def mismatch(expected: Mapping[str, Any], got: Mapping[str, Any], partial: bool = False) -> str | None:
    """The first leaf whose digest differs, described; None when all agree.

    Args:
      expected: digests as written (`tree_digests`).
      got: digests of what was read back.
      partial: `got` may hold only some of the leaves (each must be in `expected`).

    Returns:
      e.g. "params/Dense_0/kernel does not match its digest", or None.
    """
    for name in sorted(set(expected) | set(got)):
        if name not in got:
            if not partial:
                return f"{name} is missing"
        elif name not in expected:
            return f"{name} is not in its digest"
        elif dict(got[name]) != dict(expected[name]):
            return f"{name} does not match its digest"
    return None


def sha256_text(text: str) -> str:
    """The sha256 (hex) of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def _member_blocks(zf: zipfile.ZipFile, name: str) -> tuple[np.dtype, tuple[int, ...], Iterator[bytes]]:
    """The dtype, shape and data blocks (C order) of the `.npy` member `name` of an open zip."""
    f = zf.open(name + ".npy")
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"{name}: an object array")
    if fortran:  # never written by jaxweights; read whole to hash its C-order bytes
        a = np.lib.format.read_array(zf.open(name + ".npy"), allow_pickle=False)

        def blocks():
            yield np.ascontiguousarray(a).tobytes()

        return dtype, shape, blocks()

    def blocks():
        left = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with f:
            while left:
                b = f.read(min(BLOCK, left))
                if not b:
                    raise ValueError(f"{name}: {left} bytes short")
                left -= len(b)
                yield b
            if f.read(1):
                raise ValueError(f"{name}: longer than its header says")

    return dtype, shape, blocks()


def npz_digests(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """The digest of every member of one `.npz`, or of the members of several concatenated along axis 0.

    Members are read in blocks (never a whole array in memory) through `zipfile`, which also
    checks each member's CRC-32. `npz_digests([a, b])` equals the digests of a file holding
    each member of `a` concatenated with the same member of `b` (how chunks are combined).

    Args:
      paths: `.npz` files with the same members, in order.

    Returns:
      `{member name without ".npy": array_digest}`, in the first file's member order.

    Raises:
      ValueError: a file is not a readable `.npz` (zip error, bad header, short member, members
        differ); `OSError`: a file cannot be read.
    """
    zfs = []
    try:
        for p in paths:
            try:
                zfs.append(zipfile.ZipFile(p))
            except zipfile.BadZipFile as e:
                raise ValueError(f"{p}: not a readable .npz ({e})") from None
        names = [n[: -len(".npy")] for n in zfs[0].namelist() if n.endswith(".npy")]
        out = {}
        for name in names:
            h, rows, first = hashlib.sha256(), 0, None
            for p, zf in zip(paths, zfs):
                try:
                    dtype, shape, blocks = _member_blocks(zf, name)
                    for b in blocks:
                        h.update(b)
                except (KeyError, zipfile.BadZipFile, ValueError, EOFError) as e:
                    raise ValueError(f"{p}: member {name} is not readable ({e})") from None
                if first is None:
                    first = (dtype, tuple(shape[1:]))
                elif first != (dtype, tuple(shape[1:])) or not shape:
                    raise ValueError(f"{p}: member {name} does not continue the first file's")
                rows += shape[0] if shape else 1
            shape = [rows, *first[1]] if len(paths) > 1 else list(shape)
            out[name] = {"dtype": first[0].str, "shape": shape, "sha256": h.hexdigest()}
        return out
    finally:
        for zf in zfs:
            zf.close()
