"""Tests for jaxweights.data: real files (small slices), synthetic files in every format, bad inputs."""

import gzip
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxweights import data
from jaxweights.data import DataError, datasets, readers, tfds_source

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
CIFAR_TRAIN_MEANS = [125.31, 122.95, 113.87]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(scope="module")
def real_dir(data_dir) -> Path:
    return data_dir


@pytest.fixture(scope="module")
def cifar_raw(real_dir):
    """First 5000 train / 1000 test images and labels of cifar10.npz, read with numpy directly."""
    path = real_dir / "cifar10.npz"
    if not path.is_file():
        pytest.fail(f"{path} not found (set JAXWEIGHTS_TEST_DATA)")
    with np.load(path) as z:
        return {k: z[k][:5000] for k in ("x_train", "y_train")} | {k: z[k][:1000] for k in ("x_test", "y_test")}


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No env var, an empty system folder; returns an empty data dir."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DIR", tmp_path / "system")
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def write_idx(path: Path, arr, magic=None, dims=None) -> Path:
    """Write an unsigned-byte IDX file (gzipped if the name ends in .gz)."""
    arr = np.asarray(arr, np.uint8)
    magic = 0x800 + arr.ndim if magic is None else magic
    dims = arr.shape if dims is None else dims
    payload = struct.pack(f">I{len(dims)}I", magic, *dims) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, 1) if path.name.endswith(".gz") else payload)
    return path


def write_idx_set(d: Path, arrays: dict, gz: bool = True) -> dict:
    """Write the four official IDX files for `arrays` into `d`; returns key -> path."""
    return {k: write_idx(d / (IDX_NAMES[k] + (".gz" if gz else "")), arrays[k]) for k in IDX_NAMES}


def small_arrays(seed=0, hw=(28, 28), n_train=50, n_test=20):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_cifar_batches(d: Path, x_train, y_train, x_test, y_test, n_batches=5) -> Path:
    """Write CIFAR-10 python batches with the official layout (CHW rows, bytes keys, protocol 2)."""
    d.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(n_batches)] + ["test_batch"]
    splits = list(zip(np.array_split(x_train, n_batches), np.array_split(y_train, n_batches))) + [(x_test, y_test)]
    for name, (x, y) in zip(names, splits):
        label = b"" if name == "test_batch" else name.encode()  # b"" pickles as __builtin__.bytes
        batch = {
            b"batch_label": label,
            b"labels": [int(v) for v in y],
            b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(x))],
        }
        raw = pickle.dumps(batch, protocol=2)
        # The official files were written by Python 2 numpy, whose arrays name numpy.core.
        raw = raw.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")
        (d / name).write_bytes(raw)
    return d


def assert_same(ds, arrays):
    for k in IDX_NAMES:
        got, want = getattr(ds, k), np.asarray(arrays[k])
        if k[0] == "x" and want.ndim == 3:
            want = want[..., None]
        np.testing.assert_array_equal(got, want, err_msg=k)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert all(getattr(ds, k).flags.c_contiguous for k in IDX_NAMES)


def raises_naming(path_fragment, *args, match=None, **kwargs) -> str:
    """Call data.load, assert a DataError whose message names `path_fragment`; return the message."""
    with pytest.raises(DataError) as info:
        data.load(*args, **kwargs)
    msg = str(info.value)
    assert str(path_fragment) in msg, msg
    assert "\n" not in msg
    if match:
        assert match in msg, msg
    return msg


# ---------------------------------------------------------------- real data


def test_mnist_npz(real_dir, isolated):
    ds = data.load("mnist", real_dir)
    assert ds.name == "mnist" and ds.num_classes == 10 and "mnist.npz" in ds.source
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.x_train.flags.c_contiguous and ds.x_train.flags.writeable
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    with np.load(real_dir / "mnist.npz") as raw:
        np.testing.assert_array_equal(np.bincount(ds.y_train[:1000]), np.bincount(raw["y_train"][:1000]))
        np.testing.assert_array_equal(ds.x_test[..., 0], raw["x_test"])
    small = data.load("mnist", real_dir, max_train=1000, max_test=10)
    assert small.x_train.shape == (1000, 28, 28, 1) and small.y_test.shape == (10,)
    keep = data.stratified_indices(ds.y_train, 1000, seed=data.SUBSET_SEED)  # a stratified draw, not the first 1000
    np.testing.assert_array_equal(small.x_train, ds.x_train[keep])
    np.testing.assert_array_equal(small.y_train, ds.y_train[keep])
    np.testing.assert_array_equal(
        small.y_test, ds.y_test[data.stratified_indices(ds.y_test, 10, seed=data.SUBSET_SEED)]
    )
    assert small.x_train.flags.owndata  # the subset does not keep the full array alive


def test_fashion_mnist_from_system_location(isolated, monkeypatch):
    if not FASHION_DIR.is_dir():
        pytest.fail(f"{FASHION_DIR} missing (apt-get install -y dataset-fashion-mnist)")
    monkeypatch.setattr(datasets, "SYSTEM_DIR", FASHION_DIR.parent)
    ds = data.load("fashion_mnist", isolated, use_tfds=False)
    assert ds.source.startswith(str(FASHION_DIR))
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10 and ds.y_test.max() < 10
    assert np.bincount(ds.y_train).tolist() == [6000] * 10


def test_cifar10_npz_slice(real_dir, isolated):
    ds = data.load("cifar10", real_dir, max_train=5000, max_test=1000)
    assert ds.x_train.shape == (5000, 32, 32, 3) and ds.x_test.shape == (1000, 32, 32, 3)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), CIFAR_TRAIN_MEANS, atol=3)
    with np.load(real_dir / "cifar10.npz") as z:  # the stratified draw of the full splits, read by numpy
        raw = {}
        for split, n in (("train", 5000), ("test", 1000)):
            y = z[f"y_{split}"].ravel()
            keep = data.stratified_indices(y, n, seed=data.SUBSET_SEED)
            raw[f"x_{split}"], raw[f"y_{split}"] = z[f"x_{split}"][keep], y[keep]
    assert_same(ds, raw)
    # the test split is stored grouped by class: its first 1000 are one class, the draw has all ten
    assert np.bincount(ds.y_test, minlength=10).tolist() == [100] * 10


def test_cifar10_python_batches(tmp_path, cifar_raw, isolated):
    raw = {k: v[:100] if k.endswith("train") else v[:30] for k, v in cifar_raw.items()}
    write_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py", **raw)
    ds = data.load("cifar10", tmp_path, use_tfds=False)
    assert "cifar-10-batches-py" in ds.source
    assert_same(ds, raw)  # pixel-exact: checks CHW rows -> HWC
    few = data.load("cifar10", tmp_path, max_train=25, max_test=3, use_tfds=False)
    keep = data.stratified_indices(raw["y_train"], 25, seed=data.SUBSET_SEED)
    np.testing.assert_array_equal(few.x_train, raw["x_train"][keep])
    assert few.x_test.shape == (3, 32, 32, 3)


def test_digits(isolated):
    ds = data.load("digits", isolated)
    assert ds.x_train.shape == (1500, 8, 8, 1) and ds.x_test.shape == (297, 8, 8, 1)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert "load_digits" in ds.source
    np.testing.assert_allclose(ds.x_train.mean(), data.normalization("digits")[0], atol=0.01)


def _pixel_mean_std(x_u8: np.ndarray) -> tuple[float, float]:
    """Mean and population std (ddof=0) of uint8 pixels in float64, exact: from the 256-bin value counts."""
    counts = np.bincount(np.asarray(x_u8).ravel(), minlength=256).astype(np.float64)
    v = np.arange(256, dtype=np.float64)
    n = counts.sum()
    mean = (counts * v).sum() / n
    return mean, np.sqrt((counts * (v - mean) ** 2).sum() / n)


def _train_split_pixels(name: str, real_dir: Path) -> np.ndarray:
    """The full training split's images (n, H, W, C) uint8, read with numpy/gzip/sklearn, not `data.load`."""
    if name in ("mnist", "cifar10"):
        with np.load(real_dir / f"{name}.npz") as z:
            x = z["x_train"]
        return x[..., None] if x.ndim == 3 else x
    if name == "fashion_mnist":
        raw = gzip.decompress((FASHION_DIR / "train-images-idx3-ubyte.gz").read_bytes())
        return np.frombuffer(raw, np.uint8, offset=16).reshape(60000, 28, 28, 1)
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images[:1500] * (255 / 16)).astype(np.uint8)[..., None]


def test_normalization(real_dir):
    """The stored constants equal the float64 mean/std of every pixel of each real training split."""
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "cifar10", "digits"}
    for name in data.DATASETS:
        mean, std = data.normalization(name)
        c = data.SPECS[name].image_shape[2]
        assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (c,)
        x = _train_split_pixels(name, real_dir)
        assert x.shape[0] == data.SPECS[name].num_train and x.shape[-1] == c
        ref = np.array([_pixel_mean_std(x[..., k]) for k in range(c)])  # (C, 2)
        # the constants are stored to 4 decimals: within 5e-5 of the exact values (plus float32 rounding)
        np.testing.assert_allclose(mean, ref[:, 0], rtol=0, atol=1e-4, err_msg=f"{name} mean")
        np.testing.assert_allclose(std, ref[:, 1], rtol=0, atol=1e-4, err_msg=f"{name} std")


# ---------------------------------------------------------------- synthetic formats


@pytest.mark.parametrize("sub,gz", [("", True), ("mnist", True), ("", False), ("mnist", False)])
def test_idx_round_trip(tmp_path, isolated, sub, gz):
    arrays = small_arrays()
    write_idx_set(tmp_path / sub, arrays, gz=gz)
    ds = data.load("mnist", tmp_path, use_tfds=False)
    assert_same(ds, arrays)
    assert ds.source.startswith(str(tmp_path / sub))


def test_idx_dashed_subdir(tmp_path, isolated):
    arrays = small_arrays(seed=1)
    write_idx_set(tmp_path / "fashion-mnist", arrays)
    assert_same(data.load("fashion_mnist", tmp_path, use_tfds=False), arrays)


def test_npz_grey_and_subdir(tmp_path, isolated):
    arrays = small_arrays(seed=2)
    (tmp_path / "fashion_mnist").mkdir()
    np.savez_compressed(tmp_path / "fashion_mnist" / "fashion_mnist.npz", **arrays)
    assert_same(data.load("fashion_mnist", tmp_path, use_tfds=False), arrays)


def test_npz_column_labels(tmp_path, isolated):
    arrays = small_arrays(seed=3, hw=(32, 32, 3))
    arrays["y_train"] = arrays["y_train"][:, None]  # Keras cifar10 labels are (n, 1)
    np.savez(tmp_path / "cifar10.npz", **arrays)
    ds = data.load("cifar10", tmp_path, use_tfds=False)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"][:, 0])


def test_env_var_and_explicit_dir(tmp_path, isolated, monkeypatch, caplog):
    a, b = small_arrays(seed=4), small_arrays(seed=5)
    write_idx_set(tmp_path / "a", a)
    write_idx_set(tmp_path / "b", b)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "a"))
    with caplog.at_level(logging.INFO, logger="jaxweights.data"):
        assert_same(data.load("mnist", use_tfds=False), a)
    assert f"mnist: loaded from {tmp_path / 'a'}" in caplog.text
    assert_same(data.load("mnist", tmp_path / "b", use_tfds=False), b)


@pytest.fixture
def tfds_home(tmp_path, monkeypatch) -> Path:
    """tfds' own data folder (where it reads and downloads without a data_dir): an empty one."""
    from tensorflow_datasets.core import constants

    home = tmp_path / "tensorflow_datasets"
    monkeypatch.setattr(constants, "DATA_DIR", str(home))
    return home


def test_tfds_mock(isolated, tfds_home, monkeypatch, caplog):
    import tensorflow_datasets as tfds

    for name in ("mnist", "cifar10"):
        (isolated / name / "1.0.0").mkdir(parents=True)  # what tfds prepares in a data_dir
        (isolated / name / "1.0.0" / "dataset_info.json").write_text("{}")
    probed = []
    monkeypatch.setattr(tfds_source, "_connect", lambda address, timeout: probed.append(address))
    with tfds.testing.mock_data(num_examples=12), caplog.at_level(logging.INFO, logger="jaxweights.data"):
        for name, shape in [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]:
            ds = data.load(name, isolated, max_test=5)
            assert ds.x_train.shape == (12, *shape) and ds.x_test.shape == (5, *shape)
            assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
            assert ds.y_train.max() < 10 and "tfds" in ds.source
    assert f"not found in {isolated}" in caplog.text
    # a data_dir was given: tfds reads it, never downloads, never probes the network, and nothing warns of one
    assert not probed
    assert not [r for r in caplog.records if r.name == "jaxweights.data" and "download" in r.getMessage()]
    caplog.clear()
    with tfds.testing.mock_data(num_examples=12), caplog.at_level(logging.INFO, logger="jaxweights.data"):
        ds = data.load("mnist", max_test=5)  # no data_dir anywhere: the network answers, tfds downloads
    assert ds.x_test.shape == (5, 28, 28, 1) and "tfds" in ds.source
    assert probed == [tfds_source.PROBE_HOST]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "jaxweights.data"]
    assert len(warned) == 1 and "downloading it with tensorflow-datasets" in warned[0].getMessage()
    assert data.ENV_VAR in warned[0].getMessage()


def _offline(address, timeout):
    raise socket.gaierror(-2, "Name or service not known")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_fails_at_once_naming_the_three_ways(isolated, tfds_home, monkeypatch, caplog, name):
    monkeypatch.setattr(socket, "create_connection", _offline)
    start = time.perf_counter()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DataError) as info:
            data.load(name)
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert elapsed < 10, elapsed
    assert "\n" not in msg and "no data folder given: --data_dir, $JAXWEIGHTS_DATA_DIR" in msg
    system = datasets.SYSTEM_DIR / name.replace("_", "-")
    assert f"looked in {system} (no such directory)" in msg, msg
    assert str(tfds_home / name) in msg and "cannot reach storage.googleapis.com:443 (Name or service not known)" in msg
    assert "(1) put" in msg and "--data_dir or $JAXWEIGHTS_DATA_DIR" in msg
    assert ("(2) install Debian's dataset-fashion-mnist package" in msg) == (name == "fashion_mnist"), msg
    assert "(3) with internet access" in msg and "install tensorflow-datasets" not in msg
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]  # no download was tried
    assert not tfds_home.exists() or not any(tfds_home.rglob("*.array_record*"))


def test_offline_with_an_empty_data_dir_never_asks_tfds_to_download(isolated, tfds_home, monkeypatch):
    probed = []
    monkeypatch.setattr(tfds_source, "_connect", lambda address, timeout: probed.append(address))
    msg = raises_naming(isolated, "mnist", isolated)
    assert f"looked in {isolated} (no mnist.npz or IDX files)" in msg
    assert f"tensorflow-datasets (nothing it prepared in {isolated / 'mnist'}" in msg and not probed


def test_a_broken_tfds_installation_is_one_line(isolated, tfds_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails
    msg = raises_naming(datasets.SYSTEM_DIR / "mnist", "mnist")
    assert "tensorflow-datasets (ModuleNotFoundError: import of tensorflow_datasets halted" in msg, msg


def test_network_probe_is_bounded_and_goes_through_the_proxy(monkeypatch):
    tried = []

    def hang(address, timeout):
        tried.append(address)
        time.sleep(5)

    for var in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tfds_source, "_connect", hang)
    start = time.perf_counter()
    why = tfds_source.network_problem(timeout=0.2)
    assert time.perf_counter() - start < 2 and why == "cannot reach storage.googleapis.com:443 (no answer within 0.2 s)"
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setattr(tfds_source, "_connect", lambda address, timeout: tried.append(address))
    assert tfds_source.network_problem() is None
    assert tried == [tfds_source.PROBE_HOST, ("proxy.example", 3128)]


# ---------------------------------------------------------------- bad inputs


def test_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'svhn'.*mnist, fashion_mnist, cifar10, digits"):
        data.load("svhn")
    with pytest.raises(DataError, match="svhn"):
        data.normalization("svhn")


def test_not_found_lists_every_place(isolated):
    msg = raises_naming(isolated, "mnist", isolated, use_tfds=False)
    assert str(datasets.SYSTEM_DIR / "mnist") in msg and "tensorflow-datasets (not used" in msg and data.ENV_VAR in msg
    raises_naming(isolated / "nope", "cifar10", isolated / "nope", use_tfds=False, match="no such directory")


def test_not_found_with_tfds(isolated):
    import tensorflow_datasets  # noqa: F401  (a dependency: the test must not skip)

    msg = raises_naming(isolated, "mnist", isolated)  # data_dir given: tfds must not download
    assert f"tensorflow-datasets (nothing it prepared in {isolated / 'mnist'}" in msg, msg
    (isolated / "mnist" / "3.0.1").mkdir(parents=True)
    (isolated / "mnist" / "3.0.1" / "dataset_info.json").write_text("{not json")
    msg = raises_naming(isolated, "mnist", isolated)  # a damaged tfds folder: tfds' own error, on one line
    assert f"tensorflow-datasets (data_dir={isolated}: ParseError: " in msg, msg


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


IDX_CASES = {
    "truncated_gz": ("x_train", lambda d, a: _truncate(d / "train-images-idx3-ubyte.gz"), "cannot read"),
    "wrong_magic": (
        "y_train",
        lambda d, a: write_idx(d / "train-labels-idx1-ubyte.gz", a["y_train"], magic=0x803),
        "magic",
    ),
    "header_payload": (
        "x_test",
        lambda d, a: write_idx(d / "t10k-images-idx3-ubyte.gz", a["x_test"], dims=(21, 28, 28)),
        "header dims",
    ),
    "image_shape": ("x_train", lambda d, a: write_idx(d / "train-images-idx3-ubyte.gz", a["x_train"][:, :27]), "27x28"),
    "label_range": (
        "y_test",
        lambda d, a: write_idx(d / "t10k-labels-idx1-ubyte.gz", a["y_test"] + 5),
        "outside [0, 10)",
    ),
    "count_mismatch": (
        "y_train",
        lambda d, a: write_idx(d / "train-labels-idx1-ubyte.gz", a["y_train"][:-1]),
        "50 images",
    ),
    "missing_file": ("y_test", lambda d, a: (d / "t10k-labels-idx1-ubyte.gz").unlink(), "missing file"),
    "flipped_gz": ("x_test", lambda d, a: _flip_middle(d / "t10k-images-idx3-ubyte.gz"), "cannot read"),
}


def _flip_middle(p: Path):
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x04  # inside the deflated data: gzip's CRC-32 at the end fails
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", IDX_CASES)
def test_bad_idx(tmp_path, isolated, case):
    key, mutate, match = IDX_CASES[case]
    arrays = small_arrays()
    write_idx_set(tmp_path / "mnist", arrays)
    mutate(tmp_path / "mnist", arrays)
    raises_naming(tmp_path / "mnist" / IDX_NAMES[key], "mnist", tmp_path, use_tfds=False, match=match)


def _npz(d: Path, **changes) -> Path:
    arrays = {k: v for k, v in (small_arrays() | changes).items() if v is not None}
    np.savez(d / "mnist.npz", **arrays)
    return d / "mnist.npz"


NPZ_CASES = {
    "missing_key": (dict(y_test=None), "missing keys ['y_test']"),
    "wrong_shape": (dict(x_train=np.zeros((50, 28, 27), np.uint8)), "x_train"),
    "wrong_dtype": (dict(x_test=np.zeros((20, 28, 28), np.float32)), "float32"),
    "label_shape": (dict(y_train=np.zeros((50, 2), np.int64)), "y_train"),
    "label_range": (dict(y_train=np.full(50, -1, np.int64)), "outside [0, 10)"),
    "count_mismatch": (dict(y_test=np.zeros(19, np.uint8)), "19 labels"),
}


SUBSET = {"whole": {}, "subset": {"max_train": 30, "max_test": 7}}  # a subset streams the rows it keeps


@pytest.mark.parametrize("limits", SUBSET)
@pytest.mark.parametrize("case", NPZ_CASES)
def test_bad_npz(tmp_path, isolated, case, limits):
    changes, match = NPZ_CASES[case]
    path = _npz(tmp_path, **changes)
    raises_naming(path, "mnist", tmp_path, use_tfds=False, match=match, **SUBSET[limits])


@pytest.mark.parametrize("limits", SUBSET)
@pytest.mark.parametrize("how", ["garbage", "truncated", "flipped"])
def test_corrupted_npz(tmp_path, isolated, how, limits):
    path = _npz(tmp_path)
    raw = bytearray(path.read_bytes())
    if how == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 4] ^= 0xFF  # inside x_train's data: CRC mismatch
    path.write_bytes(bytes(raw))
    raises_naming(path, "mnist", tmp_path, use_tfds=False, **SUBSET[limits])


def _flip_member_bit(path: Path, member: str, where: float) -> None:
    """Flips one bit of an npz member's compressed data, `where` (0 to 1) of the way through it."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the local header, then the data
    raw[start + int(where * (info.compress_size - 1))] ^= 0x04
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_real_mnist_is_refused_whatever_slice_is_read(tmp_path, isolated, real_dir):
    """A damaged member is refused even when only a few rows of it are used (its CRC-32 is checked)."""
    path = tmp_path / "mnist.npz"
    shutil.copyfile(real_dir / "mnist.npz", path)
    limits = dict(max_train=512, max_test=500, use_tfds=False)
    ref = data.load("mnist", real_dir, **limits)
    ds = data.load("mnist", tmp_path, **limits)  # the undamaged copy loads, the same
    np.testing.assert_array_equal(ds.x_train, ref.x_train)
    original = path.read_bytes()
    for member, where in [("x_train.npy", 0.99), ("x_train.npy", 0.3), ("x_test.npy", 0.99), ("y_train.npy", 0.9)]:
        path.write_bytes(original)
        _flip_member_bit(path, member, where)  # far from the first rows at 0.99
        key = member[:-4]
        raises_naming(path, "mnist", tmp_path, match=f"npz member {key} (", **limits)
        with zipfile.ZipFile(path) as z, pytest.raises(DataError, match=f"{key} .*(CRC|Error)"):
            readers._npy_member(z, key, path, 16)  # the first 16 rows alone


def test_fashion_files_are_not_mnist(tmp_path, isolated):
    """The same IDX names serve MNIST and Fashion-MNIST: a full split is checked by its mean."""
    if not FASHION_DIR.is_dir():
        pytest.fail(f"{FASHION_DIR} missing (apt-get install -y dataset-fashion-mnist)")
    for f in FASHION_DIR.iterdir():
        (tmp_path / f.name).symlink_to(f)
    raises_naming(tmp_path, "mnist", tmp_path, use_tfds=False, match="does not match mnist")
    assert data.load("mnist", tmp_path, max_train=100, use_tfds=False).x_train.shape == (100, 28, 28, 1)


def _cifar_dir(tmp_path) -> Path:
    a = small_arrays(seed=6, hw=(32, 32, 3))
    return write_cifar_batches(tmp_path / "cifar-10-batches-py", **a)


def test_truncated_pickle(tmp_path, isolated):
    d = _cifar_dir(tmp_path)
    _truncate(d / "test_batch")
    raises_naming(d / "test_batch", "cifar10", tmp_path, use_tfds=False, match="corrupted pickle")


def test_pickle_with_forbidden_global(tmp_path, isolated):
    d = _cifar_dir(tmp_path)
    (d / "data_batch_2").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    raises_naming(d / "data_batch_2", "cifar10", tmp_path, use_tfds=False, match="forbidden global")


@pytest.mark.parametrize(
    "batch,match",
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, "(n, 3072)"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "b'labels'"),
        ({b"labels": [0]}, "b'data'"),
        ([1, 2, 3], "dict"),
    ],
)
def test_bad_pickle_layout(tmp_path, isolated, batch, match):
    d = _cifar_dir(tmp_path)
    buf = io.BytesIO()
    pickle.dump(batch, buf)
    (d / "data_batch_5").write_bytes(buf.getvalue())
    raises_naming(d / "data_batch_5", "cifar10", tmp_path, use_tfds=False, match=match)


def test_missing_cifar_batch(tmp_path, isolated):
    d = _cifar_dir(tmp_path)
    (d / "data_batch_4").unlink()
    raises_naming(d / "data_batch_4", "cifar10", tmp_path, max_train=1, use_tfds=False, match="missing file")


def test_bad_limits(isolated):
    with pytest.raises(DataError, match="max_train"):
        data.load("digits", max_train=-1)


# ---------------------------------------------------------------- stratified subsets


def _largest_share_error(labels, keep):
    """max over classes of |count in the subset - n * (class share of the whole split)|, in float64."""
    labels = np.asarray(labels).ravel()
    k = int(labels.max()) + 1
    full, sub = np.bincount(labels, minlength=k), np.bincount(labels[keep], minlength=k)
    return np.max(np.abs(sub - len(keep) * full / full.sum()))


def test_stratified_cifar_test_split_has_every_class(real_dir):
    with np.load(real_dir / "cifar10.npz") as z:
        y = z["y_test"].ravel()
    assert len(np.unique(y[:1000])) == 1  # why: the first 1000 are all one class
    keep = data.stratified_indices(y, 1000)
    assert np.abs(np.bincount(y[keep], minlength=10) - 100).max() <= 1
    assert len(np.unique(keep)) == 1000 and keep.min() >= 0 and keep.max() < len(y)
    # a random order, not grouped by class: about 1 in 10 neighbours share a class (grouped: 99%)
    assert np.mean(y[keep][1:] == y[keep][:-1]) < 0.2


@pytest.mark.parametrize("n", [1000, 777, 10, 60000])
def test_stratified_mnist_matches_class_proportions(real_dir, n):
    with np.load(real_dir / "mnist.npz") as z:
        y = z["y_train"]
    keep = data.stratified_indices(y, n, seed=3)
    assert keep.shape == (n,) and len(np.unique(keep)) == n
    assert _largest_share_error(y, keep) <= 1.0
    np.testing.assert_array_equal(keep, data.stratified_indices(y, n, seed=3))  # same seed, same draw
    if n < len(y):
        assert not np.array_equal(np.sort(keep), np.sort(data.stratified_indices(y, n, seed=4)))


def test_stratified_keeps_rare_classes_and_refuses_bad_sizes():
    y = np.array([0] * 91 + list(range(1, 10)))  # one class holds 91%
    assert np.bincount(y[data.stratified_indices(y, 10)]).tolist() == [1] * 10  # one of each when n allows
    assert len(np.unique(data.stratified_indices(y, 5))) == 5
    assert data.stratified_indices(y, 0).shape == (0,)
    for bad in (-1, 101, 2.5):
        with pytest.raises(ValueError, match="stratified_indices: n"):
            data.stratified_indices(y, bad)
