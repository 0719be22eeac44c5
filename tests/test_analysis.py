"""`jaxweights analyze` on a trained zoo: the files it writes and their agreement with the library."""

import numpy as np
import pandas as pd
import pytest

from jaxweights import cli, distances, rundir, stats, strength
from tests.test_cli import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("zoo")
    assert train(tmp, data_dir, "--config.num_epochs=1", "--config.learning_rates=(0.01,0.1)") == 0
    return tmp / "run"


def test_analyze_writes_stats_strength_and_distances(trained):
    assert cli.main(["analyze", "--workdir", str(trained), "--metrics", "wasserstein,ks", "--nodynamics"]) == 0
    out = trained / "analysis"
    table = pd.read_csv(out / "stats.csv")
    assert set(table.columns) >= {"network", "layer", "statistic", "value", "undefined"}
    assert set(table.network) == {0, 1, 2, 3}
    assert {"Dense_0/kernel", "Dense_0", "__all__", "input"} <= set(table.layer)
    params = rundir.load_params(trained / "params.npz")
    k = np.asarray(params["Dense_0"]["kernel"], np.float64).reshape(4, -1)
    got = table[(table.layer == "Dense_0/kernel") & (table.statistic == "std")].sort_values("network").value
    np.testing.assert_allclose(got, k.std(axis=1), rtol=1e-5)
    with np.load(out / "distances" / "wasserstein.npz") as z:
        d = z["Dense_0/kernel"]
        assert d.shape == (4, 4) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    with np.load(out / "node_strength.npz") as z:
        assert z["Dense_0"].shape == (4, 16) and z["input"].shape == (4, 784)
    nets = pd.read_csv(out / "networks.csv")
    assert len(nets) == 4 and "test_acc" in nets


def test_reanalysis_replaces_atomically_and_bad_metric_keeps_old(trained, capsys):
    assert cli.main(["analyze", "--workdir", str(trained), "--metrics", "ks", "--nodynamics"]) == 0
    before = (trained / "analysis" / "stats.csv").read_bytes()
    assert cli.main(["analyze", "--workdir", str(trained), "--metrics", "no_such_metric", "--nodynamics"]) == 2
    assert "no_such_metric" in capsys.readouterr().err
    assert (trained / "analysis" / "stats.csv").read_bytes() == before
    assert not list(trained.glob(".analysis-*"))


def test_analyze_refuses_a_folder_without_params(tmp_path, capsys):
    assert cli.main(["analyze", "--workdir", str(tmp_path)]) == 2
    assert "no params.npz" in capsys.readouterr().err


def test_statistics_and_distances_of_real_trained_weights_equal_scipy(trained, x64):
    import jax
    import scipy.stats as ss
    params = jax.tree.map(lambda a: a.astype(np.float64), rundir.load_params(trained / "params.npz"))
    k = np.asarray(params["Dense_0"]["kernel"], np.float64).reshape(4, -1)
    table = stats.compute_statistics(params, statistics=["skewness", "kurtosis", "quantiles"])
    rows = table[table.layer == "Dense_0/kernel"].pivot(index="network", columns="statistic", values="value")
    np.testing.assert_allclose(rows["skewness"], ss.skew(k, axis=1), rtol=1e-5)
    np.testing.assert_allclose(rows["kurtosis"], ss.kurtosis(k, axis=1), rtol=1e-5)
    np.testing.assert_allclose(rows["q50"], np.median(k, axis=1), rtol=1e-5)
    for metric, ref in [("wasserstein", ss.wasserstein_distance), ("ks", lambda u, v: ss.ks_2samp(u, v).statistic)]:
        d = distances.pairwise(params, metric, layers=["Dense_0/kernel"])["Dense_0/kernel"]
        for i, j in [(0, 1), (0, 3), (2, 3)]:
            np.testing.assert_allclose(d[i, j], ref(k[i], k[j]), rtol=1e-5)
    ns = strength.node_strength(params)
    b = np.asarray(params["Dense_0"]["bias"], np.float64)
    k1 = np.asarray(params["Dense_1"]["kernel"], np.float64)
    hidden = np.asarray(params["Dense_0"]["kernel"], np.float64).sum(1) + b + k1.sum(2)
    np.testing.assert_allclose(ns["Dense_0"], hidden, rtol=1e-5)
