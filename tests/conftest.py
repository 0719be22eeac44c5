"""Shared fixtures: the real data folder and small slices of it."""

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

# One XLA compilation cache for the session, its xdist workers and the subprocesses the tests start:
# the tests train many identical tiny zoos, and compiling the same programs again is most of the
# suite's time. Set before jax is imported, so that every process reads it from the environment.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxweights-tests-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# XLA's CPU backend compiles without LLVM optimisation: the tests' programs are tiny, so compiling them is
# most of their time (the suite takes about a third less), and what they check does not depend on it. Every
# reproducibility check compares runs made under the same flags. Set XLA_FLAGS with a
# --xla_backend_optimization_level of your own to test at another level.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
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


# The small MNIST MLP zoo of the dynamics tests: 2 seeds x 2 learning rates, 3 snapshots (epochs 0, 1, 2).
DYNAMICS_ZOO_ARGS = [
    "--config.max_train=1024",
    "--config.max_test=400",
    "--config.model.hidden=(32,16)",
    "--config.batch_size=64",
    "--config.num_seeds=2",
    "--config.init_scales=(1.0,)",
    "--config.num_epochs=2",
    "--config.learning_rates=(0.05,0.001)",
]
# The dynamics settings used on it (write_dynamics keywords).
DYNAMICS_OPTIONS = dict(probe_size=200, cka_batch=50, probe_steps=200, num_planes=2, resolution=8)


@pytest.fixture(scope="session")
def dynamics_zoo(tmp_path_factory, data_dir):
    """`(run, out)`: the trained zoo's run directory and its dynamics tables (`write_dynamics`, no figures).

    Shared by the dynamics, prune and report tests: treat both folders as read-only (copy to change them).
    """
    from jaxweights import cli, dynamics

    def build(tmp):
        argv = ["train", "--config", str(REPO / "configs/quickstart.py"), "--workdir", str(tmp / "run")]
        assert cli.main([*argv, "--data_dir", str(data_dir), "--noprogress", *DYNAMICS_ZOO_ARGS]) == 0
        dynamics.write_dynamics(tmp / "run", tmp / "dyn", data_dir=str(data_dir), **DYNAMICS_OPTIONS)

    tmp = built_once(tmp_path_factory, "dynamics-zoo", build)
    return tmp / "run", tmp / "dyn"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir) -> Path:
    """A finished tiny run: 10 networks (`tests.zoo.train`'s quick start) × 3 epochs, checkpoints 0-3.

    Shared by the checkpoint-digest and resume tests: read-only (copy it to damage it).
    """
    from tests.zoo import train

    return built_once(tmp_path_factory, "finished-run", lambda tmp: train(tmp, data_dir, *FINISHED_RUN_ARGS)) / "run"


FINISHED_RUN_ARGS = ("--config.num_epochs=3",)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills once per test session, shared by the xdist workers (the first builds it
    while the others wait on a file lock, then read it)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder above the workers' own
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(autouse=True)
def _registries_restored():
    """Statistics, distances and report sections a test registers are gone after it: with several test files
    in one worker process, another file's analysis would otherwise compute them too."""
    from jaxweights.report import html
    from jaxweights.weights import stats
    from jaxweights.weights.distances import registry

    saved = [(d, dict(d)) for d in (stats._REGISTRY, registry._REGISTRY, html._SECTIONS)]
    yield
    for d, before in saved:
        d.clear()
        d.update(before)
