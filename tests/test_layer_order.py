"""Imported files keep their stored (insertion) order; nothing sorts layer names."""

import numpy as np

from jaxweights import importers, stats, strength


def test_imported_npz_keeps_its_stored_order(tmp_path):
    rng = np.random.default_rng(0)
    # names sort opposite to the stored (execution) order, and Dense_10 sorts before Dense_2
    names = ["z_in", "Dense_2", "Dense_10", "a_out"]
    sizes = [5, 4, 4, 3, 2]
    arrays = {}
    for name, (a, b) in zip(names, zip(sizes[:-1], sizes[1:])):
        arrays[f"{name}/kernel"] = rng.normal(size=(3, a, b)).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(size=(3, b)).astype(np.float32)
    np.savez(tmp_path / "w.npz", **arrays)
    flat = importers.read(tmp_path / "w.npz", stacked=True)
    assert stats.layer_order(flat) == names
    ns = strength.node_strength(flat)
    assert list(ns) == ["input", *names]
    np.testing.assert_allclose(ns["input"], arrays["z_in/kernel"].sum(2), rtol=1e-6)
