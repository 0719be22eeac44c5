"""Optimal vs suboptimal networks: groups, tests and predictors that check the study's claims.

The central claim (Zheng et al. 2024, arXiv 2408.11720): successful networks are similar to other
successful networks in their converged weight statistics and distributions, while poor networks
vary. Given a zoo's pairwise distances (one N×N matrix per layer, see `jaxweights.distances`), its
weight statistics and each network's test accuracy, this module

  * excludes diverged networks and splits the rest into *optimal* (top accuracy quantile, or above
    a threshold) and *suboptimal* (bottom quantile, or below), and into accuracy bins;
  * measures the mean pairwise distance within each group and across them, tests "optimal networks
    are more alike" with a permutation test (exact when the group split can be enumerated) and gives
    bootstrap confidence intervals;
  * compares the dispersion (variance across networks) of every statistic in the two groups;
  * correlates every statistic with accuracy (Spearman);
  * predicts accuracy from weight features as Unterthiner et al. (2020, arXiv 2002.11448) did
    (per-layer mean, variance and quantiles {0, 25, 50, 75, 100} of kernels and biases) with a
    ridge regressor written in JAX and scikit-learn's gradient boosting, scored by R² and Kendall τ
    on held-out networks, beside a hyperparameters-only baseline;
  * compares accuracy bins by the symmetric KL divergence of Gaussian KDEs of node strengths and
    layer fluctuations (La Malfa et al. 2021, arXiv 2110.02628).

Labels: ``OPTIMAL = 1``, ``MIDDLE = 0``, ``SUBOPTIMAL = -1``, ``EXCLUDED = -2`` (diverged).
Spearman, Kendall and the permutation tests are implemented here (numpy/JAX) and checked against
scipy in the tests.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights import distances, stats

OPTIMAL, MIDDLE, SUBOPTIMAL, EXCLUDED = 1, 0, -1, -2
GROUP_NAMES = {OPTIMAL: "optimal", MIDDLE: "middle", SUBOPTIMAL: "suboptimal", EXCLUDED: "diverged"}
FEATURE_QUANTILES = (0, 25, 50, 75, 100)


class ClaimError(ValueError):
    """Grouping options or inputs the analysis cannot use (names the option and value)."""


# ------------------------------------------------------------------------------------------ groups


def diverged_mask(acc_N, diverged_N=None, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """Networks to exclude: flagged diverged, non-finite accuracy, or non-finite parameters.

    Args:
      acc_N: test accuracy per network.
      diverged_N: the run's `diverged` flags (optional).
      params: stacked parameters (optional); a network with any non-finite weight is excluded.

    Returns:
      Boolean (N,) array, True where the network is excluded.
    """
    acc_N = np.asarray(acc_N, np.float64)
    bad = ~np.isfinite(acc_N)
    if diverged_N is not None:
        bad |= np.asarray(diverged_N).astype(bool)
    if params is not None:
        for w in stats.flatten(params).values():
            w = np.asarray(w)
            bad |= ~np.isfinite(w.reshape(w.shape[0], -1)).all(1)
    return bad


def split_groups(acc_N, *, quantile: float | None = 0.25, threshold: float | Sequence[float] | None = None,
                 exclude=None) -> np.ndarray:
    """Labels networks optimal / middle / suboptimal by test accuracy.

    Args:
      acc_N: test accuracy per network.
      quantile: with no threshold, the top `quantile` fraction of the non-excluded networks (by rank,
        at least 2) is optimal and the bottom fraction suboptimal; 0 < quantile <= 0.5.
      threshold: a number t (optimal: acc >= t, suboptimal: acc < t) or a pair (lo, hi)
        (suboptimal: acc < lo, optimal: acc >= hi, middle in between). Overrides `quantile`.
      exclude: boolean (N,) mask of networks to leave out (label EXCLUDED).

    Returns:
      int (N,) labels: OPTIMAL, MIDDLE, SUBOPTIMAL or EXCLUDED.

    Raises:
      ClaimError: if an option is out of range or a group would hold fewer than 2 networks.
    """
    acc_N = np.asarray(acc_N, np.float64)
    n = acc_N.shape[0]
    ex = np.zeros(n, bool) if exclude is None else np.asarray(exclude, bool)
    labels = np.full(n, MIDDLE, np.int64)
    labels[ex] = EXCLUDED
    ok = np.flatnonzero(~ex)
    if threshold is not None:
        lo, hi = (threshold, threshold) if np.ndim(threshold) == 0 else tuple(threshold)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise ClaimError(f"threshold: {threshold!r} must be a number or a pair lo <= hi")
        labels[ok[acc_N[ok] >= hi]] = OPTIMAL
        labels[ok[acc_N[ok] < lo]] = SUBOPTIMAL
        what = f"threshold: {threshold!r}"
    else:
        if quantile is None or not 0 < quantile <= 0.5:
            raise ClaimError(f"quantile: {quantile!r} must be in (0, 0.5]")
        k = max(2, int(round(quantile * len(ok))))
        if 2 * k > len(ok):
            raise ClaimError(f"quantile: {quantile} needs at least 4 non-diverged networks; the zoo has {len(ok)}")
        order = ok[np.argsort(acc_N[ok], kind="stable")]
        labels[order[:k]] = SUBOPTIMAL
        labels[order[-k:]] = OPTIMAL
        what = f"quantile: {quantile!r}"
    for g in (OPTIMAL, SUBOPTIMAL):
        if (labels == g).sum() < 2:
            raise ClaimError(f"{what} leaves {(labels == g).sum()} {GROUP_NAMES[g]} network(s); each group needs >= 2")
    return labels


def accuracy_bins(acc_N, bins: int | Sequence[float] = 4, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Bins networks by accuracy, as in the complex-network study (La Malfa et al. 2021).

    Args:
      acc_N: test accuracy per network.
      bins: a number of equal-count bins (edges at accuracy quantiles of the kept networks), or
        explicit increasing edges (networks outside them get bin -1).
      exclude: boolean mask of networks to leave out (bin -1).

    Returns:
      (bin_N, edges): int bin index per network (-1 = excluded/outside) and the bin edges.
    """
    acc_N = np.asarray(acc_N, np.float64)
    ex = np.zeros(acc_N.shape[0], bool) if exclude is None else np.asarray(exclude, bool)
    kept = acc_N[~ex]
    if np.ndim(bins) == 0:
        if int(bins) < 1 or len(kept) < int(bins):
            raise ClaimError(f"bins: {bins!r} must be between 1 and the number of kept networks ({len(kept)})")
        edges = np.unique(np.quantile(kept, np.linspace(0, 1, int(bins) + 1)))
    else:
        edges = np.asarray(bins, np.float64)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ClaimError(f"bins: {bins!r} must be an int or increasing edges")
    b = np.clip(np.searchsorted(edges, acc_N, side="right") - 1, 0, len(edges) - 2)
    inside = (acc_N >= edges[0]) & (acc_N <= edges[-1]) & ~ex
    return np.where(inside, b, -1), edges


# ------------------------------------------------------------------------ within / across distances


def _pair_mean(d_NxN, a, b) -> float:
    """Mean distance over pairs (i in a, j in b, i != j)."""
    sub = d_NxN[np.ix_(a, b)]
    ne = a[:, None] != b[None, :]
    return float(sub[ne].mean()) if ne.any() else float("nan")


def group_distances(d_NxN, labels) -> dict[str, float]:
    """Mean pairwise distance within the optimal group, within the suboptimal group and across.

    Returns:
      ``{"within_optimal", "within_suboptimal", "across", "ratio"}``; ratio = within_suboptimal /
      within_optimal (> 1: optimal networks are more alike).
    """
    d = np.asarray(d_NxN, np.float64)
    labels = np.asarray(labels)
    o, s = np.flatnonzero(labels == OPTIMAL), np.flatnonzero(labels == SUBOPTIMAL)
    wo, ws, ac = _pair_mean(d, o, o), _pair_mean(d, s, s), _pair_mean(d, o, s)
    return {"within_optimal": wo, "within_suboptimal": ws, "across": ac,
            "ratio": ws / wo if wo > 0 else float("nan")}


def _within_means(d_nxn, m_Pxn):
    """Mean within-group distance of the members (m = 1) and of the rest, for P splits (float64)."""
    m = np.asarray(m_Pxn, np.float64)
    r = 1 - m
    k, j = m.sum(1), r.sum(1)
    wm = ((m @ d_nxn) * m).sum(1) / (k * (k - 1))
    wr = ((r @ d_nxn) * r).sum(1) / (j * (j - 1))
    return wm, wr


class PermutationResult(NamedTuple):
    """Permutation test of ``statistic = mean within suboptimal - mean within optimal``.

    p_greater: P(T >= observed) under exchangeable labels ("optimal networks are more alike");
    p_less: P(T <= observed) (the reverse). exact: all splits enumerated.
    """
    statistic: float
    p_greater: float
    p_less: float
    n_permutations: int
    exact: bool


def _splits(n: int, k: int, n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """Boolean (P, n) masks of k members: every split if there are at most n_permutations, else random."""
    total = math.comb(n, k)
    if total <= n_permutations:
        m = np.zeros((total, n), bool)
        for p, c in enumerate(itertools.combinations(range(n), k)):
            m[p, list(c)] = True
        return m, True
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((n_permutations, n)), axis=1)
    m = np.zeros((n_permutations, n), bool)
    np.put_along_axis(m, perm[:, :k], True, axis=1)
    return m, False


def _p_values(t_obs: float, t_perm: np.ndarray, exact: bool) -> tuple[float, float]:
    tol = 1e-12 * max(1.0, abs(t_obs))
    ge, le = int((t_perm >= t_obs - tol).sum()), int((t_perm <= t_obs + tol).sum())
    if exact:  # the enumeration contains the observed split
        return ge / len(t_perm), le / len(t_perm)
    return (ge + 1) / (len(t_perm) + 1), (le + 1) / (len(t_perm) + 1)


def permutation_test(d_NxN, labels, *, n_permutations: int = 2000, seed: int = 0) -> PermutationResult:
    """Tests "optimal networks are more alike than suboptimal ones" on a distance matrix.

    The statistic is T = mean distance within the suboptimal group - mean distance within the
    optimal group. Under the null hypothesis the labels of the pooled optimal + suboptimal networks
    are exchangeable; the null distribution re-splits them into groups of the same sizes (all splits
    when there are at most `n_permutations`, then the p-value is exact, else random splits and
    p = (1 + #{T* >= T}) / (1 + P)).

    Args:
      d_NxN: symmetric distance matrix.
      labels: group labels (only OPTIMAL and SUBOPTIMAL networks take part).
      n_permutations: random splits (or the enumeration limit).
      seed: seed of the random splits.

    Returns:
      A `PermutationResult`.
    """
    labels = np.asarray(labels)
    idx = np.flatnonzero((labels == OPTIMAL) | (labels == SUBOPTIMAL))
    d = np.asarray(d_NxN, np.float64)[np.ix_(idx, idx)]
    is_opt = labels[idx] == OPTIMAL
    wo, ws = _within_means(d, is_opt[None])
    t_obs = float(ws[0] - wo[0])
    masks, exact = _splits(len(idx), int(is_opt.sum()), n_permutations, seed)
    t = []
    for c in range(0, len(masks), 4096):
        a, b = _within_means(d, masks[c:c + 4096])
        t.append(b - a)
    t_perm = np.concatenate(t)
    pg, pl = _p_values(t_obs, t_perm, exact)
    return PermutationResult(t_obs, pg, pl, len(masks), exact)


def bootstrap_ci(d_NxN, labels, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple]:
    """Percentile bootstrap intervals of the within-group mean distances and their difference.

    Networks are resampled with replacement within each group; a pair of resampled positions counts
    only if it holds two different networks (a network's distance to itself is not a pair).

    Returns:
      ``{"within_optimal": (lo, hi), "within_suboptimal": (lo, hi), "difference": (lo, hi)}`` where
      difference = within_suboptimal - within_optimal.
    """
    d = np.asarray(d_NxN, np.float64)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)

    def boot(g):
        members = np.flatnonzero(labels == g)
        i = members[rng.integers(0, len(members), (n_boot, len(members)))]
        sub = d[i[:, :, None], i[:, None, :]]
        ne = i[:, :, None] != i[:, None, :]
        with np.errstate(invalid="ignore"):
            return (sub * ne).sum((1, 2)) / ne.sum((1, 2))

    bo, bs = boot(OPTIMAL), boot(SUBOPTIMAL)
    a = (1 - level) / 2 * 100
    ci = lambda x: tuple(float(v) for v in np.nanpercentile(x, [a, 100 - a]))
    return {"within_optimal": ci(bo), "within_suboptimal": ci(bs), "difference": ci(bs - bo)}


def verdict(p_greater: float, p_less: float, alpha: float = 0.05) -> str:
    """"holds" (optimal more alike, p < alpha), "reversed" (suboptimal more alike) or "not significant"."""
    if p_greater < alpha:
        return "holds"
    if p_less < alpha:
        return "reversed"
    return "not significant"


def claim_table(dists: Mapping[str, Mapping[str, np.ndarray]], labels, *, layers: Sequence[str] | None = None,
                n_permutations: int = 2000, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """The central claim for every metric and layer.

    Args:
      dists: ``{metric: {layer: d_NxN}}`` (as `distances.compute` returns or `analyze` writes).
      labels: group labels from `split_groups`.
      layers: restrict to these groups (default: all).
      n_permutations, n_boot, seed: see `permutation_test` and `bootstrap_ci`.
      alpha: significance level of the verdict.

    Returns:
      DataFrame: metric, layer, n_optimal, n_suboptimal, within_optimal, within_suboptimal, across,
      ratio, statistic, p_greater, p_less, exact, ci_low, ci_high (of the difference), verdict.
    """
    labels = np.asarray(labels)
    rows = []
    for metric, mats in dists.items():
        for layer, d in mats.items():
            if layers is not None and layer not in layers:
                continue
            d = np.asarray(d, np.float64)
            keep = (labels == OPTIMAL) | (labels == SUBOPTIMAL)
            if not np.isfinite(d[np.ix_(keep, keep)]).all():
                continue  # NaN distances (non-finite weights) are excluded networks' business
            g = group_distances(d, labels)
            pt = permutation_test(d, labels, n_permutations=n_permutations, seed=seed)
            ci = bootstrap_ci(d, labels, n_boot=n_boot, seed=seed)
            rows.append({"metric": metric, "layer": layer, "n_optimal": int((labels == OPTIMAL).sum()),
                         "n_suboptimal": int((labels == SUBOPTIMAL).sum()), **g,
                         "statistic": pt.statistic, "p_greater": pt.p_greater, "p_less": pt.p_less,
                         "exact": pt.exact, "ci_low": ci["difference"][0], "ci_high": ci["difference"][1],
                         "verdict": verdict(pt.p_greater, pt.p_less, alpha)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- dispersion


def wide_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """A tidy statistics table (network, layer, statistic, value) as networks × (layer, statistic)."""
    return table.pivot_table(index="network", columns=["layer", "statistic"], values="value", aggfunc="first",
                             dropna=False)


def dispersion(table: pd.DataFrame, labels, *, n_permutations: int = 2000, seed: int = 0,
               alpha: float = 0.05) -> pd.DataFrame:
    """Variance across networks (ddof 1) of every statistic within the optimal and suboptimal groups.

    The permutation test (same splits as `permutation_test`) asks whether the suboptimal group's
    variance exceeds the optimal group's, with T = log(var_suboptimal / var_optimal).

    Args:
      table: tidy statistics (network, layer, statistic, value), networks numbered like `labels`.
      labels: group labels.

    Returns:
      DataFrame: layer, statistic, var_optimal, var_suboptimal, ratio, p_greater, p_less, verdict.
    """
    labels = np.asarray(labels)
    wide = wide_statistics(table).reindex(np.arange(len(labels)))
    idx = np.flatnonzero((labels == OPTIMAL) | (labels == SUBOPTIMAL))
    x = wide.to_numpy(np.float64)[idx]
    cols = [c for c in range(x.shape[1]) if np.isfinite(x[:, c]).all()]
    x = x[:, cols]
    is_opt = labels[idx] == OPTIMAL
    masks, exact = _splits(len(idx), int(is_opt.sum()), n_permutations, seed)

    def log_ratio(m):  # (P, n) masks -> (P, C)
        def var(mm):
            k = mm.sum(1, keepdims=True)
            mu = mm @ x / k
            return np.maximum(mm @ (x * x) / k - mu * mu, 0) * k / (k - 1)
        mf = m.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(var(1 - mf)) - np.log(var(mf)), var(mf), var(1 - mf)

    t_obs, vo, vs = log_ratio(is_opt[None])
    t_perm = np.concatenate([log_ratio(masks[c:c + 1024])[0] for c in range(0, len(masks), 1024)])
    rows = []
    for j, c in enumerate(cols):
        layer, stat = wide.columns[c]
        if not np.isfinite(t_obs[0, j]):
            continue  # a constant statistic (e.g. zero variance in one group)
        tp = t_perm[:, j]
        pg, pl = _p_values(float(t_obs[0, j]), tp[np.isfinite(tp)], exact)
        rows.append({"layer": layer, "statistic": stat, "var_optimal": vo[0, j], "var_suboptimal": vs[0, j],
                     "ratio": vs[0, j] / vo[0, j], "p_greater": pg, "p_less": pl, "verdict": verdict(pg, pl, alpha)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- correlations


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's ``rankdata(method="average")``)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    avg = first + (counts + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (t distribution, n - 2 d.o.f.).

    Equals ``scipy.stats.spearmanr(x, y)``; NaN if either input is constant or n < 3.
    """
    rx, ry = rankdata(x), rankdata(y)
    n = len(rx)
    if n < 3 or rx.std() == 0 or ry.std() == 0:
        return float("nan"), float("nan")
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rho = min(1.0, max(-1.0, rho))
    df = n - 2
    if abs(rho) == 1:
        return rho, 0.0
    t2 = rho * rho * df / (1 - rho * rho)
    # two-sided p of Student's t: I_{df/(df+t²)}(df/2, 1/2)
    with jax.enable_x64(True):
        p = float(jax.scipy.special.betainc(jnp.float64(df / 2.0), jnp.float64(0.5), jnp.float64(df / (df + t2))))
    return rho, p


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties corrected), equal to ``scipy.stats.kendalltau(x, y).statistic``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    sx, sy = dx[iu], dy[iu]
    s = float((sx * sy).sum())
    nx, ny = float((sx != 0).sum()), float((sy != 0).sum())
    return s / math.sqrt(nx * ny) if nx > 0 and ny > 0 else float("nan")


def correlations(table: pd.DataFrame, acc_N, *, exclude=None) -> pd.DataFrame:
    """Spearman correlation of every (layer, statistic) with test accuracy.

    Returns:
      DataFrame: layer, statistic, rho, p_value, n (kept networks with a finite value).
    """
    acc_N = np.asarray(acc_N, np.float64)
    keep = np.ones(len(acc_N), bool) if exclude is None else ~np.asarray(exclude, bool)
    wide = wide_statistics(table).reindex(np.arange(len(acc_N)))
    rows = []
    for col in wide.columns:
        v = wide[col].to_numpy(np.float64)
        ok = keep & np.isfinite(v)
        rho, p = spearman(v[ok], acc_N[ok])
        rows.append({"layer": col[0], "statistic": col[1], "rho": rho, "p_value": p, "n": int(ok.sum())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- prediction


def weight_features(params) -> tuple[list[str], np.ndarray]:
    """Unterthiner et al. (2020) features: per leaf mean, variance and quantiles {0,25,50,75,100}.

    Returns:
      (names, X_NxF) with names like ``"Dense_0/kernel:q25"``.
    """
    arrays = stats.statistics_arrays(params, statistics=("mean", "var", "quantiles"), per="leaf")
    qi = [stats.QUANTILES.index(q) for q in FEATURE_QUANTILES]
    names, cols = [], []
    for leaf, a in arrays.items():
        names += [f"{leaf}:mean", f"{leaf}:var"] + [f"{leaf}:q{q}" for q in FEATURE_QUANTILES]
        cols += [a["mean"].reshape(-1, 1), a["var"].reshape(-1, 1), np.asarray(a["quantiles"])[:, qi]]
    return names, np.concatenate(cols, 1).astype(np.float64)


NOT_HYPERPARAMETERS = ("network", "seed", "group", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                       "diverged")


def hyperparameter_features(hparams: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The dynamic hyperparameters that vary in the zoo (log10 of the positive scale ones).

    Args:
      hparams: one row per network (``hparams.csv`` or the last epoch of ``metrics.csv``); the
        metric columns (`NOT_HYPERPARAMETERS`) are ignored, so accuracy never leaks into the baseline.
    """
    cols = [c for c in hparams.columns if c not in NOT_HYPERPARAMETERS and
            pd.api.types.is_numeric_dtype(hparams[c]) and hparams[c].nunique() > 1]
    out = []
    for c in cols:
        v = hparams[c].to_numpy(np.float64)
        out.append(np.log10(v) if (v > 0).all() and c in ("learning_rate", "init_scale", "weight_decay") else v)
    if not out:
        return [], np.zeros((len(hparams), 0))
    return cols, np.stack(out, 1)


@jax.jit
def _ridge_path(x_NxF, y_N, alphas_A):
    """Closed-form ridge on standardised features for several alphas; LOO errors by the hat matrix."""
    mu, sd = x_NxF.mean(0), x_NxF.std(0)
    sd = jnp.where(sd > 0, sd, 1.0)
    z = (x_NxF - mu) / sd
    ym = y_N.mean()
    u, s, vt = jnp.linalg.svd(z, full_matrices=False)
    uy = u.T @ (y_N - ym)
    shrink = s[None, :] / (s[None, :] ** 2 + alphas_A[:, None])            # (A, K)
    coef = (shrink * uy[None, :]) @ vt                                       # (A, F)
    fit = (s[None, :] * shrink * uy[None, :]) @ u.T + ym                     # (A, N)
    h = (u ** 2) @ (s[None, :] ** 2 / (s[None, :] ** 2 + alphas_A[:, None])).T + 1.0 / y_N.shape[0]  # (N, A)
    loo = ((y_N[None, :] - fit) / (1 - h.T)) ** 2
    return coef, mu, sd, ym, loo.mean(1)


class Ridge(NamedTuple):
    """A fitted ridge regressor on standardised features (see `ridge_fit`)."""
    coef: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    intercept: float
    alpha: float

    def predict(self, x_NxF) -> np.ndarray:
        """Predictions for the rows of `x_NxF` (raw features; standardised with the training statistics)."""
        z = (np.asarray(x_NxF, np.float64) - self.mean) / self.scale
        return z @ self.coef + self.intercept


def ridge_fit(x_NxF, y_N, alphas: Sequence[float] = tuple(10.0 ** np.arange(-3, 4))) -> Ridge:
    """Ridge regression in JAX: features standardised, intercept unpenalised, alpha by leave-one-out.

    For one alpha the coefficients equal scikit-learn's ``Ridge(alpha)`` fitted on the standardised
    features. The leave-one-out error of every alpha comes in closed form from the hat matrix.

    Args:
      x_NxF: features; y_N: targets.
      alphas: candidate penalties; the one with the smallest leave-one-out squared error is kept.

    Returns:
      A `Ridge` with a `predict` method.
    """
    with jax.enable_x64(True):
        coef, mu, sd, ym, loo = _ridge_path(jnp.asarray(x_NxF, jnp.float64), jnp.asarray(y_N, jnp.float64),
                                            jnp.asarray(alphas, jnp.float64))
        best = int(jnp.argmin(loo))
        return Ridge(np.asarray(coef[best]), np.asarray(mu), np.asarray(sd), float(ym), float(alphas[best]))


def r2_score(y, yhat) -> float:
    """Coefficient of determination 1 - SSE/SST."""
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - yhat) ** 2).sum() / sst) if sst > 0 else float("nan")


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def predict_accuracy(features: Mapping[str, tuple[list[str], np.ndarray]], acc_N, *, folds: int = 5,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicts test accuracy of held-out networks (k-fold) from each feature set.

    Models: "ridge" (`ridge_fit`, JAX; predictions clipped to the training targets' range) and
    "gradient_boosting" (scikit-learn's ``GradientBoostingRegressor``). Non-finite feature columns
    are dropped. Scores on the out-of-fold predictions: R² and Kendall's tau.

    Args:
      features: ``{name: (names, X_NxF)}``, e.g. ``{"weights": weight_features(p), "hyperparameters": ...}``.
      acc_N: accuracy of the kept networks (rows of every X).
      folds: number of folds (at most N).
      seed: fold assignment and boosting seed.

    Returns:
      (scores, predictions): scores has columns features, model, r2, kendall_tau, n_features;
      predictions has network (row), accuracy and one column per features × model.
    """
    from sklearn.ensemble import GradientBoostingRegressor
    y = np.asarray(acc_N, np.float64)
    n = len(y)
    if n < 4:
        raise ClaimError(f"predict_accuracy: needs at least 4 networks, got {n}")
    parts = _folds(n, min(folds, n), seed)
    rows, preds = [], {"row": np.arange(n), "accuracy": y}
    for fname, (names, x) in features.items():
        x = np.asarray(x, np.float64)
        x = x[:, np.isfinite(x).all(0)]  # e.g. a variance that overflowed float32 in a blown-up network
        if x.shape[1] == 0:
            continue
        for model in ("ridge", "gradient_boosting"):
            yhat = np.empty(n)
            for test in parts:
                train = np.setdiff1d(np.arange(n), test)
                if model == "ridge":  # clipped to the training targets' range: a blown-up network's
                    # extreme features must not extrapolate to accuracies of 1e6
                    yhat[test] = np.clip(ridge_fit(x[train], y[train]).predict(x[test]), y[train].min(),
                                         y[train].max())
                else:
                    gb = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05,
                                                   subsample=1.0, random_state=seed)
                    yhat[test] = gb.fit(x[train], y[train]).predict(x[test])
            preds[f"{fname}:{model}"] = yhat
            rows.append({"features": fname, "model": model, "r2": r2_score(y, yhat),
                         "kendall_tau": kendall_tau(y, yhat), "n_features": x.shape[1]})
    return pd.DataFrame(rows), pd.DataFrame(preds)


# ---------------------------------------------------------------------------------- bin divergence


def _kde_grid_logdens(samples: list[np.ndarray], grid: int):
    pooled = np.concatenate(samples)
    lo, hi = pooled.min(), pooled.max()
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    g = jnp.linspace(lo - pad, hi + pad, grid)
    return np.asarray(g), [np.asarray(_kde(jnp.asarray(s, jnp.float32), g.astype(jnp.float32))) for s in samples]


_kde = jax.jit(distances.kde_logdensity)


def bin_divergence(values_N, bins_N, *, grid: int = 1000, max_samples: int = 20000,
                   seed: int = 0) -> np.ndarray:
    """Symmetric KL between the accuracy bins' distributions of a quantity (La Malfa et al. 2021).

    Each bin pools the values of its networks (node strengths of a layer: an (N, nodes) array;
    layer fluctuation: an (N,) array), estimates a Gaussian KDE (Scott's bandwidth) on a shared grid
    of `grid` points and compares bins by ``KL(p||q) + KL(q||p)`` of the normalised grid values.

    Args:
      values_N: (N,) or (N, K) values per network.
      bins_N: bin index per network (-1 = left out).
      grid: KDE grid points.
      max_samples: pooled values per bin beyond which a random subsample is used.

    Returns:
      (B, B) symmetric matrix (NaN where a bin has fewer than 2 distinct values).
    """
    v = np.asarray(values_N, np.float64).reshape(len(bins_N), -1)
    bins_N = np.asarray(bins_N)
    nb = int(bins_N.max()) + 1 if (bins_N >= 0).any() else 0
    rng = np.random.default_rng(seed)
    samples, ok = [], []
    for b in range(nb):
        s = v[bins_N == b].ravel()
        s = s[np.isfinite(s)]
        if len(s) > max_samples:
            s = rng.choice(s, max_samples, replace=False)
        ok.append(len(np.unique(s)) >= 2)
        samples.append(s if ok[-1] else np.zeros(2))
    out = np.full((nb, nb), np.nan)
    if not any(ok):
        return out
    _, logd = _kde_grid_logdens(samples, grid)
    for a in range(nb):
        for b in range(nb):
            if ok[a] and ok[b]:
                out[a, b] = float(distances.symmetric_kl_log(jnp.asarray(logd[a]), jnp.asarray(logd[b])))
    return out


# ------------------------------------------------------------------------------------- depth


def _natural_key(name: str):
    """Natural sort key; kept for callers, no longer used to order layers (execution order is)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_depths(layers: Sequence[str]) -> dict[str, float]:
    """Per-depth-normalised position in [0, 1] of each layer (input side 0, output layer 1).

    ``layers`` must be in the model's execution order (``stats.layer_order(params)``, the order
    of a claim table's rows); names are never sorted. Same as ``stats.layer_depths``.
    """
    return stats.layer_depths(layers)


def depth_profiles(claim_tables: Mapping[str, pd.DataFrame], metric: str,
                   layer_orders: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per-layer claim results of several zoos on a shared, per-depth-normalised layer axis.

    Args:
      claim_tables: ``{zoo: claim_table(...)}`` (e.g. MLP, CNN and ViT zoos on one dataset).
      metric: the distance metric to compare.
      layer_orders: optional ``{zoo: layers in execution order}`` (``stats.layer_order(params)``);
        default the order of the table's rows (the params' order). Depth is the position in
        that order among the table's layers, never a sort of the names.

    Returns:
      DataFrame: zoo, layer, depth (0 = input side, 1 = output layer), ratio, p_greater, verdict.
    """
    rows = []
    for zoo, t in claim_tables.items():
        t = t[(t.metric == metric) & (t.layer != stats.ALL)]
        order = list(t.layer) if layer_orders is None or zoo not in layer_orders else \
            [l for l in layer_orders[zoo] if l in set(t.layer)] + [l for l in t.layer if l not in set(layer_orders[zoo])]
        depth = layer_depths(order)
        for r in t.itertuples():
            rows.append({"zoo": zoo, "layer": r.layer, "depth": depth[r.layer], "ratio": r.ratio,
                         "p_greater": r.p_greater, "verdict": r.verdict})
    return pd.DataFrame(rows, columns=["zoo", "layer", "depth", "ratio", "p_greater", "verdict"])


def same_pattern(whole_network_verdicts: Mapping[str, str], profiles: pd.DataFrame) -> dict[str, Any]:
    """Do several zoos show the same pattern? Same whole-network verdict, and the same depth trend.

    The depth trend of a zoo is the Spearman correlation of its per-layer distance ratio
    (within suboptimal / within optimal) with normalised depth.

    Returns:
      ``{"same_verdict": bool, "verdicts": {...}, "depth_trend": {zoo: rho}, "same_trend": bool}``.
    """
    trend = {}
    for zoo, g in profiles.groupby("zoo"):
        ok = np.isfinite(g.ratio.to_numpy(np.float64))
        trend[zoo] = spearman(g.depth.to_numpy()[ok], g.ratio.to_numpy()[ok])[0] if ok.sum() >= 3 else float("nan")
    signs = {np.sign(v) for v in trend.values() if np.isfinite(v)}
    return {"same_verdict": len(set(whole_network_verdicts.values())) == 1, "verdicts": dict(whole_network_verdicts),
            "depth_trend": trend, "same_trend": len(signs) == 1 and len(trend) > 1}
