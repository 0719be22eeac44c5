"""Static facts about the datasets: names, image shapes, class counts and normalisation constants."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DATASETS", "ENV_VAR", "SPECS", "DataError", "Dataset", "DatasetSpec", "normalization", "spec"]

ENV_VAR = "JAXWEIGHTS_DATA_DIR"  # the data directory when no data_dir is given


class DataError(ValueError):
    """A dataset is missing, malformed or unknown; the message names the file or dataset."""


class Dataset(NamedTuple):
    """A train/test split: images uint8 (n, H, W, C), labels int32 (n,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str


class DatasetSpec(NamedTuple):
    """Static facts about a dataset; mean/std are per channel in 0..255 pixel units."""

    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# mean/std: computed once over every pixel of the full train split (population std) from
# the official MNIST npz, the official Fashion-MNIST IDX files (Debian
# dataset-fashion-mnist), the official CIFAR-10 npz and the digits
# train split below (load_digits()[:1500] scaled to 0..255).
SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec((28, 28, 1), 10, 60000, (33.3184,), (78.5675,)),
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, 60000, (72.9404,), (90.0212,)),
    "cifar10": DatasetSpec((32, 32, 3), 10, 50000, (125.3069, 122.9504, 113.8654), (62.9932, 62.0887, 66.7049)),
    "digits": DatasetSpec((8, 8, 1), 10, 1500, (77.8151,), (95.5902,)),
}
DATASETS = tuple(SPECS)


def spec(name: str) -> DatasetSpec:
    """Return the static spec of a dataset.

    Args:
      name: one of `DATASETS`.

    Returns:
      Its `DatasetSpec`; raises `DataError` for an unknown name.
    """
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return SPECS[name]


def normalization(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return per-channel train-split mean and std in 0..255 pixel units.

    Args:
      name: one of `DATASETS`.

    Returns:
      (mean, std), each a float32 array of shape (C,).
    """
    s = spec(name)
    return np.asarray(s.mean, np.float32), np.asarray(s.std, np.float32)
