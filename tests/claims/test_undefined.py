"""Undefined statistics: one warning per cause, counting distinct networks, the details in a file."""

import logging

import numpy as np
import pandas as pd

from jaxweights import claims
from jaxweights.dynamics.trajectories import statistics_over_epochs


def snapshots():
    """Two epochs of 4 networks (Dense_0, Dense_1): network 1 NaN throughout, network 2's Dense_1 all zero at epoch 1."""
    rng = np.random.default_rng(0)
    out = []
    for epoch in range(2):
        s = {
            "Dense_0/kernel": rng.normal(size=(4, 6, 5)).astype(np.float32),
            "Dense_0/bias": rng.normal(size=(4, 5)).astype(np.float32),
            "Dense_1/kernel": rng.normal(size=(4, 5, 3)).astype(np.float32),
            "Dense_1/bias": rng.normal(size=(4, 3)).astype(np.float32),
        }
        for k in s:
            s[k][1].flat[0] = np.nan  # a few NaN weights in every leaf of network 1
        if epoch == 1:
            s["Dense_1/kernel"][2] = 0.0
            s["Dense_1/bias"][2] = 0.0
        out.append(s)
    return out


def test_one_warning_per_cause_counts_networks_not_network_epoch_rows(tmp_path, caplog):
    path = tmp_path / "warnings.csv"
    with caplog.at_level(logging.WARNING, logger="jaxweights"):
        # as the analysis computes the dynamics: the per-(network × snapshot) lines silenced, one line per cause
        with claims.quiet_undefined(non_finite=True) as f:
            table = statistics_over_epochs(snapshots(), node_strength=False)
        assert table.undefined.any() and f.dropped >= 1
        lines = claims.warn_undefined("learning dynamics", table, path)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == lines and len(lines) == 2, logged
    non_finite, no_variance = lines
    # network 1 is NaN at both epochs: one network, not two (network, epoch) rows
    assert "in 1 network(s) (1) and " in non_finite and "because of non-finite weights" in non_finite
    assert "in 1 network(s) (2) and " in no_variance and "because of zero variance or all-zero kernel" in no_variance
    assert all(f"details in {path}" in ln for ln in lines)
    d = pd.read_csv(path)
    assert list(d.columns) == ["reason", "statistic", "layer", "network", "rows"]
    assert set(d[d.reason == "non-finite weights"].network) == {1}
    assert set(d[d.reason == "zero variance or all-zero kernel"].network) == {2}
    assert (d[d.reason == "non-finite weights"].rows == 2).all()  # both epochs
    assert set(d[d.network == 2].layer) <= {"Dense_1", "Dense_1/kernel", "Dense_1/bias"}
    # the counts in the lines are those of the file
    n_layers = d[d.reason == "non-finite weights"].layer.nunique()
    assert f"and {n_layers} layer(s)" in non_finite


def test_nothing_undefined_writes_nothing(tmp_path):
    table = statistics_over_epochs(snapshots()[:1], node_strength=False)
    table = table[table.network == 0]
    assert claims.warn_undefined("x", table, tmp_path / "w.csv") == [] and not (tmp_path / "w.csv").exists()


def test_the_lines_name_the_path_given_to_show(tmp_path):
    table = statistics_over_epochs(snapshots(), node_strength=False)
    lines = claims.warn_undefined("x", table, tmp_path / "w.csv", shown="analysis/warnings.csv")
    assert all(ln.endswith("details in analysis/warnings.csv") for ln in lines) and (tmp_path / "w.csv").is_file()


def test_a_trained_zoo_with_a_nan_network_gets_one_line_per_cause(dynamics_zoo, tmp_path, caplog):
    """The real snapshots of a trained zoo plus two NaN networks: the non-finite line counts 2 networks (not 2 × epochs)."""
    from jaxweights import dynamics

    run, _ = dynamics_zoo
    epochs, snaps = dynamics.load_snapshots(run)
    n = next(iter(snaps[0].values())).shape[0]
    bad = []
    for snap in snaps:
        nan = {k: v[:2].copy() for k, v in snap.items()}
        nan["Dense_0/kernel"][:] = np.nan
        bad.append({k: np.concatenate([snap[k], nan[k]]) for k in snap})
    path = tmp_path / "warnings.csv"
    with caplog.at_level(logging.WARNING, logger="jaxweights"):
        with claims.quiet_undefined(non_finite=True):
            table = statistics_over_epochs(bad, epochs)
        lines = claims.warn_undefined("learning dynamics", table, path)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("jax")]
    assert logged == lines and len(epochs) >= 2, logged
    (non_finite,) = [ln for ln in lines if "non-finite weights" in ln]
    assert f"in 2 network(s) ({n}, {n + 1}) and " in non_finite, non_finite
    d = pd.read_csv(path)
    nf = d[d.reason == "non-finite weights"]
    assert set(nf.network) == {n, n + 1} and (nf.rows == len(epochs)).all()
    assert {"Dense_0", "Dense_0/kernel"} <= set(nf.layer) and not {"Dense_0/bias", "Dense_1/kernel"} & set(nf.layer)
    assert f"and {nf.layer.nunique()} layer(s)" in non_finite
