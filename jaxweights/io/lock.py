"""One process at a time in a run directory: `workdir_lock`, an OS lock on `<workdir>/.jaxweights.lock`.

`train`, `analyze`, `prune` and `study` hold the lock of their directory for as long as they run.
A second process asking for it is refused at once (`WorkdirLockedError`) with the holder's pid,
host, command and start time, which the holder records in the lock file as JSON. The lock is a
`fcntl.flock` on the open file: the operating system drops it when the holder exits, however it
exits (`kill -9` included), so a lock left by a dead process never blocks. The file itself stays.

Within one process the lock is re-entrant (`study` trains then analyses a zoo; `train_and_evaluate`
calls `train_group` on the same directory). In a multi-host job (`jax.distributed` initialised),
process 0 alone takes the lock and every process learns whether it got it.

`flock` keeps hosts apart only where the file system passes locks between them: NFS (v4, and v3
with its lock manager) and CephFS do; Lustre only when mounted with `-o flock` (with `localflock`
the lock holds within a host only); some FUSE mounts not at all. Where `flock` fails outright
(ENOLCK, ENOSYS, EOPNOTSUPP), the command warns once and runs without the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger("jaxweights")

LOCK_NAME = ".jaxweights.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_HELD: dict[Path, list] = {}  # resolved workdir -> [fd or None, nesting count]
_GUARD = threading.Lock()


class WorkdirLockedError(RuntimeError):
    """Another process holds the run directory's lock; the message names the holder."""


def _main_process() -> bool:
    """True in a single-process run and in process 0 of a multi-host job (without starting a backend)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def holder(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The holder a run directory's lock file records: pid, host, command, argv, since.

    The record stays after its holder exits; only a refused `workdir_lock` shows it is current.

    Args:
      workdir: the run directory.

    Returns:
      The record, or None when the lock file is missing, empty or unreadable.
    """
    try:
        info = json.loads((Path(workdir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(workdir: Path) -> str:
    """One line naming the current holder (read again briefly if caught while it writes its record)."""
    for _ in range(5):
        h = holder(workdir)
        if h is not None:
            return (
                f"{workdir}: in use by pid {h.get('pid', '?')} on host {h.get('host', '?')} "
                f"(jaxweights {h.get('command', '?')}) since {h.get('since', '?')}; wait for it to finish or stop it"
            )
        time.sleep(0.02)
    return f"{workdir}: in use by another process (it has not recorded who it is); wait for it to finish or stop it"


def _acquire(workdir: Path, command: str) -> int | None:
    """Takes the lock (this process being the only one asking); returns its fd, None where unsupported."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirLockedError(_describe(workdir)) from None
    except OSError as e:
        os.close(fd)
        if e.errno not in _UNSUPPORTED:
            raise
        log.warning("%s: the file system does not support locks (%s); running without the workdir lock", workdir, e)
        return None
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "argv": sys.argv,
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:  # while holding the lock: a reader sees the old record, an empty file or this one
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        os.close(fd)  # drops the lock
        raise
    return fd


def _release(fd: int | None) -> None:
    """Empties the record and drops the lock."""
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)  # closing the only descriptor of the open file releases the flock


def _agree(ok: bool) -> bool:
    """In a multi-host job, process 0's answer for every process; else `ok`."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:  # never starts a backend
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Holds the run directory's lock for the body of a `with` block.

    Creates `workdir` if needed. Re-entrant within a process: a nested `workdir_lock` of the same
    directory only counts. In a multi-host job call it in every process: process 0 takes the lock.

    Args:
      workdir: the run directory.
      command: what this process does there ("train", "analyze", "prune", "study"); recorded
        for a refused process to show.

    Yields:
      The lock file's path.

    Raises:
      WorkdirLockedError: another process holds the lock (one line naming its pid, host, command
        and start time); raised at once, in every process of a multi-host job.
    """
    workdir = Path(workdir)
    key = workdir.resolve()
    with _GUARD:
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        fd, error = None, None
        if _main_process():
            try:
                fd = _acquire(workdir, command)
            except Exception as e:  # every process must hear of it before raising
                error = e
        if not _agree(error is None):
            raise error or WorkdirLockedError(f"{workdir}: in use by another process (process 0 was refused)")
        with _GUARD:
            _HELD[key] = entry = [fd, 1]
    try:
        yield workdir / LOCK_NAME
    finally:
        with _GUARD:
            entry[1] -= 1
            done = entry[1] == 0
            if done:
                del _HELD[key]
        if done:
            _release(entry[0])
