"""A line at least every ten seconds while a long step runs: nobody should wonder whether it hangs."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("jaxweights")

EVERY = 10.0  # seconds between two lines of one step
_active: list[str] = []  # the steps running now, innermost last: only the innermost one speaks
_lock = threading.Lock()


@contextlib.contextmanager
def step(what: str, every: float | None = None) -> Iterator[None]:
    """Logs `what`, then `what: still running (N s)` every `every` seconds until the block ends.

    Nested steps: only the innermost one logs while it runs (its line names it); the outer one
    goes on when it ends. A step that took at least `every` seconds ends with `what: done in N s`.

    Args:
      what: the step, as the user should read it (e.g. "run: learning dynamics").
      every: seconds between two lines (default `EVERY`).

    Yields:
      Nothing; the block is the step.
    """
    every = EVERY if every is None else every
    log.info("%s", what)
    start = time.monotonic()
    stop = threading.Event()
    token = f"{what}#{id(stop)}"
    with _lock:
        _active.append(token)

    def beat() -> None:
        while not stop.wait(every):
            with _lock:
                innermost = bool(_active) and _active[-1] == token
            if innermost:
                log.info("%s: still running (%.0f s)", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, name="jaxweights-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with _lock:
            _active.remove(token)
        took = time.monotonic() - start
        if took >= every:
            log.info("%s: done in %.0f s", what, took)
