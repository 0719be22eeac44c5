"""A few points of `benchmarks/fault_injection.py`, on a tiny chunked zoo: killed inside a checkpoint
write (the real console script, SIGKILL) and damaged (flipped bytes in the latest checkpoint, a truncated
chunk params.npz), each resumed to the bytes of an uninterrupted run. The script itself runs every phase
on the quick config.
"""

import importlib.util
import logging
import os
import shutil

import pytest

from jaxweights import cli
from tests.zoo import REPO

spec = importlib.util.spec_from_file_location("fault_injection", REPO / "benchmarks" / "fault_injection.py")
fi = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fi)

# 10 networks of a 784-16-10 MLP on 512 images, 3 epochs, in chunks of 8 (two chunks: 8 and 2)
ARGS = [
    "--config.max_train=512",
    "--config.max_test=500",
    "--config.model.hidden=(16,)",
    "--config.batch_size=64",
    "--config.init_scales=(1.0,)",
    "--config.num_epochs=3",
    "--config.chunk_size=8",
]


def train_here(workdir, data_dir):
    """The benchmark's train command, run in this process (it shares the compilation cache with the subprocesses)."""
    return cli.main(fi.command("train", workdir, data_dir, ARGS)[3:])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("fault-injection")
    ref = out / "reference"
    assert train_here(ref, data_dir) == 0
    assert sorted(p.name for p in (ref / "chunks").iterdir() if p.is_dir()) == ["00", "01"]
    return out, ref


def test_killed_inside_a_checkpoint_write_resumes_identical(setup, data_dir):
    out, ref = setup
    env = fi.environment(os.environ.get("JAX_COMPILATION_CACHE_DIR") or out / "xla-cache")
    outcome, same, details = fi.kill_case("checkpoint-write", ref, out, data_dir, env, ARGS)
    assert outcome.startswith("killed, resumed exit 0") and same, (outcome, details)


@pytest.mark.parametrize("what", ["flipped-checkpoint", "truncated-chunk-params.npz"])
def test_damaged_then_resumed_identical(setup, data_dir, caplog, what):
    out, ref = setup
    w = out / what
    shutil.copytree(ref, w)
    fi.DAMAGES[what](w, 3)
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert train_here(w, data_dir) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "jaxweights" and r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    if what == "flipped-checkpoint":
        assert "chunks/01: checkpoint epoch 2 is damaged (" in warned[0] and "resuming from epoch 1" in warned[0]
    else:
        assert "chunks/00/params.npz: not a readable .npz" in warned[0]
    assert fi.results(w) == fi.results(ref)
