"""Reliability of `jaxweights train` and `analyze`: kills, divergence, full disks, determinism.

The kill test runs the real console script in a subprocess, SIGKILLs it at several points of a
run (start-up, inside a checkpoint write, right after metrics.csv is written, during an epoch,
inside the last checkpoint write), resumes each time, and compares the final files byte for byte
with an uninterrupted run. Faults such as a full or read-only disk are injected in-process.
"""

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxweights import cli
from jaxweights.io import atomic, checkpoints, rundir
from jaxweights.models import paths
from jaxweights.weights import distances

REPO = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "jaxweights"
TINY = [
    "--config.max_train=512",
    "--config.max_test=500",
    "--config.model.hidden=(16,)",
    "--config.batch_size=64",
    "--config.num_seeds=2",
    "--config.init_scales=(1.0,)",
    "--noprogress",
]
RUN_FILES = ("config.json", "hparams.csv", "metrics.csv", "params.npz")


def train(workdir, data_dir, *extra):
    """`jaxweights train` in-process on a tiny MNIST slice; returns the exit code."""
    return cli.main(
        [
            "train",
            "--config",
            str(REPO / "configs/quickstart.py"),
            "--workdir",
            str(workdir),
            "--data_dir",
            str(data_dir),
            *TINY,
            *extra,
        ]
    )


def files_of(workdir):
    return {name: (Path(workdir) / name).read_bytes() for name in RUN_FILES}


def leftovers(workdir):
    """Temporary files or folders a run or an analysis left behind."""
    return sorted(
        str(p.relative_to(workdir))
        for p in Path(workdir).rglob("*")
        if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name or p.name.startswith(".analysis-")
    )


# ============================== kill and resume ==============================

# 64 networks·steps per epoch would finish before a poll could see it; 128 steps of a
# 784-128-10 MLP give epochs of a fraction of a second, long enough to aim at.
KILL_ARGS = [
    "--config.max_train=8192",
    "--config.max_test=500",
    "--config.model.hidden=(128,)",
    "--config.batch_size=64",
    "--config.num_seeds=2",
    "--config.init_scales=(1.0,)",
    "--config.learning_rates=(0.05,10000.0)",
    "--config.num_epochs=4",
    "--noprogress",
]


def _last_epoch(workdir):
    p = workdir / "metrics.csv"
    if not p.exists():
        return 0
    lines = p.read_text().strip().splitlines()
    return int(lines[-1].split(",")[7]) if len(lines) > 1 else 0


def _ckpt(workdir, epoch):
    return (workdir / "checkpoints" / str(epoch)).is_dir()


def _ckpt_tmp(workdir, epoch):
    d = workdir / "checkpoints"
    return d.is_dir() and any(re.match(rf"{epoch}\.orbax-checkpoint-tmp", n) for n in os.listdir(d))


# (name, condition on the workdir that triggers the SIGKILL); applied one after another, each
# to the process that resumes from the previous kill.
KILL_POINTS = [
    ("start-up, before the first checkpoint", lambda w: (w / "config.json").exists() and not _ckpt(w, 0)),
    ("inside the orbax write of checkpoint 1", lambda w: _ckpt_tmp(w, 1)),
    ("right after metrics.csv got epoch 2, before checkpoint 2", lambda w: _last_epoch(w) == 2 and not _ckpt(w, 2)),
    ("during epoch 3 (checkpoint 2 done)", lambda w: _ckpt(w, 2) and _last_epoch(w) == 2),
    ("inside the orbax write of the last checkpoint", lambda w: _ckpt_tmp(w, 4)),
]


def _cli(workdir, data_dir, env):
    cmd = [
        str(EXE),
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(workdir),
        "--data_dir",
        str(data_dir),
        *KILL_ARGS,
    ]
    return _popen(cmd, env)


def _popen(cmd, env=None):
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    proc.errfile = err
    return proc


def _stderr(proc):
    proc.errfile.seek(0)
    return proc.errfile.read().decode(errors="replace")[-3000:]


def _kill_when(proc, workdir, condition, timeout=240.0):
    """SIGKILLs `proc` as soon as `condition(workdir)` holds; returns what the workdir held then."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if condition(workdir):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return {
                "checkpoints": sorted(os.listdir(workdir / "checkpoints"))
                if (workdir / "checkpoints").is_dir()
                else [],
                "metrics_epoch": _last_epoch(workdir),
                "params": (workdir / "params.npz").exists(),
            }
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{_stderr(proc)}")
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"kill point not reached in {timeout} s:\n{_stderr(proc)}")


def test_sigkill_at_every_stage_then_resume_gives_identical_files(tmp_path, data_dir):
    # A persistent compilation cache makes each restart cheap; it replays the same executable.
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    full = _cli(tmp_path / "full", data_dir, env)
    assert full.wait(timeout=300) == 0, _stderr(full)

    cut, seen = tmp_path / "cut", []
    for name, condition in KILL_POINTS:
        proc = _cli(cut, data_dir, env)
        state = _kill_when(proc, cut, condition)
        assert proc.returncode == -signal.SIGKILL and not state["params"], (name, state)
        seen.append((name, state))
    print("\nkill points:", *(f"  {n}: {s}" for n, s in seen), sep="\n")
    assert any("orbax-checkpoint-tmp" in c for _, s in seen for c in s["checkpoints"])  # a half-written checkpoint
    assert seen[2][1]["metrics_epoch"] == 2 and "2" not in seen[2][1]["checkpoints"]  # metrics ahead of checkpoints

    last = _cli(cut, data_dir, env)
    assert last.wait(timeout=300) == 0, _stderr(last)
    assert "resuming after epoch 3" in _stderr(last)
    assert files_of(cut) == files_of(tmp_path / "full")  # byte for byte, params.npz included
    assert leftovers(cut) == []  # orbax's temporary folders were cleaned up on resume
    assert checkpoints.Checkpoints(cut).epochs() == [0, 1, 2, 3, 4]
    m = pd.read_csv(cut / "metrics.csv")
    assert m.diverged.any() and not m[m.learning_rate == 0.05].diverged.any()


# ============================== in-process runs ==============================


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted 3-epoch run whose grid has a diverging learning rate (10000)."""
    w = tmp_path_factory.mktemp("reference") / "run"
    assert train(w, data_dir, "--config.num_epochs=3", "--config.learning_rates=(0.05,10000.0)") == 0
    return w


def test_same_config_gives_byte_identical_files(tmp_path, data_dir, reference):
    assert train(tmp_path / "again", data_dir, "--config.num_epochs=3", "--config.learning_rates=(0.05,10000.0)") == 0
    assert files_of(tmp_path / "again") == files_of(reference)
    a, b = checkpoints.Checkpoints(tmp_path / "again"), checkpoints.Checkpoints(reference)
    for epoch in (1, 3):
        sa, sb = a.manager.restore(epoch), b.manager.restore(epoch)
        for k in ("Dense_0", "Dense_1"):
            np.testing.assert_array_equal(np.asarray(sa["params"][k]["kernel"]), np.asarray(sb["params"][k]["kernel"]))
        np.testing.assert_array_equal(np.asarray(sa["diverged"]), np.asarray(sb["diverged"]))


def test_a_diverging_network_never_touches_the_others(tmp_path, data_dir, reference):
    # The same grid with the diverging rate replaced by a benign one (same N), and without it (smaller N).
    assert train(tmp_path / "benign", data_dir, "--config.num_epochs=3", "--config.learning_rates=(0.05,0.1)") == 0
    assert train(tmp_path / "alone", data_dir, "--config.num_epochs=3", "--config.learning_rates=(0.05,)") == 0
    ref = pd.read_csv(reference / "metrics.csv")
    div = ref[ref.learning_rate == 10000.0]
    assert div.diverged.any() and not ref[ref.learning_rate == 0.05].diverged.any()
    # Marked from the first diverged epoch on, never un-marked.
    for _, g in div.groupby("network"):
        flags = g.sort_values("epoch").diverged.to_numpy()
        assert (np.diff(flags.astype(int)) >= 0).all()
    with np.load(reference / "params.npz") as z:
        ref_params = {k: z[k] for k in z.files}
    for other in ("benign", "alone"):
        m = pd.read_csv(tmp_path / other / "metrics.csv")
        a, b = m[m.learning_rate == 0.05].reset_index(drop=True), ref[ref.learning_rate == 0.05].reset_index(drop=True)
        # Same N: bitwise equal. Fewer networks change how XLA tiles the reductions over the
        # networks axis (bias gradients, the test-loss sum), so values agree to float32 rounding.
        exact = other == "benign"
        pd.testing.assert_frame_equal(a, b, check_exact=exact, rtol=1e-5, atol=1e-7)
        with np.load(tmp_path / other / "params.npz") as z:
            for k in z.files:  # networks 0 and 1 have lr 0.05 in every grid (seed innermost)
                if exact:
                    np.testing.assert_array_equal(z[k][:2], ref_params[k][:2])
                else:
                    np.testing.assert_allclose(z[k][:2], ref_params[k][:2], rtol=1e-5, atol=1e-7)
    # Diverged networks keep their last finite parameters from the epoch they diverged in on.
    ck = checkpoints.Checkpoints(reference)
    firsts = div[div.diverged].groupby("network").epoch.min()
    assert (firsts < 3).any()  # at least one network spends a whole epoch diverged
    for net, first in firsts.items():
        for epoch in range(first, 4):
            frozen = ck.manager.restore(epoch)["params"]
            for k, v in ref_params.items():
                layer, leaf = k.split("/")
                assert np.isfinite(v[net]).all()
                np.testing.assert_array_equal(v[net], np.asarray(frozen[layer][leaf])[net])


# ============================== full and read-only disks ==============================


class _HalfWriter:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _inject(monkeypatch, target, after, err, half=True):
    """Fail the (after+1)-th atomic write of a file named `target` with `err` (ENOSPC, EROFS, ...)."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    count, armed = {"n": 0}, set()

    def mkstemp(*a, prefix="", **kw):
        if prefix == f".{target}.":
            count["n"] += 1
            if count["n"] > after and not half:
                raise OSError(err, os.strerror(err), kw.get("dir"))
            fd, name = real_mkstemp(*a, prefix=prefix, **kw)
            if count["n"] > after:
                armed.add(fd)
            return fd, name
        return real_mkstemp(*a, prefix=prefix, **kw)

    def fdopen(fd, *a, **kw):
        f = real_fdopen(fd, *a, **kw)
        return _HalfWriter(f) if fd in armed else f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize(
    "target,after,err,half",
    [
        ("metrics.csv", 1, errno.ENOSPC, True),  # full disk halfway through epoch 2's metrics
        ("params.npz", 0, errno.EROFS, False),  # disk turned read-only before the final parameters
    ],
)
def test_full_or_read_only_disk_one_line_nothing_lost(
    tmp_path, data_dir, reference, monkeypatch, capsys, target, after, err, half
):
    args = ("--config.num_epochs=3", "--config.learning_rates=(0.05,10000.0)")
    w = tmp_path / "run"
    with monkeypatch.context() as mp:
        _inject(mp, target, after, err, half)
        assert train(w, data_dir, *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"cannot write {w / target}" in lines[0] and os.strerror(err) in lines[0]
    assert leftovers(w) == []
    if target == "metrics.csv":  # epoch 1's rows survive intact: a byte prefix of the full table
        saved = (w / "metrics.csv").read_bytes()
        assert _last_epoch(w) == 1 and (reference / "metrics.csv").read_bytes().startswith(saved)
        assert checkpoints.Checkpoints(w).epochs() == [0, 1]
    else:
        assert (w / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
        assert not (w / "params.npz").exists()
    assert train(w, data_dir, *args) == 0  # the disk is back: resume and finish
    assert files_of(w) == files_of(reference)


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    p = tmp_path / "table.csv"
    atomic.write_csv(p, pd.DataFrame({"a": [1, 2]}))
    before = p.read_bytes()
    with monkeypatch.context() as mp:
        _inject(mp, "table.csv", 0, errno.ENOSPC)
        with pytest.raises(OSError, match=f"cannot write {re.escape(str(p))}: No space left on device"):
            atomic.write_csv(p, pd.DataFrame({"a": range(10000)}))
    assert p.read_bytes() == before and leftovers(tmp_path) == []


def test_params_npz_is_streamed_and_equals_the_in_memory_bytes(tmp_path):
    """`write_params` writes the zip straight to the file: the same bytes as `npz_bytes`, read by np.load."""
    rng = np.random.default_rng(0)
    params = {
        "Dense_1": {"kernel": rng.normal(size=(3, 5, 4)).astype(np.float32), "bias": np.zeros((3, 4), np.float32)},
        "Dense_0": {"kernel": rng.normal(size=(3, 7, 5)).astype(np.float32)},
    }
    rundir.write_params(tmp_path / "params.npz", params)
    assert (tmp_path / "params.npz").read_bytes() == atomic.npz_bytes(paths.flatten(params))
    back = rundir.load_params(tmp_path / "params.npz")
    np.testing.assert_array_equal(back["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert sorted(np.load(tmp_path / "params.npz").files) == ["Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a result file is readable like any other file the user writes."""
    old = os.umask(0o022)
    try:
        atomic.write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    assert (
        stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644
    )


# ============================== analyze ==============================


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, data_dir):
    """A finished 1-epoch run of 4 networks (enough for the analysis's accuracy quantiles)."""
    w = tmp_path_factory.mktemp("zoo") / "run"
    assert train(w, data_dir, "--config.num_epochs=1", "--config.num_seeds=4", "--config.learning_rates=(0.05,)") == 0
    return w


@pytest.fixture
def analysed(tmp_path, zoo):
    """A copy of `zoo` with a first analysis done; returns (workdir, {file: bytes})."""
    import shutil

    w = tmp_path / "run"
    shutil.copytree(zoo, w)
    assert cli.main(["analyze", "--workdir", str(w), "--metrics", "wasserstein,ks", "--nodynamics"]) == 0
    snap = {str(p.relative_to(w)): p.read_bytes() for p in (w / "analysis").rglob("*") if p.is_file()}
    assert "analysis/stats.csv" in snap and "analysis/distances/wasserstein.npz" in snap
    return w, snap


def _analysis_files(w):
    return {str(p.relative_to(w)): p.read_bytes() for p in (w / "analysis").rglob("*") if p.is_file()}


def test_interrupted_or_failed_analyze_leaves_the_previous_analysis(analysed, monkeypatch, capsys):
    w, snap = analysed
    capsys.readouterr()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(distances, "write", interrupted)  # after stats.csv, before the distances
        assert cli.main(["analyze", "--workdir", str(w), "--metrics", "wasserstein", "--nodynamics"]) == 130
    assert _analysis_files(w) == snap and leftovers(w) == []
    capsys.readouterr()
    with monkeypatch.context() as mp:
        _inject(mp, "stats.csv", 0, errno.ENOSPC)
        assert cli.main(["analyze", "--workdir", str(w), "--metrics", "wasserstein", "--nodynamics"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stats.csv: No space left on device" in err[0], err
    assert _analysis_files(w) == snap and leftovers(w) == []


def test_sigkilled_analyze_leaves_the_previous_analysis(analysed):
    w, snap = analysed
    proc = _popen([str(EXE), "analyze", "--workdir", str(w), "--metrics", "wasserstein,ks,kde_kl", "--nodynamics"])
    t0 = time.monotonic()
    # Kill once the new analysis has its first file in the temporary folder.
    while not any((p / "stats.csv").exists() for p in w.glob(".analysis-*")):
        assert proc.poll() is None, _stderr(proc)
        assert time.monotonic() - t0 < 120
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _analysis_files(w) == snap
    # The killed analysis' temporary folder is removed by the next analysis, which then succeeds.
    assert leftovers(w) != []
    assert cli.main(["analyze", "--workdir", str(w), "--metrics", "ks", "--nodynamics"]) == 0
    assert leftovers(w) == [] and (w / "analysis" / "distances" / "ks.npz").exists()
