"""Representations: `capture` against a hand-written float64 forward pass; `capture_zoo` compiles once."""

import chex
import numpy as np

from jaxweights import dynamics
from jaxweights.dynamics import activations
from jaxweights.models import paths


def test_capture_equals_manual_forward_and_vmap_equals_loop(dynamics_zoo, data_dir):
    run, _ = dynamics_zoo
    setup, xp, _, _, _ = dynamics.probe_data(run, 200, str(data_dir))
    _, snaps = dynamics.load_snapshots(run)
    p = snaps[-1]
    reps = dynamics.capture_zoo(setup.model, p, xp[:50], chunk=3)
    assert list(reps) == ["input", "Dense_0", "Dense_1", "Dense_2"]
    x = np.asarray(xp[:50], np.float64).reshape(50, -1)
    for net in range(4):
        h0 = np.maximum(x @ p["Dense_0/kernel"][net] + p["Dense_0/bias"][net], 0)
        h1 = np.maximum(h0 @ p["Dense_1/kernel"][net] + p["Dense_1/bias"][net], 0)
        logits = h1 @ p["Dense_2/kernel"][net] + p["Dense_2/bias"][net]
        np.testing.assert_allclose(reps["input"][net], x, atol=1e-6)
        np.testing.assert_allclose(reps["Dense_0"][net], h0, atol=1e-4)
        np.testing.assert_allclose(reps["Dense_1"][net], h1, atol=1e-4)
        np.testing.assert_allclose(reps["Dense_2"][net], logits, atol=1e-3)
        one = dynamics.capture(setup.model, paths.unflatten({k: v[net] for k, v in p.items()}), xp[:50])
        for k in reps:
            np.testing.assert_allclose(reps[k][net], one[k], rtol=1e-5, atol=1e-5)


def test_capture_zoo_compiles_once_for_every_snapshot(dynamics_zoo, data_dir, monkeypatch):
    """The dynamics capture every snapshot of a block of networks: one trace for all of them."""
    run, _ = dynamics_zoo
    setup, xp, _, _, _ = dynamics.probe_data(run, 200, str(data_dir))
    _, snaps = dynamics.load_snapshots(run)
    activations._cached_program.cache_clear()  # a program built by an earlier test would hide a retrace
    chex.clear_trace_counter()
    monkeypatch.setattr(activations, "_capture_networks", chex.assert_max_traces(activations._capture_networks, n=1))
    try:
        out = [dynamics.capture_zoo(setup.model, s, xp[:40], chunk=2) for s in snaps]  # 3 epochs
    finally:
        activations._cached_program.cache_clear()
    assert len(out) == 3 and all(list(o) == ["input", "Dense_0", "Dense_1", "Dense_2"] for o in out)
    x = np.asarray(xp[:40], np.float64).reshape(40, -1)
    for s, o in zip(snaps, out):  # each call used its own snapshot
        h0 = np.maximum(x @ s["Dense_0/kernel"][1] + s["Dense_0/bias"][1], 0)
        np.testing.assert_allclose(o["Dense_0"][1], h0, atol=1e-4)
