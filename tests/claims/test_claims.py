"""claims.py: each test statistic against scipy / scikit-learn / numpy loops, and on constructed
populations where the answer is known (one group tighter than the other, or both the same)."""

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from jaxweights import claims
from jaxweights.claims import EXCLUDED, MIDDLE, OPTIMAL, SUBOPTIMAL
from jaxweights.weights import distances


def population(rng, n_opt, n_sub, opt_spread, sub_spread, d=2000):
    """Stacked one-layer 'networks' whose weight std is 1 + spread·N(0,1) per network; optimal first."""
    scale = np.r_[1 + opt_spread * np.abs(rng.normal(size=n_opt)), 1 + sub_spread * np.abs(rng.normal(size=n_sub))]
    w = rng.normal(size=(n_opt + n_sub, d)) * scale[:, None]
    labels = np.r_[np.full(n_opt, OPTIMAL), np.full(n_sub, SUBOPTIMAL)]
    return {"Dense_0": {"kernel": w.reshape(-1, 40, d // 40).astype(np.float32)}}, labels


def test_spearman_kendall_are_scipys_and_nan_when_constant():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=17), 1)  # ties on purpose
    y = np.round(x + rng.normal(size=17), 1)
    ref = ss.spearmanr(x, y)
    np.testing.assert_allclose(claims.spearman(x, y), [ref.statistic, ref.pvalue], rtol=1e-12)
    np.testing.assert_allclose(claims.kendall_tau(x, y), ss.kendalltau(x, y).statistic, rtol=1e-12)
    assert np.isnan(claims.spearman(np.ones(5), np.arange(5))[0]) and np.isnan(claims.kendall_tau(np.ones(4), y[:4]))


def test_exact_permutation_test_equals_scipy():
    rng = np.random.default_rng(1)
    n = 10
    a = rng.normal(size=(n, 3))
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    labels = np.array([OPTIMAL] * 4 + [SUBOPTIMAL] * 5 + [MIDDLE])
    res = claims.permutation_test(d, labels, n_permutations=10_000)
    assert res.exact and res.n_permutations == 126  # C(9, 4)

    def t(o, s, axis=-1):  # the same statistic on index samples, for scipy
        o, s = o.astype(int), s.astype(int)
        w = lambda g: np.mean([d[i, j] for i, j in itertools.permutations(g, 2)])
        return w(s) - w(o)

    ref = ss.permutation_test(
        (np.arange(4.0), np.arange(4.0, 9.0)),
        t,
        permutation_type="independent",
        alternative="greater",
        n_resamples=10_000,
        vectorized=False,
    )
    ref_less = ss.permutation_test(
        (np.arange(4.0), np.arange(4.0, 9.0)),
        t,
        permutation_type="independent",
        alternative="less",
        n_resamples=10_000,
        vectorized=False,
    )
    np.testing.assert_allclose(res.statistic, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose([res.p_greater, res.p_less], [ref.pvalue, ref_less.pvalue], rtol=1e-12)
    g = claims.group_distances(d, labels)
    loop = lambda A, B: np.mean([d[i, j] for i in A for j in B if i != j])
    np.testing.assert_allclose(
        [g["within_optimal"], g["within_suboptimal"], g["across"]],
        [loop(range(4), range(4)), loop(range(4, 9), range(4, 9)), loop(range(4), range(4, 9))],
    )


def test_tighter_group_is_found_and_reversal_too():
    rng = np.random.default_rng(2)
    params, labels = population(rng, 12, 12, opt_spread=0.02, sub_spread=0.8)
    d = distances.pairwise(params, "wasserstein")
    table = claims.claim_table({"wasserstein": d}, labels, n_permutations=2000, n_boot=500)
    row = table.iloc[0]
    assert row.verdict == "holds" and row.p_greater < 0.01 and row.within_optimal < row.within_suboptimal
    assert row.ratio > 2 and 0 < row.ci_low < row.statistic < row.ci_high
    assert not row.exact and row.p_greater >= 1 / 2001
    # the same population with the labels swapped: the suboptimal group is the tight one
    rev = claims.claim_table({"wasserstein": d}, -labels, n_permutations=2000, n_boot=200).iloc[0]
    assert rev.verdict == "reversed" and rev.p_less < 0.01


def test_identical_groups_give_uniform_looking_p_values():
    ps = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        params, labels = population(rng, 8, 8, opt_spread=0.3, sub_spread=0.3)
        d = distances.pairwise(params, "ks")["Dense_0/kernel"]
        ps.append(claims.permutation_test(d, labels, n_permutations=1000, seed=seed).p_greater)
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 3 and 0.25 < ps.mean() < 0.75, ps


def _within(d, idx):
    """Mean distance over the pairs of different networks among the (resampled) positions `idx` (..., k)."""
    sub = d[idx[..., :, None], idx[..., None, :]]
    ne = idx[..., :, None] != idx[..., None, :]
    return (sub * ne).sum((-2, -1)) / ne.sum((-2, -1))


def test_bootstrap_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(3)
    params, labels = population(rng, 8, 9, 0.1, 0.5)
    d = np.asarray(distances.pairwise(params, "wasserstein")["Dense_0/kernel"], np.float64)
    ci = claims.bootstrap_ci(d, labels, n_boot=4000, seed=5)
    o, s = np.flatnonzero(labels == OPTIMAL), np.flatnonzero(labels == SUBOPTIMAL)
    # scipy.stats.bootstrap (percentile) on the networks' indices, each group resampled on its own
    ref = {}
    for name, data, stat in (
        ("within_optimal", (o,), lambda a, axis=-1: _within(d, a.astype(int))),
        ("difference", (o, s), lambda a, b, axis=-1: _within(d, b.astype(int)) - _within(d, a.astype(int))),
    ):
        r = ss.bootstrap(data, stat, n_resamples=4000, method="percentile", vectorized=True, random_state=9)
        ref[name] = (r.confidence_interval.low, r.confidence_interval.high)
    for name, (lo, hi) in ref.items():  # different draws: equal up to Monte Carlo error
        width = hi - lo
        assert width > 0
        np.testing.assert_allclose(ci[name], (lo, hi), atol=0.1 * width)


def test_bootstrap_interval_of_a_known_population():
    """Optimal networks pairwise at distance 1 (a simplex): every resample's within mean is 1."""
    n_o, n_s = 5, 6
    rng = np.random.default_rng(8)
    d = np.zeros((n_o + n_s, n_o + n_s))
    d[:n_o, :n_o] = 1 - np.eye(n_o)
    x = rng.normal(size=(n_s, 3))
    d[n_o:, n_o:] = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    d[:n_o, n_o:] = d[n_o:, :n_o] = 5.0
    labels = np.r_[np.full(n_o, OPTIMAL), np.full(n_s, SUBOPTIMAL)]
    ci = claims.bootstrap_ci(d, labels, n_boot=2000, seed=0)
    assert ci["within_optimal"] == (1.0, 1.0)
    # the suboptimal interval lies between the smallest and largest pair distance and holds the sample's mean
    pairs = d[n_o:, n_o:][~np.eye(n_s, dtype=bool)]
    lo, hi = ci["within_suboptimal"]
    assert pairs.min() <= lo < pairs.mean() < hi <= pairs.max()
    # (a resample holding one optimal network alone has no pair: it drops out of the difference too)
    np.testing.assert_allclose(ci["difference"], (lo - 1, hi - 1), rtol=1e-2)


def test_kde_compiles_once_for_bins_of_different_sizes(monkeypatch, tmp_path):
    """Bins of different sizes share one compiled KDE (padded samples), in `bin_divergence` and the figure."""
    import chex
    import jax

    from jaxweights.claims import divergence
    from jaxweights.report import figures

    monkeypatch.setattr(
        divergence, "kde_logdensities", jax.jit(chex.assert_max_traces(divergence._kde_logdensities, 1))
    )
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 7)) * np.linspace(0.5, 2, 20)[:, None]
    bins = np.r_[np.zeros(3, int), np.ones(5, int), np.full(12, 2)]  # 21, 35 and 84 values
    m1 = claims.bin_divergence(v, bins, grid=300)
    m2 = claims.bin_divergence(v[::-1], bins, grid=300)  # other samples, same lengths' bucket
    assert np.isfinite(m1).all() and np.isfinite(m2).all()
    # each bin's KDE is scipy's (Scott's bandwidth) on the shared grid
    x, mask = divergence.pad_samples([v[bins == b].ravel() for b in range(3)])
    g = np.linspace(-3, 3, 300)
    logd = np.asarray(divergence.kde_logdensities(x, mask, g.astype(np.float32)))
    for b in range(3):
        np.testing.assert_allclose(np.exp(logd[b]), ss.gaussian_kde(v[bins == b].ravel())(g), rtol=2e-3, atol=1e-6)
    # the figure: one KDE call per layer, every bin in it, through the same compiled function
    params = {"Dense_0": {"kernel": rng.normal(size=(20, 6, 5)).astype(np.float32)}}
    chex.clear_trace_counter()
    monkeypatch.setattr(
        divergence, "kde_logdensities", jax.jit(chex.assert_max_traces(divergence._kde_logdensities, 1))
    )
    png = figures.kde_by_bin(tmp_path, params, bins, np.array([0.0, 1, 2, 3]), grid=100)
    data = pd.read_csv(png.with_suffix(".csv"))
    assert sorted(data["bin"].unique()) == [0, 1, 2]
    w = params["Dense_0"]["kernel"].reshape(20, -1).astype(np.float64)
    for b in range(3):
        row = data[data["bin"] == b]
        np.testing.assert_allclose(row.density, ss.gaussian_kde(w[bins == b].ravel())(row.x), rtol=2e-3, atol=1e-6)


def test_dispersion_finds_the_more_variable_group():
    rng = np.random.default_rng(4)
    n = 24
    labels = np.r_[np.full(10, OPTIMAL), np.full(10, SUBOPTIMAL), np.full(4, MIDDLE)]
    tight = np.r_[rng.normal(0, 0.1, 10), rng.normal(0, 1.0, 10), rng.normal(size=4)]
    same = rng.normal(size=(20, n))  # 20 statistics with the same law in both groups
    names = ["std"] + [f"null{i}" for i in range(20)]
    table = pd.DataFrame(
        {
            "network": np.tile(np.arange(n), 21),
            "layer": "Dense_0",
            "statistic": np.repeat(names, n),
            "value": np.r_[tight, same.ravel()],
        }
    )
    disp = claims.dispersion(table, labels, n_permutations=2000).set_index("statistic")
    np.testing.assert_allclose(disp.loc["std", "var_optimal"], tight[:10].var(ddof=1))
    np.testing.assert_allclose(disp.loc["std", "var_suboptimal"], tight[10:20].var(ddof=1))
    np.testing.assert_allclose(disp.loc["null3", "ratio"], same[3, 10:20].var(ddof=1) / same[3, :10].var(ddof=1))
    assert disp.loc["std", "verdict"] == "holds" and disp.loc["std", "p_greater"] < 0.01
    null = disp.loc[names[1:], "p_greater"].to_numpy()
    assert (null < 0.05).sum() <= 3 and 0.25 < null.mean() < 0.75, null


def test_grouping_quantile_threshold_bins_and_errors():
    acc = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.95, 0.3, np.nan])
    ex = claims.diverged_mask(acc, diverged_N=[0, 0, 0, 0, 0, 0, 1, 0])
    assert ex.tolist() == [False] * 6 + [True, True]
    lab = claims.split_groups(acc, quantile=0.34, exclude=ex)
    assert lab.tolist() == [SUBOPTIMAL, OPTIMAL, MIDDLE, MIDDLE, SUBOPTIMAL, OPTIMAL, EXCLUDED, EXCLUDED]
    lab = claims.split_groups(acc, threshold=(0.4, 0.85), exclude=ex)
    assert lab.tolist() == [SUBOPTIMAL, OPTIMAL, MIDDLE, MIDDLE, SUBOPTIMAL, OPTIMAL, EXCLUDED, EXCLUDED]
    with pytest.raises(claims.ClaimError, match="threshold"):
        claims.split_groups(acc, threshold=0.93, exclude=ex)  # one optimal network
    with pytest.raises(claims.ClaimError, match="quantile"):
        claims.split_groups(acc, quantile=0.7)
    b, edges = claims.accuracy_bins(acc, 3, exclude=ex)
    assert b[6] == b[7] == -1 and sorted(np.bincount(b[b >= 0])) == [2, 2, 2]
    assert (np.diff([acc[b == k].mean() for k in range(3)]) > 0).all()


def test_prediction_scores_a_linear_target_and_not_noise():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 6)) * [1, 10, 0.1, 1, 1, 1] + 3
    y = x @ rng.normal(size=6) + rng.normal(size=40)
    scores, preds = claims.predict_accuracy({"lin": ([f"f{i}" for i in range(6)], x)}, y, folds=5)
    s = scores.set_index("model")
    assert s.loc["ridge", "r2"] > 0.9 and s.loc["ridge", "kendall_tau"] > 0.7
    assert s.loc["gradient_boosting", "r2"] > 0.3
    sse, sst = ((y - preds["lin:ridge"]) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    np.testing.assert_allclose(s.loc["ridge", "r2"], 1 - sse / sst)
    np.testing.assert_allclose(s.loc["ridge", "kendall_tau"], ss.kendalltau(y, preds["lin:ridge"]).statistic)
    assert sorted(np.bincount(preds.fold)) == [8] * 5
    noise, _ = claims.predict_accuracy({"noise": (["a"], rng.normal(size=(40, 1)))}, y, folds=5)
    assert noise.r2.max() < 0.2


def test_bin_divergence_equals_scipy_kde_kl():
    rng = np.random.default_rng(7)
    v = np.r_[rng.normal(0, 1, (5, 30)).ravel(), rng.normal(0.5, 2, (5, 30)).ravel()].reshape(10, 30)
    bins = np.r_[np.zeros(5, int), np.ones(5, int)]
    got = claims.bin_divergence(v, bins, grid=500)
    a, b = v[:5].ravel(), v[5:].ravel()
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    pad = 0.05 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, 500)
    p, q = ss.gaussian_kde(a)(grid), ss.gaussian_kde(b)(grid)
    ref = ss.entropy(p, q) + ss.entropy(q, p)
    np.testing.assert_allclose(got[0, 1], ref, rtol=1e-3)
    assert got[0, 0] == 0 and got[1, 0] == got[0, 1]


def test_layer_depths_follow_the_given_execution_order_not_names():
    order = ["embedding", "pos_embedding", "encoder_0/norm1", "encoder_0/mlp_in", "encoder_1/norm1", "norm", "head"]
    d = claims.layer_depths(order)
    assert [k for k, _ in sorted(d.items(), key=lambda kv: kv[1])] == order
    assert d["pos_embedding"] == 1 / 6 and d["head"] == 1.0
    assert claims.layer_depths(["Dense_0", "Dense_2", "Dense_10"]) == {"Dense_0": 0.0, "Dense_2": 0.5, "Dense_10": 1.0}
    t = pd.DataFrame({"metric": "w", "layer": ["b", "a"], "ratio": [1.0, 2.0], "p_greater": 0.5, "verdict": "x"})
    prof = claims.depth_profiles({"z": t}, "w", layer_orders={"z": ["a", "b"]})
    assert dict(zip(prof.layer, prof.depth)) == {"a": 0.0, "b": 1.0}


# ------------------------------------------------------------------------------- multiplicity


def test_holm_and_bh_against_the_published_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.04, np.nan, 0.005, 0.5])
    # Holm (1979) by hand: m = 6 finite p; sorted 0.005, 0.01, 0.03, 0.04, 0.04, 0.5
    # times 6, 5, 4, 3, 2, 1 = 0.03, 0.05, 0.12, 0.12, 0.08, 0.5; running max: 0.03, 0.05, 0.12, 0.12, 0.12, 0.5
    np.testing.assert_allclose(claims.holm(p), [0.05, 0.12, 0.12, 0.12, np.nan, 0.03, 0.5])
    # BH (1995) by hand: p_(i) m / i = 0.03, 0.03, 0.06, 0.06, 0.048, 0.5; running min from the top:
    # 0.03, 0.03, 0.048, 0.048, 0.048, 0.5
    np.testing.assert_allclose(claims.benjamini_hochberg(p), [0.03, 0.048, 0.048, 0.048, np.nan, 0.03, 0.5])
    assert np.isnan(claims.holm([np.nan, np.nan])).all() and claims.holm([]).shape == (0,)
    np.testing.assert_allclose(claims.holm([0.3, 0.9]), [0.6, 0.9])  # capped at 1 only when above it


def test_verdicts_use_holm_adjusted_p():
    t = pd.DataFrame({"p_value": [0.01, 0.04, 0.03, np.nan], "direction": [1.0, -1.0, 1.0, 1.0]})
    out = claims.adjust_table(t, direction="direction")
    # raw p would say holds, reversed, holds; Holm over the 3 tests: 0.03, 0.06, 0.06
    np.testing.assert_allclose(out.p_holm, [0.03, 0.06, 0.06, np.nan])
    assert out.verdict.tolist() == ["holds", "not significant", "not significant", "not significant"]
    assert list(out.columns) == ["p_value", "p_holm", "p_bh", "direction", "verdict"]
    # every table of many tests carries the columns, adjusted over all its rows
    rng = np.random.default_rng(4)
    n = 30
    table = pd.DataFrame(
        {
            "network": np.tile(np.arange(n), 5),
            "layer": "Dense_0",
            "statistic": np.repeat([f"s{i}" for i in range(5)], n),
            "value": rng.normal(size=5 * n),
        }
    )
    acc = rng.random(n)
    corr = claims.correlations(table, acc)
    np.testing.assert_allclose(corr.p_holm, claims.holm(corr.p_value))
    np.testing.assert_allclose(corr.p_bh, ss.false_discovery_control(corr.p_value))
    labels = claims.split_groups(acc, quantile=0.3)
    disp = claims.dispersion(table, labels, n_permutations=500)
    np.testing.assert_allclose(disp.p_value, np.minimum(1, 2 * np.minimum(disp.p_greater, disp.p_less)))
    np.testing.assert_allclose(disp.p_holm, claims.holm(disp.p_value))


# ------------------------------------------------------------------------ tests that respect the grid


def grid_population(rng, n_cells, n_seeds, cell_loc_C, seed_sd_C, acc_C, acc_sd_C, dim=10):
    """Networks as points: cell location + seed noise; accuracy = cell mean + seed noise."""
    cells = np.repeat(np.arange(n_cells), n_seeds)
    x = cell_loc_C[cells] + rng.normal(size=(len(cells), dim)) * seed_sd_C[cells, None]
    acc = acc_C[cells] + rng.normal(size=len(cells)) * acc_sd_C[cells]
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return d, acc, cells


def converging_cells(seed, n_cells, n_seeds):
    """Cells whose seeds end up closer together the better the cell trains (seed spread 1.2 - accuracy)."""
    rng = np.random.default_rng(seed)
    acc_C = rng.random(n_cells)
    return grid_population(
        rng, n_cells, n_seeds, rng.normal(size=(n_cells, 10)), 1.2 - acc_C, acc_C, np.full(n_cells, 0.02)
    )


def _brute_cell_test(d, acc, cells, k):
    """The cell-level statistic and exact p written as loops over cells and network pairs."""
    ids = np.unique(cells)
    cacc = np.array([acc[cells == c].mean() for c in ids])
    order = np.argsort(cacc)
    sub, opt = list(ids[order[:k]]), list(ids[order[-k:]])

    def between(cs):
        v = [
            d[i, j]
            for a in cs
            for b in cs
            if a != b
            for i in np.flatnonzero(cells == a)
            for j in np.flatnonzero(cells == b)
        ]
        return np.mean(v)

    t = between(sub) - between(opt)
    pool = sub + opt
    ts = [between([c for c in pool if c not in o]) - between(list(o)) for o in itertools.combinations(pool, k)]
    return t, np.mean(np.array(ts) >= t - 1e-12), np.mean(np.array(ts) <= t + 1e-12)


def test_cell_permutation_test_equals_a_loop_over_cells():
    rng = np.random.default_rng(10)
    n_cells = 10
    d, acc, cells = grid_population(
        rng,
        n_cells,
        3,
        rng.normal(size=(n_cells, 10)),
        np.full(n_cells, 0.5),
        rng.random(n_cells),
        np.full(n_cells, 0.01),
    )
    r = claims.cell_permutation_test(d, acc, cells, quantile=0.4)
    t, pg, pl = _brute_cell_test(d, acc, cells, 4)
    assert r.exact and r.n_permutations == 70 and r.n_optimal_cells == 4
    np.testing.assert_allclose([r.statistic, r.p_greater, r.p_less], [t, pg, pl], rtol=1e-10)
    # an excluded network leaves its cell's mean accuracy and every pair it was in
    ex = np.zeros(len(acc), bool)
    ex[0] = True
    r2 = claims.cell_permutation_test(d, acc, cells, quantile=0.4, exclude=ex)
    t2, _, _ = _brute_cell_test(d[1:, 1:], acc[1:], cells[1:], 4)
    np.testing.assert_allclose(r2.statistic, t2, rtol=1e-10)
    with pytest.raises(claims.ClaimError, match="quantile"):
        claims.cell_permutation_test(d[:9, :9], acc[:9], cells[:9])  # 3 cells


def test_seed_dispersion_equals_scipy_on_the_cell_table():
    n_cells = 12
    d, acc, cells = converging_cells(11, n_cells, 4)
    ex = np.zeros(len(acc), bool)
    ex[[0, 1, 2]] = True  # cell 0 keeps one seed: no dispersion, left out of the correlation
    r = claims.seed_dispersion(d, acc, cells, exclude=ex)
    disp, cacc = [], []
    for c in range(1, n_cells):
        m = np.flatnonzero((cells == c) & ~ex)
        disp.append(np.mean([d[i, j] for i in m for j in m if i != j]))
        cacc.append(acc[m].mean())
    ref = ss.spearmanr(disp, cacc)
    np.testing.assert_allclose([r.rho, r.p_value], [ref.statistic, ref.pvalue], rtol=1e-12)
    np.testing.assert_allclose(r.p_less, ss.spearmanr(disp, cacc, alternative="less").pvalue, rtol=1e-12)
    np.testing.assert_allclose(r.cells.dispersion.to_numpy()[1:], disp)
    assert r.n_cells == n_cells - 1 and np.isnan(r.cells.dispersion[0]) and r.cells.n_seeds[0] == 1
    # (ii) good cells' seeds converge: the dispersion test finds it
    assert r.rho < -0.8 and r.p_less < 1e-3


def test_seeds_of_one_cell_being_alike_fools_the_network_test_not_the_cell_test():
    """(i) Distances decided by cell membership only (cells at random places, seeds nearly identical);
    good cells have consistent seeds, poor cells very variable accuracy, so the top quartile of networks
    is 4 whole cells while the bottom quartile is scattered over many cells."""
    net_rej, cell_rej = 0, 0
    n_cells, n_seeds = 16, 4
    for rep in range(30):
        rng = np.random.default_rng(1000 + rep)
        acc_C = np.r_[np.full(4, 0.95), np.full(n_cells - 4, 0.45)]
        acc_sd = np.r_[np.full(4, 0.002), np.full(n_cells - 4, 0.15)]
        d, acc, cells = grid_population(
            rng, n_cells, n_seeds, rng.normal(size=(n_cells, 100)), np.full(n_cells, 0.01), acc_C, acc_sd, dim=100
        )
        lab = claims.split_groups(acc, quantile=0.25, seed=rep)
        net_rej += claims.permutation_test(d, lab, n_permutations=500, seed=rep).p_greater < 0.05
        cell_rej += claims.cell_permutation_test(d, acc, cells, seed=rep).p_greater < 0.05
    assert net_rej >= 27, net_rej  # the network-level test "holds" on seeds being alike
    assert cell_rej <= 5, cell_rej  # 5% nominal: 1.5 of 30


def test_group_level_confounding_is_what_the_dispersion_test_separates():
    """(i') Optimal cells share one hyperparameter value and sit close together because of it; seeds are
    otherwise random with the same spread in every cell. Both permutation tests say "holds" (the cell
    test at its smallest attainable p); the seed-dispersion test does not."""
    rng = np.random.default_rng(12)
    n_cells = 16
    loc = rng.normal(size=(n_cells, 10)) * 3
    loc[:4] = loc[0] + rng.normal(size=(4, 10)) * 0.3  # the optimal cells' shared learning rate
    acc_C = np.r_[np.full(4, 0.95) + rng.normal(size=4) * 0.01, rng.uniform(0.1, 0.8, n_cells - 4)]
    d, acc, cells = grid_population(rng, n_cells, 4, loc, np.full(n_cells, 1.0), acc_C, np.full(n_cells, 0.005))
    net = claims.permutation_test(d, claims.split_groups(acc), n_permutations=2000)
    cell = claims.cell_permutation_test(d, acc, cells)
    disp = claims.seed_dispersion(d, acc, cells)
    assert net.p_greater < 0.001
    assert cell.exact and cell.p_greater == pytest.approx(1 / 70) and cell.statistic > 0
    assert disp.p_value > 0.05 and disp.p_less > 0.05


def test_grid_tests_on_pure_noise_have_uniform_p_values():
    """(iii) Networks independent of their cell and accuracy: rejection rate at 0.05 near 5%."""
    n_cells, n_seeds, reps = 20, 3, 200
    pc, pd_ = [], []
    for rep in range(reps):
        rng = np.random.default_rng(5000 + rep)
        d, acc, cells = grid_population(
            rng,
            n_cells,
            n_seeds,
            np.zeros((n_cells, 6)),
            np.ones(n_cells),
            rng.random(n_cells),
            np.full(n_cells, 0.05),
            dim=6,
        )
        pc.append(claims.cell_permutation_test(d, acc, cells, seed=rep).p_greater)
        pd_.append(claims.seed_dispersion(d, acc, cells).p_less)
    pc, pd_ = np.array(pc), np.array(pd_)
    assert (pc < 0.05).mean() < 0.08 and (pd_ < 0.05).mean() < 0.08, ((pc < 0.05).mean(), (pd_ < 0.05).mean())
    assert 0.4 < pc.mean() < 0.62 and 0.4 < pd_.mean() < 0.6, (pc.mean(), pd_.mean())


def test_grid_tables_per_metric_and_layer():
    n_cells = 12
    d1, acc, cells = converging_cells(13, n_cells, 3)
    rng = np.random.default_rng(14)
    d2 = d1 + rng.random(d1.shape) * 0.1
    d2 = (d2 + d2.T) / 2
    np.fill_diagonal(d2, 0)
    dists = {"a": {"L0": d1, "__all__": d2}, "b": {"L0": d2}}
    ct = claims.cell_claim_table(dists, acc, cells, n_permutations=300)
    assert ct[["metric", "layer"]].values.tolist() == [["a", "L0"], ["a", "__all__"], ["b", "L0"]]
    np.testing.assert_allclose(ct.p_holm, claims.holm(ct.p_value))
    r = claims.cell_permutation_test(d2, acc, cells, n_permutations=300)
    np.testing.assert_allclose(ct.iloc[2][["statistic", "p_greater"]].to_numpy(float), [r.statistic, r.p_greater])
    tests, per_cell = claims.seed_dispersion_table(dists, acc, cells)
    assert len(tests) == 3 and len(per_cell) == 3 * n_cells
    assert tests.iloc[0].verdict == "holds" and tests.iloc[0].rho < 0
    np.testing.assert_allclose(tests.p_holm, claims.holm(tests.p_value))
    few = claims.cell_claim_table({"a": {"L0": d1[:9, :9]}}, acc[:9], cells[:9])
    assert few.empty and "cell" in few.attrs["skipped"]


# ------------------------------------------------------------------------------------ prediction


def test_grouped_folds_do_not_leak_cells():
    """Accuracy is a function of the cell only and the features identify the cell: random folds
    'predict' held-out seeds of seen cells; folds grouped by cell show there is nothing to predict."""
    rng = np.random.default_rng(14)
    n_cells, n_seeds = 20, 4
    cells = np.repeat(np.arange(n_cells), n_seeds)
    code = rng.normal(size=(n_cells, 40))
    x = code[cells] + rng.normal(size=(len(cells), 40)) * 0.05
    acc = rng.random(n_cells)[cells]
    hp = pd.DataFrame(
        {
            "network": np.arange(len(cells)),
            "seed": np.tile(np.arange(n_seeds), n_cells),
            "learning_rate": 10.0 ** -rng.permutation(n_cells)[cells],
            "test_acc": acc,
            "max_abs_weight": acc * 3,
            "exploded": False,
        }
    )
    hn, hx = claims.hyperparameter_features(hp)
    assert hn == ["learning_rate"]  # measured columns never enter the baseline
    feats = {"weights": ([f"f{i}" for i in range(40)], x), "hyperparameters": (hn, hx)}
    rand, _ = claims.predict_accuracy(feats, acc, groups_N=np.arange(len(acc)), folds=5)
    grouped, preds = claims.predict_accuracy(feats, acc, groups_N=cells, folds=5)
    r, g = rand.set_index(["features", "model"]).r2, grouped.set_index(["features", "model"]).r2
    assert r["weights", "ridge"] > 0.8 and r["weights", "gradient_boosting"] > 0.5
    assert (g < 0.1).all(), g
    # no cell in two folds, the folds are whole cells
    assert (pd.Series(preds.fold.to_numpy()).groupby(cells).nunique() == 1).all()
    assert preds.fold.nunique() == 5 and (grouped.n_folds == 5).all()
