"""claims.py: each test statistic against scipy / scikit-learn / numpy loops, and on constructed
populations where the answer is known (one group tighter than the other, or both the same)."""

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from jaxweights import claims, distances
from jaxweights.claims import OPTIMAL, SUBOPTIMAL, EXCLUDED, MIDDLE


def population(rng, n_opt, n_sub, opt_spread, sub_spread, d=2000):
    """Stacked one-layer 'networks' whose weight std is 1 + spread·N(0,1) per network; optimal first."""
    scale = np.r_[1 + opt_spread * np.abs(rng.normal(size=n_opt)), 1 + sub_spread * np.abs(rng.normal(size=n_sub))]
    w = rng.normal(size=(n_opt + n_sub, d)) * scale[:, None]
    labels = np.r_[np.full(n_opt, OPTIMAL), np.full(n_sub, SUBOPTIMAL)]
    return {"Dense_0": {"kernel": w.reshape(-1, 40, d // 40).astype(np.float32)}}, labels


def test_rankdata_spearman_kendall_equal_scipy():
    rng = np.random.default_rng(0)
    for n in (5, 17, 60):
        x = np.round(rng.normal(size=n), 1)  # ties on purpose
        y = np.round(x + rng.normal(size=n), 1)
        np.testing.assert_allclose(claims.rankdata(x), ss.rankdata(x))
        rho, p = claims.spearman(x, y)
        ref = ss.spearmanr(x, y)
        np.testing.assert_allclose([rho, p], [ref.statistic, ref.pvalue], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(claims.kendall_tau(x, y), ss.kendalltau(x, y).statistic, rtol=1e-12)
    assert np.isnan(claims.spearman(np.ones(5), np.arange(5))[0])


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

    ref = ss.permutation_test((np.arange(4.0), np.arange(4.0, 9.0)), t, permutation_type="independent",
                              alternative="greater", n_resamples=10_000, vectorized=False)
    ref_less = ss.permutation_test((np.arange(4.0), np.arange(4.0, 9.0)), t, permutation_type="independent",
                                   alternative="less", n_resamples=10_000, vectorized=False)
    np.testing.assert_allclose(res.statistic, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose([res.p_greater, res.p_less], [ref.pvalue, ref_less.pvalue], rtol=1e-12)
    g = claims.group_distances(d, labels)
    loop = lambda A, B: np.mean([d[i, j] for i in A for j in B if i != j])
    np.testing.assert_allclose([g["within_optimal"], g["within_suboptimal"], g["across"]],
                               [loop(range(4), range(4)), loop(range(4, 9), range(4, 9)), loop(range(4), range(4, 9))])


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


def test_bootstrap_interval_against_numpy_loop():
    rng = np.random.default_rng(3)
    params, labels = population(rng, 6, 7, 0.1, 0.5)
    d = distances.pairwise(params, "wasserstein")["Dense_0/kernel"]
    ci = claims.bootstrap_ci(d, labels, n_boot=300, seed=5)
    # the same resampling written as a loop
    r = np.random.default_rng(5)
    vals = {}
    for g in (OPTIMAL, SUBOPTIMAL):
        m = np.flatnonzero(labels == g)
        idx = m[r.integers(0, len(m), (300, len(m)))]
        vals[g] = np.array([np.mean([d[i, j] for i in row for j in row if i != j]) for row in idx])
    np.testing.assert_allclose(ci["within_optimal"], np.percentile(vals[OPTIMAL], [2.5, 97.5]))
    np.testing.assert_allclose(ci["difference"], np.percentile(vals[SUBOPTIMAL] - vals[OPTIMAL], [2.5, 97.5]))


def test_dispersion_finds_the_more_variable_group():
    rng = np.random.default_rng(4)
    n = 24
    labels = np.r_[np.full(10, OPTIMAL), np.full(10, SUBOPTIMAL), np.full(4, MIDDLE)]
    tight = np.r_[rng.normal(0, 0.1, 10), rng.normal(0, 1.0, 10), rng.normal(size=4)]
    same = rng.normal(size=(20, n))  # 20 statistics with the same law in both groups
    names = ["std"] + [f"null{i}" for i in range(20)]
    table = pd.DataFrame({"network": np.tile(np.arange(n), 21), "layer": "Dense_0",
                          "statistic": np.repeat(names, n), "value": np.r_[tight, same.ravel()]})
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


def test_ridge_equals_sklearn_and_loo_picks_the_same_alpha():
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 6)) * [1, 10, 0.1, 1, 1, 1] + 3
    y = x @ rng.normal(size=6) + rng.normal(size=40)
    alphas = (0.01, 0.1, 1.0, 10.0, 100.0)
    ours = claims.ridge_fit(x, y, alphas)
    z = StandardScaler().fit_transform(x)
    ref = RidgeCV(alphas=alphas).fit(z, y)
    assert ours.alpha == ref.alpha_
    sk = Ridge(alpha=ours.alpha).fit(z, y)
    np.testing.assert_allclose(ours.coef, sk.coef_, rtol=1e-8)
    np.testing.assert_allclose(ours.predict(x[:5]), sk.predict(z[:5]), rtol=1e-8)
    # a linear target is predicted on held-out rows; a pure-noise target is not
    scores, preds = claims.predict_accuracy({"lin": ([f"f{i}" for i in range(6)], x)}, y, folds=5)
    s = scores.set_index("model")
    assert s.loc["ridge", "r2"] > 0.9 and s.loc["ridge", "kendall_tau"] > 0.7
    assert s.loc["gradient_boosting", "r2"] > 0.3
    sse, sst = ((y - preds["lin:ridge"]) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    np.testing.assert_allclose(s.loc["ridge", "r2"], 1 - sse / sst)
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
