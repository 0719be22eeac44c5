"""What a new user meets first: the answer without data or network, the help texts, a mistyped key."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.zoo import REPO


def test_train_without_data_and_network_fails_in_seconds(tmp_path):
    """The quick start offline: one line with where it looked and the three ways, not minutes of retries."""
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("this machine has MNIST in the system location")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "jaxweights_data_dir")}
    # every connection goes to a proxy on a closed local port: the network is unreachable for this process
    env |= {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env |= {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "jaxweights.cli", "train", "--config", str(REPO / "configs/quickstart.py:quick")]
    start = time.perf_counter()
    out = subprocess.run(
        [*argv, "--workdir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 2, out.stderr
    assert elapsed < 10, f"{elapsed:.1f} s"
    errors = [ln for ln in out.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and errors[0] == out.stderr.strip().splitlines()[-1], out.stderr
    msg = errors[0]
    assert msg.startswith("jaxweights train: error: mnist: dataset not found (no data folder given"), msg
    assert "/usr/share/datasets/mnist (no such directory)" in msg
    assert f"not in {tmp_path / 'tfds' / 'mnist'}" in msg and "cannot reach 127.0.0.1:9" in msg
    assert "(1) put mnist.npz" in msg and "(2) put them in /usr/share/datasets/mnist" in msg
    assert "(3) with internet access" in msg and "install tensorflow-datasets" not in msg
    assert "Retrying" not in out.stderr and "Dl Completed" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()
