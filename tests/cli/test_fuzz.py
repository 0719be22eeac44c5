"""Property-based tests: damaged data files and bad configs give clear errors, never a crash.

Every data file here starts as a real slice of MNIST or CIFAR-10 written in the official
formats (IDX, gzipped or not; Keras npz; CIFAR-10 python batches), then is truncated,
bit-flipped or given wrong shapes. The loader's answer is compared with an independent decoder
of the same damaged bytes: where the decoder finds a valid dataset the loader must return exactly
it (a flipped pixel in an unchecksummed IDX file is still what the file says), and where it does
not the loader must raise `DataError`. Any other exception, or a different dataset, fails.
Bad configs go to the library (`validate` and `train_and_evaluate`) and to the CLI in-process:
only `ConfigError`/`DataError` naming the key or value, and one error line with exit code 2.
"""

import collections
import contextlib
import gzip
import io
import keyword
import math
import pickle
import tempfile
import zlib
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaxweights import cli, data
from jaxweights import config as config_lib
from jaxweights.pipelines import train as train_pipeline

REPO = Path(__file__).resolve().parents[2]
TRIED = collections.Counter()  # inputs tried per test, printed at the end of the module
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(v for k, v in TRIED.items() if not k.startswith(" "))
    print("\nfuzz inputs tried:", *(f"  {k}: {v}" for k, v in TRIED.items()), f"  total: {total}", sep="\n")


@pytest.fixture(scope="module")
def mnist(data_dir):
    """40 train and 20 test real MNIST images and labels, (n, 28, 28) uint8."""
    with np.load(data_dir / "mnist.npz") as z:
        return {
            "x_train": z["x_train"][:40],
            "y_train": z["y_train"][:40],
            "x_test": z["x_test"][:20],
            "y_test": z["y_test"][:20],
        }


@pytest.fixture(scope="module")
def cifar(data_dir):
    """20 train and 4 test real CIFAR-10 images, (n, 32, 32, 3) uint8."""
    ds = data.load("cifar10", data_dir, max_train=20, max_test=4, use_tfds=False)
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test}


def _outcome(name, folder):
    """The loader's answer: a dict of arrays, or None for a DataError; anything else propagates."""
    try:
        ds = data.load(name, folder, use_tfds=False)
    except data.DataError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip() and len(msg) < 2000, msg
        assert str(folder) in msg, f"the error does not name the damaged file under {folder}: {msg}"
        return None
    return {k: getattr(ds, k) for k in ("x_train", "y_train", "x_test", "y_test")}


def _assert_same(got, want, label):
    assert (got is None) == (want is None), f"loader {'failed' if got is None else 'succeeded'}, oracle did not"
    TRIED[f"  {label}: refused with DataError" if got is None else f"  {label}: loaded, equal to the oracle"] += 1
    if got is not None:
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _check(parts, spec):
    """Reference validation of decoded arrays (the rules the README states), or None."""
    if parts is None:
        return None
    out = {}
    for s in ("train", "test"):
        x, y = parts[f"x_{s}"], parts[f"y_{s}"]
        if x.ndim == 3 and spec.image_shape[2] == 1:
            x = x[..., None]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if x.dtype != np.uint8 or x.shape[1:] != spec.image_shape or y.ndim != 1 or y.dtype.kind not in "iu":
            return None
        if len(x) != len(y) or ((y < 0) | (y >= spec.num_classes)).any():
            return None
        out[f"x_{s}"], out[f"y_{s}"] = x, y.astype(np.int32)
    return out


# Damage: cut the file, flip bits, or overwrite a few bytes.
def damage():
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(
            st.just("flip"),
            st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=4),
        ),
        st.tuples(st.just("overwrite"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
    )


def _apply(raw: bytes, how) -> bytes:
    b = bytearray(raw)
    if how[0] == "truncate":
        return bytes(b[: int(how[1] * len(b))])
    if how[0] == "flip":
        for pos, bit in how[1]:
            b[int(pos * len(b))] ^= 1 << bit
        return bytes(b)
    pos = int(how[1] * len(b))
    b[pos : pos + len(how[2])] = how[2]
    return bytes(b[: len(raw)])


# ============================== IDX ==============================

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def idx_bytes(a: np.ndarray, dims=None) -> bytes:
    dims = a.shape if dims is None else dims
    return bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims) + a.tobytes()


def idx_oracle(raw: bytes, ndim: int):
    """Independent IDX decoder: the array the bytes describe, or None."""
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 8, ndim]):
        return None
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - 4 - 4 * ndim != math.prod(dims):
        return None
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(dims)


@FUZZ
@given(
    target=st.sampled_from(list(IDX_NAMES)),
    gz=st.booleans(),
    how=damage(),
    shape=st.sampled_from(["ok", "27x28", "dims+1", "labels 2-D", "n mismatch"]),
)
def test_damaged_idx_files(mnist, tmp_path_factory, target, gz, how, shape):
    TRIED["idx"] += 1
    folder = tmp_path_factory.mktemp("idx")
    files = {k: idx_bytes(v) for k, v in mnist.items()}
    x, y = mnist["x_train"], mnist["y_train"]
    if shape == "27x28":
        files["x_train"] = idx_bytes(x[:, :27])
    elif shape == "dims+1":
        files["x_train"] = idx_bytes(x, dims=(len(x) + 1, 28, 28))
    elif shape == "labels 2-D":
        files["y_train"] = bytes([0, 0, 8, 2]) + len(y).to_bytes(4, "big") + (1).to_bytes(4, "big") + y.tobytes()
    elif shape == "n mismatch":
        files["y_train"] = idx_bytes(y[:-1])
    stored = dict(files)
    stored[target] = _apply(gzip.compress(files[target], mtime=0) if gz else files[target], how)
    for k, raw in stored.items():
        if gz and k == target:
            (folder / (IDX_NAMES[k] + ".gz")).write_bytes(raw)
        else:
            (folder / IDX_NAMES[k]).write_bytes(raw)
    # Oracle: decompress (gzip's CRC catches most damage), then decode.
    decoded = {}
    for k, raw in stored.items():
        if gz and k == target:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                decoded = None
                break
        decoded[k] = idx_oracle(raw, 3 if k[0] == "x" else 1)
        if decoded[k] is None:
            decoded = None
            break
    _assert_same(_outcome("mnist", folder), _check(decoded, data.spec("mnist")), "idx")


# ============================== Keras npz ==============================


def npz_oracle(raw: bytes):
    """np.load of every member (CRC-checked), or None."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if not set(IDX_NAMES) <= set(z.files):
                return None
            parts = {k: z[k] for k in IDX_NAMES}
    except Exception:  # np.load raises many types on damaged input; any of them means "invalid"
        return None
    if any(a.ndim == 0 or (a.ndim > 1 and not a.flags.c_contiguous) for a in parts.values()):
        return None
    return parts


@FUZZ
@given(
    compressed=st.booleans(),
    how=st.one_of(st.none(), damage()),
    shape=st.sampled_from(
        [
            "ok",
            "ok",
            "x float",
            "x (n,28,27)",
            "y float",
            "y (n,2)",
            "missing y_test",
            "n mismatch",
            "x_train scalar",
            "labels out of range",
            "x (n,28,28,1)",
        ]
    ),
)
def test_damaged_npz_files(mnist, tmp_path_factory, compressed, how, shape):
    TRIED["npz"] += 1
    folder = tmp_path_factory.mktemp("npz")
    arrays = dict(mnist)
    if shape == "x float":
        arrays["x_train"] = arrays["x_train"].astype(np.float32)
    elif shape == "x (n,28,27)":
        arrays["x_train"] = np.ascontiguousarray(arrays["x_train"][:, :, :27])
    elif shape == "y float":
        arrays["y_test"] = arrays["y_test"].astype(np.float64)
    elif shape == "y (n,2)":
        arrays["y_train"] = np.stack([arrays["y_train"]] * 2, 1)
    elif shape == "missing y_test":
        del arrays["y_test"]
    elif shape == "n mismatch":
        arrays["y_train"] = arrays["y_train"][:-3]
    elif shape == "x_train scalar":
        arrays["x_train"] = np.uint8(3)
    elif shape == "labels out of range":
        arrays["y_test"] = arrays["y_test"].astype(np.int64) + 7
    elif shape == "x (n,28,28,1)":
        arrays["x_train"] = arrays["x_train"][..., None]
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    raw = buf.getvalue() if how is None else _apply(buf.getvalue(), how)
    (folder / "mnist.npz").write_bytes(raw)
    _assert_same(_outcome("mnist", folder), _check(npz_oracle(raw), data.spec("mnist")), "npz")


# ============================== CIFAR-10 python batches ==============================


class _OracleUnpickler(pickle.Unpickler):
    """Only what a batch of numpy arrays needs (never run code a damaged pickle names)."""

    def find_class(self, module, name):
        rebuild = np.ndarray((0,)).__reduce__()[0]  # numpy's _reconstruct
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): rebuild,
            ("numpy._core.multiarray", "_reconstruct"): rebuild,
            ("_codecs", "encode"): lambda s, enc: s.encode("latin1") if enc == "latin1" else 1 / 0,
            ("__builtin__", "bytes"): bytes,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(name)
        return allowed[module, name]


def batch_oracle(raw: bytes):
    try:
        d = _OracleUnpickler(io.BytesIO(raw), encoding="bytes").load()
        x, y = d[b"data"], np.asarray(d[b"labels"])
    except Exception:  # any failure to decode means "invalid"
        return None
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        return None
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        return None
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def batch_bytes(x, y, variant="ok"):
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    d = {b"batch_label": b"fuzz", b"labels": [int(v) for v in y], b"data": flat, b"filenames": [b"f"] * len(x)}
    if variant == "data (n,3071)":
        d[b"data"] = np.ascontiguousarray(flat[:, :3071])
    elif variant == "labels short":
        d[b"labels"] = d[b"labels"][:-1]
    elif variant == "labels float":
        d[b"labels"] = [float(v) for v in y]
    elif variant == "no data":
        del d[b"data"]
    elif variant == "a list":
        d = [flat]
    elif variant == "data int16":
        d[b"data"] = flat.astype(np.int16)
    elif variant == "code":
        d = collections.OrderedDict(d)  # a global the loader must refuse to import
    return pickle.dumps(d, protocol=2)


@FUZZ
@given(
    target=st.integers(0, 5),
    how=st.one_of(st.none(), damage()),
    variant=st.sampled_from(
        [
            "ok",
            "ok",
            "data (n,3071)",
            "labels short",
            "labels float",
            "no data",
            "a list",
            "data int16",
            "code",
            "label 10",
        ]
    ),
)
def test_damaged_cifar_batches(cifar, tmp_path_factory, target, how, variant):
    TRIED["cifar"] += 1
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    xs = np.split(cifar["x_train"], 5) + [cifar["x_test"]]
    ys = np.split(cifar["y_train"], 5) + [cifar["y_test"]]
    decoded = []
    for i, (name, x, y) in enumerate(zip(names, xs, ys)):
        if i == target and variant == "label 10":
            y = y.copy()
            y[0] = 10
        raw = batch_bytes(x, y, variant if i == target else "ok")
        if i == target and how is not None:
            raw = _apply(raw, how)
        (folder / name).write_bytes(raw)
        decoded.append(batch_oracle(raw))
    parts = None
    if all(d is not None for d in decoded):
        parts = {
            "x_train": np.concatenate([d[0] for d in decoded[:5]]),
            "y_train": np.concatenate([d[1] for d in decoded[:5]]),
            "x_test": decoded[5][0],
            "y_test": decoded[5][1],
        }
    _assert_same(_outcome("cifar10", folder.parent), _check(parts, data.spec("cifar10")), "cifar")


def test_a_huge_length_field_in_a_pickle_is_an_error_not_an_allocation(cifar, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(batch_bytes(cifar["x_train"][:4], cifar["y_train"][:4]))
    # BINBYTES8 claiming 2**62 bytes, then end of file.
    (folder / "test_batch").write_bytes(b"\x80\x04\x8e" + (2**62).to_bytes(8, "little"))
    with pytest.raises(data.DataError, match="test_batch"):
        data.load("cifar10", tmp_path, use_tfds=False)


# ============================== bad configs ==============================


def _names():
    return st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


POSITIVE = ("num_seeds", "num_epochs", "batch_size", "eval_batch_size", "checkpoint_every")
NONNEG = ("max_train", "max_test", "keep_checkpoints")
GRIDS = tuple(config_lib.DYNAMIC)


def not_int():
    return st.one_of(
        st.floats(allow_nan=True), st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
    )


def bad_grid(key):
    bad_number = {
        "learning_rates": st.floats(max_value=0.0) | st.just(float("inf")),
        "init_scales": st.floats(max_value=0.0) | st.just(float("nan")),
        "weight_decays": st.floats(max_value=-1e-9) | st.just(float("inf")),
        "label_noises": st.floats(min_value=1.0, exclude_min=True) | st.floats(max_value=-1e-9),
        "train_fractions": st.floats(min_value=1.0, exclude_min=True) | st.floats(max_value=0.0),
    }[key]
    return st.one_of(
        st.just(()),
        st.floats(0.01, 1.0),
        st.text(max_size=4),
        st.lists(bad_number, min_size=1, max_size=3).map(tuple),
        st.lists(st.text(max_size=3) | st.none(), min_size=1, max_size=2).map(tuple),
    )


@st.composite
def bad_config(draw):
    """(overrides of a valid digits config, the key the error must name)."""
    kind = draw(st.sampled_from(["positive", "nonneg", "grid", "name", "unknown", "model", "vit", "type"]))
    if kind == "positive":
        key = draw(st.sampled_from(POSITIVE))
        return {key: draw(st.integers(max_value=0) | not_int())}, key
    if kind == "nonneg":
        key = draw(st.sampled_from(NONNEG))
        return {key: draw(st.integers(max_value=-1) | not_int())}, key
    if kind == "grid":
        key = draw(st.sampled_from(GRIDS))
        return {key: draw(bad_grid(key))}, key
    if kind == "name":
        key, known = draw(
            st.sampled_from(
                [
                    ("dataset", data.DATASETS),
                    ("optimizer", config_lib.OPTIMIZERS),
                    ("schedule", config_lib.SCHEDULES),
                    ("compute_dtype", ("float32", "bfloat16")),
                    ("model.name", ("mlp", "cnn", "small_cnn_zoo", "vit")),
                    ("model.init", ("normal", "truncated_normal", "uniform", "fan_in", "fan_out", "fan_avg")),
                ]
            )
        )
        return {key: draw(_names().filter(lambda s: s not in known) | st.integers())}, key
    if kind == "unknown":
        key = draw(_names().filter(lambda s: s not in config_lib.default_config() and not keyword.iskeyword(s)))
        return {key: draw(st.integers())}, key
    if kind == "model":
        return {"model.hidden": draw(st.lists(st.integers(max_value=0), min_size=1, max_size=3).map(tuple))}, "hidden"
    if kind == "vit":  # digits images are 8x8
        p = draw(st.integers(-2, 40).filter(lambda p: p <= 0 or 8 % p))
        return {"model": {"name": "vit", "patch_size": p, "width": 16, "depth": 1, "num_heads": 2}}, "patch_size"
    key = draw(st.sampled_from(["momentum", "warmup_epochs", "seed", "data_dir", "groups"]))
    value = {
        "momentum": st.text(max_size=3)
        | st.none()
        | st.floats(min_value=1.0, exclude_min=True)
        | st.floats(max_value=-1e-9)
        | st.just(float("nan")),
        "warmup_epochs": st.text(max_size=3) | st.floats(max_value=-1e-9) | st.just(float("inf")),
        "seed": st.text(max_size=3) | st.floats(0.5, 3.5) | st.none() | st.integers(max_value=-1),
        "data_dir": st.integers() | st.lists(st.text(max_size=2), max_size=2),
        "groups": st.integers() | st.text(min_size=1, max_size=3) | st.just(({},)) | st.just(({"nope": 1},)),
    }[key]
    return {key: draw(value)}, key


def digits_config(overrides):
    d = config_lib.default_config().to_dict()
    d.update(dataset="digits", max_train=256, max_test=64, batch_size=32, num_epochs=1, num_seeds=1)
    d["model"]["hidden"] = (8,)
    for k, v in overrides.items():
        if k == "model":
            d["model"] = v
        elif k.startswith("model."):
            d["model"][k[6:]] = v
        else:
            d[k] = v
    return ml_collections.ConfigDict(d)


@FUZZ
@given(case=bad_config())
def test_bad_configs_raise_clear_errors(case):
    TRIED["config (library)"] += 1
    overrides, key = case
    c = digits_config(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises((config_lib.ConfigError, data.DataError)) as e:
            train_pipeline.train_and_evaluate(c, Path(tmp) / "run", progress=False)
        assert not (Path(tmp) / "run" / "metrics.csv").exists()
    msg = str(e.value)
    assert key.split(".")[-1] in msg and "\n" not in msg, (overrides, msg)


def _flag(key, value):
    return f"--config.{key}={value!r}" if isinstance(value, str) else f"--config.{key}={value}"


@FUZZ
@given(case=bad_config())
def test_bad_configs_on_the_command_line(case):
    overrides, key = case
    # On the command line a single number for a tuple field means a 1-tuple: not an error there.
    assume(not (key in GRIDS and isinstance(overrides[key], (int, float)) and np.isfinite(overrides[key])))
    assume(key != "data_dir")  # any flag value is a path string
    TRIED["config (CLI)"] += 1
    base = [
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--config.model.hidden=(8,)",
        "--config.init_scales=(1.0,)",
        "--config.learning_rates=(0.1,)",
    ]
    if "model" in overrides:  # the ViT config, with a patch size that does not divide 8x8
        base = [
            "--config",
            str(REPO / "configs/mnist_vit.py:quick"),
            "--config.model.width=16",
            "--config.model.depth=1",
            "--config.model.num_heads=2",
        ]
        flags = [_flag("model.patch_size", overrides["model"]["patch_size"])]
    else:
        flags = [_flag(k, v) for k, v in overrides.items()]
    base += [
        "--config.dataset=digits",
        "--config.max_train=256",
        "--config.max_test=64",
        "--config.batch_size=32",
        "--config.num_epochs=1",
        "--config.num_seeds=1",
    ]
    given_keys = {f.split("=")[0] for f in flags}
    base = [b for b in base if b.split("=")[0] not in given_keys]  # a repeated override: the first one wins
    err = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        rc = cli.main(["train", *base, "--workdir", f"{tmp}/run", "--noprogress", *flags])
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ": error:" in ln]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in text, (flags, rc, text[-2000:])
    assert key.split(".")[-1] in lines[0], (flags, lines[0])  # the line names the offending key
