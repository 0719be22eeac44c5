"""Readers of the dataset files: Keras-style npz, IDX (gzipped or not), CIFAR-10 python batches
and scikit-learn's digits (tensorflow-datasets: `tfds_source`). Every read error becomes a `DataError` naming the file."""

from __future__ import annotations

import codecs
import gzip
import io
import math
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxweights.data.specs import DataError, DatasetSpec
from jaxweights.data.subsets import SUBSET_SEED, stratified_indices

_KEYS = ("x_train", "y_train", "x_test", "y_test")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, pickle.UnpicklingError)
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte images (3-D) / labels (1-D)
_FORMATS = {k: f"{k}.npz or IDX files" for k in ("mnist", "fashion_mnist")} | {
    "cifar10": "cifar10.npz or cifar-10-batches-py/"
}
_DIGITS_TRAIN = 1500  # digits split: first 1500 of load_digits() train, remaining 297 test
_ROWS_PER_READ = 4096  # images read at a time while picking a subset out of an npz


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping `.gz`; any read error becomes a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); truncated or corrupted file?") from e


def _read_idx(path: Path, ndim: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Parse an unsigned-byte IDX file (images if ndim == 3, labels if ndim == 1)."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{_IDX_MAGIC[ndim]:08x}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(dims):  # math.prod: np.prod would wrap around in int64
        raise DataError(
            f"{path}: header dims {dims} need {math.prod(dims)} bytes of data, file has {len(data) - header}"
        )
    if ndim == 3 and dims[1:] != image_hw:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {image_hw[0]}x{image_hw[1]}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _npy_header(f, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open `.npy` member's header; refuses what the loaders cannot stream."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise DataError(f"{path}: {key} has unsupported .npy version {version}")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran or dtype.hasobject or not shape:
        raise DataError(f"{path}: {key} must be a C-ordered numeric array with a batch axis")
    return shape, dtype


def _npy_member(
    zf: zipfile.ZipFile, key: str, path: Path, limit: int | None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Read the first `limit` rows of `key` from an npz, or (`rows` given) those rows in that order.

    The whole member is always read, in blocks of `_ROWS_PER_READ` rows of which only the kept ones
    stay in memory, to its end: there `zipfile` checks the member's CRC-32, so a damaged member is
    refused whatever slice of it is used.

    Returns:
      The rows and the member's full row count.

    Raises:
      DataError: naming the file and the member: damaged (bad CRC-32, bad compressed data),
        truncated, longer than its header says, or not a plain numeric array.
    """
    try:
        with zf.open(key + ".npy") as f:
            shape, dtype = _npy_header(f, path, key)
            row_bytes = math.prod(shape[1:]) * dtype.itemsize  # math.prod: no int64 wrap-around
            if shape[0] * row_bytes > zf.getinfo(key + ".npy").file_size:  # before allocating for it
                raise DataError(
                    f"{path}: {key} is truncated (header shape {shape} needs more bytes than the member holds)"
                )
            if rows is None:
                rows = np.arange(shape[0] if limit is None else min(limit, shape[0]))
            out = np.empty((len(rows), *shape[1:]), dtype)
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            for start in range(0, shape[0], _ROWS_PER_READ):
                k = min(_ROWS_PER_READ, shape[0] - start)
                buf = f.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise DataError(
                        f"{path}: {key} is truncated (row {start + len(buf) // max(row_bytes, 1)} of {shape[0]})"
                    )
                lo, hi = np.searchsorted(sorted_rows, [start, start + k])
                if hi > lo:
                    block = np.frombuffer(buf, dtype).reshape((k, *shape[1:]))
                    out[order[lo:hi]] = block[sorted_rows[lo:hi] - start]
            if f.read(1):  # also reaches EOF: checks the CRC
                raise DataError(f"{path}: {key} has bytes beyond its header shape {shape}")
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"{path}: corrupted npz member {key} ({type(e).__name__}: {e})") from e
    return out, shape[0]


def _load_npz(path: Path, limits: tuple[int | None, int | None]) -> dict:
    """Read a Keras-style npz; a split with a limit below its size keeps the `stratified_indices`
    draw of its labels, read without holding the whole split's images."""
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from e
    with zf:
        present = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in _KEYS if k not in present]
        if missing:
            raise DataError(f"{path}: missing keys {missing} (has {sorted(present)})")
        parts = {}
        for split, limit in zip(("train", "test"), limits):
            y, ny = _npy_member(zf, f"y_{split}", path, None)
            rows = None
            if limit is not None and limit < ny and (y.ndim == 1 or y.shape[1:] == (1,)):
                rows = stratified_indices(y, limit, seed=SUBSET_SEED)
                y = y[rows]
            x, nx = _npy_member(zf, f"x_{split}", path, limit, rows)
            if nx != ny:
                raise DataError(f"{path}: x_{split} has {nx} images but y_{split} has {ny} labels")
            parts[f"x_{split}"], parts[f"y_{split}"] = (x, f"{path}[x_{split}]"), (y, f"{path}[y_{split}]")
    return parts


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as used by protocol-2 pickles of bytes, restricted to latin-1."""
    if encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"forbidden codec {encoding!r}")
    return codecs.encode(text, "latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches that only allows what numpy arrays need."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): bytes,
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return self._ALLOWED[module, name]


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: images (n, 32, 32, 3) uint8, labels (n,)."""
    try:
        # From memory, not the file: a damaged length field then reads as truncated data instead
        # of asking the file for (and allocating) up to 2**64 bytes.
        d = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except _READ_ERRORS + (AttributeError, TypeError, IndexError, KeyError, MemoryError, RecursionError) as e:
        raise DataError(f"{path}: corrupted pickle ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: expected a dict with b'data' and b'labels'")
    x, y = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(
            f"{path}: b'data' must be uint8 (n, 3072), got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}"
        )
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: b'labels' must be {len(x)} integers, got {y.dtype} {y.shape}")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y  # rows are CHW -> NHWC


def _load_batches(d: Path, limits: tuple[int | None, int | None]) -> dict:
    """Read the CIFAR-10 python batches, all of them (a `max_train` draw needs every label)."""
    files = [d / f"data_batch_{i}" for i in range(1, 6)] + [d / "test_batch"]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: missing file (CIFAR-10 python batches in {d})")
    xs, ys = [], []
    for f in files[:5]:
        x, y = _read_batch(f)
        xs.append(x)
        ys.append(y)
    x_test, y_test = _read_batch(files[5])
    train = f"{d}/data_batch_*"
    return {
        "x_train": (np.concatenate(xs), train),
        "y_train": (np.concatenate(ys), train),
        "x_test": (x_test, str(files[5])),
        "y_test": (y_test, str(files[5])),
    }


def _search_dir(name: str, s: DatasetSpec, root: Path, limits) -> tuple[dict, str] | None:
    """Look for `name` in `root` (and its `NAME/` subfolders); None if no format is there."""
    subs = dict.fromkeys([root / name, root / name.replace("_", "-"), root])
    for d in (d for d in subs if d.is_dir()):
        npz = d / f"{name}.npz"
        if npz.is_file():
            return _load_npz(npz, limits), f"{npz} (Keras npz)"
        if name in ("mnist", "fashion_mnist"):
            paths = {k: next((p for p in (d / (b + ".gz"), d / b) if p.is_file()), None) for k, b in _IDX_FILES.items()}
            if any(paths.values()):
                for k, p in paths.items():
                    if p is None:
                        raise DataError(f"{d / _IDX_FILES[k]}[.gz]: missing file (other {name} IDX files are in {d})")
                return {
                    k: (_read_idx(p, 3 if k[0] == "x" else 1, s.image_shape[:2]), str(p)) for k, p in paths.items()
                }, f"{d} (IDX files)"
        if name == "cifar10":
            for b in (d / "cifar-10-batches-py", d):
                if (b / "data_batch_1").is_file():
                    return _load_batches(b, limits), f"{b} (CIFAR-10 python batches)"
    return None


def _from_sklearn() -> dict:
    """Read scikit-learn's digits, scaled from 0..16 to 0..255; first 1500 train, rest test."""
    from sklearn.datasets import load_digits  # lazy: slow import

    d = load_digits()
    x, y, src = np.rint(d.images * (255 / 16)).astype(np.uint8)[..., None], d.target, "sklearn load_digits"
    n = _DIGITS_TRAIN
    return {"x_train": (x[:n], src), "y_train": (y[:n], src), "x_test": (x[n:], src), "y_test": (y[n:], src)}
