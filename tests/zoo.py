"""A tiny zoo and a runner for code on several simulated devices, shared by tests and their subprocesses.

Runs on several devices happen in subprocesses, because the simulated device count
(`XLA_FLAGS=--xla_force_host_platform_device_count`) must be set before JAX starts. A subprocess
imports this module (`from tests.zoo import *`) to get the same `tiny` config as the test.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

from jaxweights import cli
from jaxweights import config as config_lib

REPO = Path(__file__).resolve().parents[1]
N_NETS = 13  # does not divide 8: padded to 16 on 8 devices

METRICS = ("wasserstein", "ks", "energy", "jensenshannon", "kde_kl")
# the built-ins, named: other tests may register more in this process
STATISTICS = (
    "mean",
    "std",
    "var",
    "skewness",
    "kurtosis",
    "quantiles",
    "l1",
    "l2",
    "max_abs",
    "rms",
    "near_zero",
    "spectral_norm",
    "stable_rank",
    "histogram",
)
STAT_METRICS = ("euclidean", "cosine")
OTHER_METRICS = ("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean")


def other_population(params):
    """Another population: 5 networks, rescaled (so the distances are not those within the zoo)."""
    return jax.tree.map(lambda a: np.asarray(a)[:5] * 1.5, params)


def tiny(data_dir, **kw):
    """A tiny zoo: 13 networks (seeds) × 2 epochs of a 784-16-10 MLP on 512 MNIST images."""
    c = config_lib.default_config()
    c.data_dir, c.max_train, c.max_test = str(data_dir), 512, 500
    c.model.hidden, c.batch_size, c.num_epochs = (16,), 64, 2
    c.num_seeds, c.learning_rates = N_NETS, (0.05,)
    for k, v in kw.items():
        c[k] = v
    return c


def subprocess_on(code: str, *, devices: int, env: dict | None = None) -> subprocess.Popen:
    """Starts `code` (after `from tests.zoo import *`) in a fresh Python with `devices` simulated CPU devices."""
    full = {
        **os.environ,
        "XLA_FLAGS": " ".join(
            [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
            + [f"--xla_force_host_platform_device_count={devices}"]
        ),
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from tests.zoo import *\n" + textwrap.dedent(code)],
        cwd=REPO,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 240) -> str:
    """Waits for a subprocess; asserts it succeeded and returns its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


# A tiny quick start: `jaxweights train` flags that keep a config to seconds.
TINY = [
    "--config.max_train=512",
    "--config.max_test=500",
    "--config.model.hidden=(16,)",
    "--config.batch_size=64",
    "--config.num_seeds=2",
    "--config.init_scales=(1.0,)",
]


def train(tmp, data_dir, *extra, config="configs/quickstart.py", workdir="run"):
    """`jaxweights train` of a config made tiny (TINY) into `tmp/workdir`; returns the exit code."""
    argv = [
        "train",
        "--config",
        str(REPO / config),
        "--workdir",
        str(tmp / workdir),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        *TINY,
        *extra,
    ]
    return cli.main(argv)


# Claim tests made quick: few permutations and bootstrap draws (their p-values are not what these tests check).
QUICK_CLAIMS = ["--permutations", "200", "--bootstrap", "50"]


def analyze(workdir, *extra):
    """`jaxweights analyze --workdir workdir *extra` in-process; returns the exit code."""
    return cli.main(["analyze", "--workdir", str(workdir), *extra])
