"""A line at least every ten seconds while a long step runs; nested steps speak one at a time."""

import logging
import time

from jaxweights.pipelines import heartbeat


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "jaxweights"]


def test_a_step_speaks_every_interval_and_says_when_it_is_done(caplog):
    assert heartbeat.EVERY == 10  # the promise: no silence longer than ten seconds
    with caplog.at_level(logging.INFO, logger="jaxweights"), heartbeat.step("zoo: distances", every=0.05):
        time.sleep(0.5)
    lines = _lines(caplog)
    assert lines[0] == "zoo: distances" and lines[-1].startswith("zoo: distances: done in ")
    beats = [ln for ln in lines if ln.startswith("zoo: distances: still running (")]
    assert 2 <= len(beats) <= 11, lines  # about one per 0.05 s of the 0.5 s (fewer on a loaded machine)


def test_a_short_step_is_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="jaxweights"), heartbeat.step("zoo: figures", every=5):
        pass
    assert _lines(caplog) == ["zoo: figures"]


def test_only_the_innermost_step_speaks(caplog):
    with caplog.at_level(logging.INFO, logger="jaxweights"), heartbeat.step("outer", every=0.05):
        with heartbeat.step("inner", every=0.05):
            time.sleep(0.4)
        inner_done = len(caplog.records)
        time.sleep(0.3)
    lines = _lines(caplog)
    during = lines[: inner_done - 1]
    assert not [ln for ln in during if ln.startswith("outer: still running")], during
    assert [ln for ln in during if ln.startswith("inner: still running")]
    # once the inner step ended, the outer one speaks again
    assert [ln for ln in lines[inner_done:] if ln.startswith("outer: still running")], lines


def test_a_failing_step_stops_speaking(caplog):
    try:
        with caplog.at_level(logging.INFO, logger="jaxweights"), heartbeat.step("bad", every=0.02):
            raise KeyError("x")
    except KeyError:
        pass
    n = len(caplog.records)
    time.sleep(0.1)
    assert len(caplog.records) == n and heartbeat._active == []
