"""The workdir lock: a second process is refused at once, naming the holder; a killed holder never blocks."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxweights import cli
from jaxweights.io import lock
from tests.zoo import REPO, train

HOLD = """
    import sys, time
    from jaxweights.io.lock import workdir_lock
    with workdir_lock(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(120)
"""


def _hold(workdir) -> subprocess.Popen:
    """A process holding `workdir`'s lock (as `train` would) until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    assert line == "held\n", line + proc.stdout.read() if proc.poll() is not None else line
    return proc


def _others_can_lock(workdir) -> bool:
    """Whether a fresh process gets the lock file's flock (the OS's answer, not this module's)."""
    code = (
        "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(workdir / lock.LOCK_NAME)]).returncode == 0


@pytest.fixture
def held(tmp_path):
    """A workdir with a finished run's files (stand-ins) and another process holding its lock."""
    run = tmp_path / "run"
    run.mkdir()
    files = {name: f"{name} of the run in progress\n".encode() for name in ("config.json", "metrics.csv", "params.npz")}
    for name, data in files.items():
        (run / name).write_bytes(data)
    proc = _hold(run)
    yield run, proc, files
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["train", "--overwrite"],
        ["analyze", "--nodynamics"],
        ["prune"],
        ["study", "--config", str(REPO / "configs/studies/optimal_vs_suboptimal.py:quick")],
    ],
    ids=["train", "train-overwrite", "analyze", "prune", "study"],
)
def test_a_second_process_is_refused_at_once_naming_the_holder(held, data_dir, capsys, command):
    run, proc, files = held
    start = time.monotonic()
    if command[0] == "train":
        code = train(run.parent, data_dir, *command[1:], workdir=run.name)
    else:
        code = cli.main([command[0], "--workdir", str(run), *command[1:]])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{run}: in use by pid {proc.pid} on host " in err and "(jaxweights train) since 20" in err, err
    assert elapsed < 10  # refused before loading any data or compiling anything
    assert {name: (run / name).read_bytes() for name in files} == files  # --overwrite deleted nothing
    assert sorted(p.name for p in run.iterdir()) == sorted([*files, lock.LOCK_NAME])


def test_the_lock_file_records_the_holder(held):
    run, proc, _ = held
    info = lock.holder(run)
    assert info["pid"] == proc.pid and info["command"] == "train" and info["host"] == os.uname().nodename
    assert info["since"].endswith("+00:00")  # ISO 8601, UTC


def test_a_killed_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    proc = _hold(run)
    with pytest.raises(lock.WorkdirLockedError):
        with lock.workdir_lock(run, "analyze"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.holder(run)["pid"] == proc.pid  # the dead holder's record is still there...
    with lock.workdir_lock(run, "analyze") as path:  # ...but the lock went with the process
        assert path == run / lock.LOCK_NAME
        assert lock.holder(run)["pid"] == os.getpid() and lock.holder(run)["command"] == "analyze"
    assert lock.holder(run) is None  # a clean release empties the record


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    run = tmp_path / "new" / "run"  # created by the lock
    with lock.workdir_lock(run, "study"):
        with lock.workdir_lock(run, "train"):  # e.g. study trains, then analyses, the same folder
            assert not _others_can_lock(run)
            assert lock.holder(run)["command"] == "study"  # the outer holder's record is kept
        assert not _others_can_lock(run)  # the inner exit does not release the outer hold
    assert _others_can_lock(run)


def test_an_exception_inside_releases_the_lock(tmp_path):
    with pytest.raises(KeyError):
        with lock.workdir_lock(tmp_path, "train"):
            raise KeyError("boom")
    assert _others_can_lock(tmp_path)
    fd = os.open(tmp_path / lock.LOCK_NAME, os.O_RDWR)  # and this process may take it again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert lock.holder(tmp_path) is None
