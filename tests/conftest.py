"""Shared fixtures: the real data folder and small slices of it."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The folder with mnist.npz and cifar10.npz ($JAXWEIGHTS_TEST_DATA, else ../shared/data)."""
    env = os.environ.get("JAXWEIGHTS_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not (d / "mnist.npz").exists():
        # Fail rather than skip: a suite that silently skips its real-data tests proves nothing.
        pytest.fail(f"real data not found in {d}: set JAXWEIGHTS_TEST_DATA to a folder with mnist.npz and cifar10.npz")
    return d


@pytest.fixture(scope="session")
def mnist_slice(data_dir):
    """2048 train and 1000 test MNIST images, (n, 28, 28, 1) uint8 and int32 labels."""
    with np.load(data_dir / "mnist.npz") as z:
        return (
            z["x_train"][:2048, :, :, None],
            z["y_train"][:2048].astype(np.int32),
            z["x_test"][:1000, :, :, None],
            z["y_test"][:1000].astype(np.int32),
        )


@pytest.fixture
def x64():
    """float64 mode for comparisons with scipy/numpy at 1e-5 relative; restored afterwards."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)
