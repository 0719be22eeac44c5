"""`jaxweights analyze` on a trained zoo: the files it writes and their agreement with the library."""

import numpy as np
import pandas as pd
import pytest

from jaxweights import claims, cli
from jaxweights.io import rundir
from jaxweights.pipelines import analyze
from jaxweights.weights import compute, distances, strength
from tests.zoo import train


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
    table = compute.compute_statistics(params, statistics=["skewness", "kurtosis", "quantiles"])
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


# ------------------------------------------- a constructed zoo with one exploded network (huge, finite weights)


def _zoo(exploded: bool):
    """4 hyperparameter cells × 4 seeds of a 20-8-10 MLP; the best cell's seeds nearly equal, the worst
    cell's far apart; with `exploded`, a 13th network at index 5 with finite weights of 1e20 (no
    `exploded` column: the analysis must recognise it from the weights)."""
    rng = np.random.default_rng(0)
    shapes = {"Dense_0/kernel": (20, 8), "Dense_0/bias": (8,), "Dense_1/kernel": (8, 10), "Dense_1/bias": (10,)}
    base = {k: rng.normal(0, 0.3, s) for k, s in shapes.items()}
    spread = {0.1: 0.01, 0.05: 0.05, 0.01: 0.15, 0.001: 0.4}  # learning rate -> seed-to-seed spread
    accs = {
        0.1: (0.95, 0.96, 0.97, 0.98),
        0.05: (0.9, 0.91, 0.92, 0.93),
        0.01: (0.6, 0.65, 0.7, 0.75),
        0.001: (0.4, 0.45, 0.5, 0.55),
    }
    nets, rows = [], []
    for lr, sd in spread.items():
        for seed in range(4):
            nets.append({k: v * (1 + sd * seed) + rng.normal(0, sd, v.shape) for k, v in base.items()})
            rows.append(
                {
                    "seed": seed,
                    "learning_rate": lr,
                    "init_scale": 1.0,
                    "test_acc": accs[lr][seed],
                    "test_loss": 1.0 - accs[lr][seed],
                }
            )
    if exploded:
        nets.insert(5, {k: v * 1e20 for k, v in base.items()})
        rows.insert(5, {"seed": 0, "learning_rate": 0.5, "init_scale": 3.0, "test_acc": 0.3, "test_loss": 2.0})
    params = {k: np.stack([n[k] for n in nets]).astype(np.float32) for k in shapes}
    last = pd.DataFrame(rows).assign(epoch=1, train_loss=0.5, train_acc=0.5, diverged=False)
    last.insert(0, "network", np.arange(len(last)))
    return params, last


def _summarise(tmp_path, name, exploded, **kw):
    params, last = _zoo(exploded)
    out = tmp_path / name
    out.mkdir()
    table = analyze.analyze_params(params, out, metrics=["wasserstein"])
    s, _ = analyze.zoo_summary(
        params, table, last, out, metrics=["wasserstein"], n_permutations=300, n_boot=50, folds=3, **kw
    )
    return s, out


@pytest.fixture(scope="module")
def exploded_zoo(tmp_path_factory):
    import logging

    tmp = tmp_path_factory.mktemp("exploded")
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: seen.append(r.getMessage())
    logging.getLogger("jaxweights").addHandler(handler)
    try:
        with_it = _summarise(tmp, "with", True)
    finally:
        logging.getLogger("jaxweights").removeHandler(handler)
    return with_it, _summarise(tmp, "without", False)[0], seen


def test_an_exploded_network_is_left_out_listed_and_changes_neither_headline_nor_figure_scales(exploded_zoo):
    import scipy.stats as ss

    (s, out), clean, seen = exploded_zoo
    undefined = [m for m in seen if "undefined" in m]
    # the exploded network's statistics are defined (moments of rescaled weights do not overflow float32)
    assert not any("(5" in m for m in undefined), undefined
    st = pd.read_csv(out / "stats.csv")
    assert not st[st.network == 5].undefined.astype(bool).any()
    assert s["n_exploded"] == 1 and s["n_kept"] == 16 and clean["n_exploded"] == 0
    (ex,) = s["excluded"]
    assert ex["network"] == 5 and ex["state"] == "exploded" and ex["learning_rate"] == 0.5 and "max |w|" in ex["why"]
    groups = pd.read_csv(out / "groups.csv").set_index("network")
    assert groups.group[5] == "exploded" and not groups.analysed[5]
    # the headline is that of the zoo without it, and equals scipy's W1 over the optimal pairs
    for k in ("verdict", "within_optimal", "within_suboptimal", "p_greater", "ratio"):
        assert s["claim"][k] == clean["claim"][k], k
    params, _ = _zoo(False)
    flat = np.concatenate([params[k].reshape(16, -1).astype(np.float64) for k in sorted(params)], 1)
    opt = [0, 1, 2, 3]  # the learning rate 0.1 cell is the best
    ref = np.mean([ss.wasserstein_distance(flat[i], flat[j]) for i in opt for j in opt if i < j])
    np.testing.assert_allclose(s["claim"]["within_optimal"], ref, rtol=1e-4)
    # the best cell's 4 seeds are the closest of all C(8, 4) = 70 splits: the exact one-sided p is 1/70
    assert s["claim"]["exact"] and s["claim"]["p_greater"] == pytest.approx(1 / 70)
    # sensitivity: the in-force row is the headline; including the exploded network is a row of its own
    sens = pd.DataFrame(s["sensitivity"])
    top = sens[sens.in_force].iloc[0]
    assert top.n_analysed == 16 and top.p_value == s["claim"]["p_value"]
    assert set(sens[sens.exploded == "included"].n_analysed.dropna()) == {17}
    # figure scales from the 16 healthy networks only
    wmax = max(float(np.abs(v).max()) for v in params.values())
    h = pd.read_csv(out / "figures" / "weight_histograms.csv")
    assert len(set(h.network)) == 16
    assert h[["bin_left", "bin_right"]].abs().to_numpy().max() <= wmax
    k = pd.read_csv(out / "figures" / "kde_by_bin.csv")
    assert k.x.abs().max() <= wmax
    d = pd.read_csv(out / "figures" / "distance_heatmap.csv")
    assert 5 not in set(d.row_network) and d.distance.max() < 10
    sv = pd.read_csv(out / "figures" / "statistics_vs_accuracy.csv")
    assert 5 not in set(sv.network) and sv.value.abs().max() < 1e3
    m = pd.read_csv(out / "figures" / "weight_matrices.csv")
    assert m.value.abs().max() <= wmax and 5 not in set(m.network)


def test_include_exploded_puts_it_back_in_the_suboptimal_group():
    params, last = _zoo(True)
    g = claims.network_groups(last, params).set_index("network")
    assert g.state[5] == "exploded" and not g.analysed[5] and g.group[5] == "exploded"
    g = claims.network_groups(last, params, include_exploded=True).set_index("network")
    assert g.analysed.sum() == 17 and g.state[5] == "exploded" and g.group[5] == "suboptimal"
    # the run's own `exploded` column wins over the weight rule
    g = claims.network_groups(last.assign(exploded=False), params).set_index("network")
    assert g.state[5] == "ok" and g.analysed[5]
    # a network at chance is its own group, not the bottom of "suboptimal"
    g = claims.network_groups(last.assign(test_acc=last.test_acc.where(last.network != 0, 0.11)), params)
    assert g.set_index("network").group[0] == "not_learned"


def test_undefined_statistics_name_the_right_reason():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(4, 6, 5)).astype(np.float32)
    k[1, 0, 0] = np.nan  # non-finite weights
    k[2] = 0.0  # all-zero kernel: zero variance
    k[3] *= np.float32(1e35)  # finite, but a float32 sum over the layer can overflow
    table = pd.DataFrame({"network": [0, 1, 2, 3], "undefined": [False, True, True, True]})
    r = claims.undefined_reasons(table, {"Dense_0/kernel": k}).set_index("network").reason
    assert r.to_dict() == {1: "non-finite weights", 2: "zero variance or all-zero kernel", 3: "float32 overflow"}
