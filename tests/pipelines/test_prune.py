"""`jaxweights prune`: removes the hidden layers flagged by modularity (Lu et al. 2022), retrains, compares."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from jaxweights import cli, dynamics
from jaxweights.pipelines import prune


def test_prune_cli(dynamics_zoo, data_dir, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dynamics_zoo[0], run)  # prune writes into the run directory
    assert (
        cli.main(["prune", "--workdir", str(run), "--layers", "Dense_1", "--data_dir", str(data_dir), "--noprogress"])
        == 0
    )
    report = pd.read_csv(run / "pruned" / "prune.csv")
    m = pd.read_csv(run / "metrics.csv")
    np.testing.assert_allclose(report.test_acc_original, m[m.epoch == 2].sort_values("network").test_acc)
    np.testing.assert_allclose(report.delta, report.test_acc_pruned - report.test_acc_original)
    with np.load(run / "pruned" / "params.npz") as z:
        assert z["Dense_0/kernel"].shape == (4, 784, 32) and z["Dense_1/kernel"].shape == (4, 32, 10)
    info = json.loads((run / "pruned" / "prune.json").read_text())
    assert info["hidden_before"] == [32, 16] and info["hidden_after"] == [32]
    assert "pruned zoo" in capsys.readouterr().out
    assert cli.main(["prune", "--workdir", str(run), "--layers", "Dense_2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Dense_2" in err[0] and "not a hidden layer" in err[0]


def test_prune_candidates_average_the_callers_optimal_networks(dynamics_zoo, data_dir):
    """With masks, the zoo curve is the mean of those networks' final modularity (as modularity.csv has it)."""
    run, out = dynamics_zoo
    optimal, exclude = np.array([True, True, False, True]), np.array([False, False, False, True])
    layers, info = prune.candidate_layers(
        run, probe_size=200, data_dir=str(data_dir), optimal_N=optimal, exclude_N=exclude
    )
    assert info["networks"] == [0, 1]
    mod = pd.read_csv(out / "modularity.csv")
    ref = mod[(mod.epoch == 2) & mod.network.isin([0, 1])].groupby("depth").modularity.mean().to_numpy()
    np.testing.assert_allclose(info["curve"], ref, atol=1e-5)
    assert layers == dynamics.pruning_candidates(ref, info["depth_names"], info["tol"])
    with pytest.raises(dynamics.DynamicsError, match="optimal_N"):
        prune.candidate_layers(run, probe_size=200, data_dir=str(data_dir), optimal_N=np.ones(3, bool))
