"""Image classification datasets as uint8 NHWC numpy arrays, loaded offline first.

`load(name)` looks for the data in this order and logs every attempt at INFO:

1. A data directory: the `data_dir` argument, else the `JAXWEIGHTS_DATA_DIR` environment
   variable. Accepted there, directly or in a `NAME/` (or `NAME` with `-` for `_`) subfolder:
   a Keras-style `NAME.npz` (x_train, y_train, x_test, y_test); the four official IDX files,
   gzipped or not (mnist, fashion_mnist); the CIFAR-10 python batches
   (`cifar-10-batches-py/`, cifar10). IDX files sitting directly in the data directory are
   ambiguous between MNIST and Fashion-MNIST (same file names); a full-size train split is
   therefore checked against the dataset's known mean pixel value.
2. The system location `/usr/share/datasets/<name with - for _>` (Debian's
   `dataset-fashion-mnist` package installs `/usr/share/datasets/fashion-mnist`).
3. `digits` comes from scikit-learn's bundled copy; the others from `tfds.data_source`
   (`tfds_source.from_tfds`: downloads only when no data directory was given, and only after a
   quick check that the network answers, so that offline the loader fails in seconds).

Not found anywhere, `DataError` is one line: every place looked in and why it was passed over, and
the three ways to provide the data (a data folder, the system location, a tfds download).

`max_train` / `max_test` keep a class-stratified draw (`stratified_indices` with the fixed seed
`SUBSET_SEED`), never the first examples: a split stored grouped by class (CIFAR-10's test split
in Keras' npz is) would otherwise give a subset of one class.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ml_collections
import numpy as np

from jaxweights.data.readers import _FORMATS, _from_sklearn, _search_dir
from jaxweights.data.specs import ENV_VAR, DataError, Dataset, DatasetSpec, spec
from jaxweights.data.subsets import SUBSET_SEED, stratified_indices
from jaxweights.data.tfds_source import TfdsUnavailable, from_tfds

__all__ = ["ENV_VAR", "SYSTEM_DIR", "load", "load_dataset"]

_LOG = logging.getLogger("jaxweights.data")
SYSTEM_DIR = Path("/usr/share/datasets")
_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}  # Debian packages that fill SYSTEM_DIR


def _finish(name: str, s: DatasetSpec, parts: dict, source: str, limits) -> Dataset:
    """Validate shapes, dtypes, counts and labels, apply the limits, and build a Dataset."""
    out = {}
    for split, limit in zip(("train", "test"), limits):
        (x, xw), (y, yw) = parts[f"x_{split}"], parts[f"y_{split}"]
        if x.ndim == 3 and s.image_shape[2] == 1:
            x = x[..., None]
        if x.dtype != np.uint8 or x.shape[1:] != s.image_shape:
            raise DataError(f"{xw}: images are {x.dtype} {x.shape}, expected uint8 (n, {str(s.image_shape)[1:-1]})")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{yw}: labels are {y.dtype} {y.shape}, expected integers (n,)")
        if len(x) != len(y):
            raise DataError(f"{xw} has {len(x)} images but {yw} has {len(y)} labels")
        bad = y[(y < 0) | (y >= s.num_classes)]
        if bad.size:
            raise DataError(f"{yw}: {bad.size} labels outside [0, {s.num_classes}), e.g. {bad[0]}")
        if limit is not None and len(y) > limit:
            keep = stratified_indices(y, limit, seed=SUBSET_SEED)
            x, y = x[keep], y[keep]
        out[f"x_{split}"] = np.require(x, np.uint8, ["C", "W", "O"])
        out[f"y_{split}"] = np.require(y, np.int32, ["C", "W", "O"])
    x = out["x_train"]
    if len(x) == s.num_train:  # full official split: guard against e.g. Fashion-MNIST read as MNIST
        mean = x[:10000].mean(axis=(0, 1, 2))
        if np.any(np.abs(mean - np.asarray(s.mean)) > 3.0):
            raise DataError(
                f"{source}: train pixel mean {np.round(mean, 2).tolist()} does not match {name} "
                f"(expected {list(s.mean)}); is this a different dataset?"
            )
    return Dataset(name, num_classes=s.num_classes, source=source, **out)


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    use_tfds: bool = True,
    log: logging.Logger = _LOG,
) -> Dataset:
    """Load a dataset from the first place that has it (see the module docstring).

    Args:
      name: one of `DATASETS`.
      data_dir: folder with the data; defaults to $JAXWEIGHTS_DATA_DIR when that is set.
      max_train: keep only `max_train` train examples (None: all), drawn class-stratified by
        `stratified_indices(y_train, max_train, seed=SUBSET_SEED)`, in that (random) order.
      max_test: the same for the test split.
      use_tfds: whether to fall back to tensorflow-datasets.
      log: logger that receives one INFO line per place tried.

    Returns:
      A `Dataset` with uint8 (n, H, W, C) images and int32 labels, C-contiguous.
    """
    s = spec(name)
    limits = (max_train, max_test)
    for lim in limits:
        if lim is not None and (not isinstance(lim, (int, np.integer)) or lim < 0):
            raise DataError(f"{name}: max_train/max_test must be None or a non-negative int, got {lim!r}")
    root = data_dir if data_dir is not None else (os.environ.get(ENV_VAR) or None)
    root = Path(root).expanduser().absolute() if root is not None else None
    if root is not None and not root.is_dir():  # a typo must not fall through to a download
        given = "data_dir" if data_dir is not None else f"${ENV_VAR}"
        raise DataError(f"{name}: {given} {root}: no such directory")
    tried = []
    for d in ([root] if root else []) + [SYSTEM_DIR / name.replace("_", "-")]:
        found = _search_dir(name, s, d, limits) if d.is_dir() else None
        if found:
            log.info("%s: loaded from %s", name, found[1])
            return _finish(name, s, found[0], found[1], limits)
        why = f"no {_FORMATS.get(name, name + '.npz')}" if d.is_dir() else "no such directory"
        tried.append(f"{d} ({why})")
        log.info("%s: not found in %s (%s)", name, d, why)
    if name == "digits":
        log.info("%s: loaded from scikit-learn load_digits", name)
        return _finish(name, s, _from_sklearn(), "sklearn.datasets.load_digits (first 1500 train, 297 test)", limits)
    if use_tfds:
        try:
            parts, source = from_tfds(name, s, root, log)
        except TfdsUnavailable as e:
            tried.append(str(e))
            log.info("%s: not found with %s", name, tried[-1])
        else:
            log.info("%s: loaded from %s", name, source)
            return _finish(name, s, parts, source, limits)
    else:
        tried.append("tensorflow-datasets (not used: use_tfds=False)")
    given = "" if root else f" (no data folder given: --data_dir, ${ENV_VAR})"
    raise DataError(f"{name}: dataset not found{given}; looked in {', '.join(tried)}. {_ways(name)}")


def _ways(name: str) -> str:
    """The three ways to provide dataset `name`, one sentence."""
    system = SYSTEM_DIR / name.replace("_", "-")
    package = _PACKAGES.get(name)
    second = (
        f"install Debian's {package} package (it fills {system})"
        if package
        else f"put them in {system} (no Debian package ships {name})"
    )
    return (
        f"Provide it in one of three ways: (1) put {_FORMATS.get(name, name + '.npz')} in a folder given as "
        f"--data_dir or ${ENV_VAR}; (2) {second}; (3) with internet access and no data folder given, "
        "tensorflow-datasets downloads it"
    )


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Loads the config's dataset (sources logged), keeping `max_train`/`max_test` examples.

    Args:
      config: a zoo config (`dataset`, `data_dir`, `max_train`, `max_test`; 0 or "" = default).

    Returns:
      The `Dataset` (see `load`).
    """
    return load(
        config.dataset,
        data_dir=config.data_dir or None,
        max_train=config.max_train or None,
        max_test=config.max_test or None,
    )
