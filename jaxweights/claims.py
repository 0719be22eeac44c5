"""Optimal vs suboptimal networks: groups, tests and predictors that check the study's claims.

The central claim (Zheng et al. 2024, arXiv 2408.11720): successful networks are similar to other
successful networks in their converged weight statistics and distributions, while poor networks
vary. Given a zoo's pairwise distances (one N×N matrix per layer, see `jaxweights.distances`), its
weight statistics and each network's test accuracy, this module

  * takes the groups (*optimal* / *suboptimal*, `jaxweights.groups.split_groups`) and splits networks
    into accuracy bins;
  * measures the mean pairwise distance within each group and across them, tests "optimal networks
    are more alike" with a permutation test (exact when the group split can be enumerated) and gives
    bootstrap confidence intervals; the same with hyperparameter cells as the unit, and the
    seed-dispersion test within cells;
  * compares the dispersion (variance across networks) of every statistic in the two groups;
  * correlates every statistic with accuracy (Spearman);
  * predicts accuracy from weight features as Unterthiner et al. (2020, arXiv 2002.11448) did
    (per-layer mean, variance and quantiles {0, 25, 50, 75, 100} of kernels and biases) with a
    ridge regressor and gradient boosting (scikit-learn), scored by R² and Kendall τ on held-out
    hyperparameter cells (grouped folds), beside a hyperparameters-only baseline on the same folds;
  * compares accuracy bins by the symmetric KL divergence of Gaussian KDEs of node strengths and
    layer fluctuations (La Malfa et al. 2021, arXiv 2110.02628).

Labels: ``OPTIMAL = 1``, ``MIDDLE = 0``, ``SUBOPTIMAL = -1``, ``EXCLUDED = -2``, and the grouping
itself (network states, `split_groups`, hyperparameter cells) come from `jaxweights.groups`, the one
definition used everywhere. A zoo is a designed experiment: beside the network-level permutation
test, `cell_claim_table` permutes whole hyperparameter cells and `seed_dispersion_table` asks the
seed-only question ("do cells that train well have seeds that end up alike?"). Every table of many
tests carries Holm and Benjamini-Hochberg adjusted p-values (`p_holm`, `p_bh`); verdicts use Holm.
Spearman, Kendall, ridge and the FDR control come from scipy / scikit-learn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats as ss

from jaxweights import distances, groups, stats
from jaxweights.groups import (  # noqa: F401
    EXCLUDED,
    GROUP_NAMES,
    MIDDLE,
    NOT_HYPERPARAMETERS,
    OPTIMAL,
    SUBOPTIMAL,
    ClaimError,
    hyperparameter_cells,
    network_states,
    split_groups,
)

FEATURE_QUANTILES = (0, 25, 50, 75, 100)


# ------------------------------------------------------------------------------------------ groups


def diverged_mask(acc_N, diverged_N=None, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """Networks in state "diverged" (`groups.network_states`): flagged, non-finite accuracy or weights."""
    return groups.network_states(acc_N, diverged_N=diverged_N, params=params) == "diverged"


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
    return {"within_optimal": wo, "within_suboptimal": ws, "across": ac, "ratio": ws / wo if wo > 0 else float("nan")}


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
        a, b = _within_means(d, masks[c : c + 4096])
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


# ----------------------------------------------------------------------------------- multiplicity


def holm(p) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: sorted p_(1) <= ... <= p_(m),
    adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)). NaN p-values stay NaN and are not counted in m."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m:
        ps = p[ok]
        order = np.argsort(ps, kind="stable")
        adj = np.empty(m)
        adj[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * ps[order]))
        out[ok] = adj
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg (1995) adjusted p-values (``scipy.stats.false_discovery_control``); NaN stays NaN
    and is not counted as a test."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = ss.false_discovery_control(p[ok], method="bh")
    return out


def two_sided(p_greater, p_less):
    """Two-sided p of a pair of one-sided permutation p-values: min(1, 2 min(p_greater, p_less))."""
    return np.minimum(1.0, 2 * np.minimum(np.asarray(p_greater, np.float64), np.asarray(p_less, np.float64)))


def verdict(p_adjusted: float, direction: float, alpha: float = 0.05) -> str:
    """ "holds" (the claim's direction, direction > 0), "reversed" (direction < 0) or "not significant".

    `p_adjusted` is a two-sided p already adjusted for multiplicity (the tables use Holm).
    """
    if not (np.isfinite(p_adjusted) and p_adjusted < alpha) or direction == 0:
        return "not significant"
    return "holds" if direction > 0 else "reversed"


def adjust_table(
    table: pd.DataFrame, *, p: str = "p_value", direction: str | None = None, alpha: float = 0.05
) -> pd.DataFrame:
    """Adds `p_holm` and `p_bh` (over all rows of the table: one family) after column `p`, and, with
    `direction` (a column whose sign says holds > 0 / reversed < 0), a `verdict` column from `p_holm`.

    Holm controls the family-wise error (any false "holds" among the rows) without assumptions on how
    the tests depend on each other, so verdicts and verdict counts use it; BH (false discovery rate,
    valid for independent or positively dependent tests) is reported beside it as the less strict reading.
    """
    t = table.copy()
    cols = list(t.columns)
    if p not in t:
        t[p] = pd.Series(dtype=np.float64)
        cols.append(p)
    t["p_holm"], t["p_bh"] = holm(t[p].to_numpy(np.float64)), benjamini_hochberg(t[p].to_numpy(np.float64))
    i = cols.index(p) + 1
    cols = (
        [c for c in cols[:i] if c not in ("p_holm", "p_bh")]
        + ["p_holm", "p_bh"]
        + [c for c in cols[i:] if c not in ("p_holm", "p_bh", "verdict")]
    )
    if direction is not None:
        t["verdict"] = [verdict(ph, d, alpha) for ph, d in zip(t.p_holm, t[direction])] if len(t) else []
        cols.append("verdict")
    return t[cols]


def claim_table(
    dists: Mapping[str, Mapping[str, np.ndarray]],
    labels,
    *,
    layers: Sequence[str] | None = None,
    n_permutations: int = 2000,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """The central claim for every metric and layer, networks as the exchangeable unit.

    Read it beside `cell_claim_table` and `seed_dispersion_table`: in a grid, networks of one cell
    are alike and accuracy is decided by the cell, so this test's p-value is too small whenever the
    optimal group holds many seeds of few cells.

    Args:
      dists: ``{metric: {layer: d_NxN}}`` (as `distances.compute` returns or `analyze` writes).
      labels: group labels from `split_groups`.
      layers: restrict to these groups (default: all).
      n_permutations, n_boot, seed: see `permutation_test` and `bootstrap_ci`.
      alpha: significance level of the verdict (on the Holm-adjusted two-sided p over all rows).

    Returns:
      DataFrame: metric, layer, n_optimal, n_suboptimal, within_optimal, within_suboptimal, across,
      ratio, statistic, p_greater, p_less, exact, ci_low, ci_high (of the difference), p_value
      (two-sided, `two_sided`), p_holm, p_bh, verdict.
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
            rows.append(
                {
                    "metric": metric,
                    "layer": layer,
                    "n_optimal": int((labels == OPTIMAL).sum()),
                    "n_suboptimal": int((labels == SUBOPTIMAL).sum()),
                    **g,
                    "statistic": pt.statistic,
                    "p_greater": pt.p_greater,
                    "p_less": pt.p_less,
                    "exact": pt.exact,
                    "ci_low": ci["difference"][0],
                    "ci_high": ci["difference"][1],
                    "p_value": float(two_sided(pt.p_greater, pt.p_less)),
                    "direction": float(np.sign(pt.p_less - pt.p_greater)),
                }
            )
    return adjust_table(pd.DataFrame(rows), direction="direction", alpha=alpha).drop(
        columns="direction", errors="ignore"
    )


# ------------------------------------------------------------------- tests that respect the grid


def cell_summary(acc_N, cells_N, *, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hyperparameter cells of the analysed networks.

    Returns:
      (cell_C, acc_C, n_C, member_N): cell ids, mean accuracy of each cell's analysed seeds, number of
      analysed seeds, and each network's position in cell_C (-1 for excluded networks).
    """
    acc_N = np.asarray(acc_N, np.float64)
    cells_N = np.asarray(cells_N)
    if cells_N.shape != acc_N.shape:
        raise ClaimError(f"cells: {cells_N.shape[0]} cell ids for {acc_N.shape[0]} networks")
    keep = np.isfinite(acc_N) & (np.ones(len(acc_N), bool) if exclude is None else ~np.asarray(exclude, bool))
    cell_C, inv = np.unique(cells_N[keep], return_inverse=True)
    n_C = np.bincount(inv, minlength=len(cell_C))
    acc_C = np.bincount(inv, acc_N[keep], minlength=len(cell_C)) / np.maximum(n_C, 1)
    member_N = np.full(len(acc_N), -1)
    member_N[keep] = inv
    return cell_C, acc_C, n_C, member_N


class CellPermutationResult(NamedTuple):
    """Cell-level test of T = mean distance between networks of different suboptimal cells - the same
    for optimal cells (see `cell_permutation_test`)."""

    statistic: float
    within_optimal: float
    within_suboptimal: float
    p_greater: float
    p_less: float
    n_permutations: int
    exact: bool
    n_optimal_cells: int
    n_suboptimal_cells: int


def _cell_pair_sums(d_NxN, member_N, n_cells):
    """(C, C) sums and counts of d over network pairs of two different cells (diagonal zero)."""
    ok = member_N >= 0
    onehot = np.zeros((int(ok.sum()), n_cells))
    onehot[np.arange(int(ok.sum())), member_N[ok]] = 1
    s = onehot.T @ np.asarray(d_NxN, np.float64)[np.ix_(ok, ok)] @ onehot
    n = onehot.sum(0)
    c = np.outer(n, n)
    np.fill_diagonal(s, 0)
    np.fill_diagonal(c, 0)
    return s, c


def cell_permutation_test(
    d_NxN, acc_N, cells_N, *, quantile: float = 0.25, exclude=None, n_permutations: int = 2000, seed: int = 0
) -> CellPermutationResult:
    """ "Optimal cells are more alike than suboptimal cells", with hyperparameter cells as the unit.

    Each cell (networks that differ only by seed, `groups.hyperparameter_cells`) gets the mean
    accuracy of its analysed seeds; the top `quantile` of cells is optimal, the bottom suboptimal
    (`groups.split_groups` on cells, ties broken by `seed`). The statistic is
    T = mean distance between networks of two *different* suboptimal cells - the same for optimal
    cells; pairs within one cell never enter, so "seeds of one cell are alike" cannot drive T. The
    null re-assigns the optimal label to random sets of the same number of the pooled cells (all
    assignments when there are at most `n_permutations`, exact p; else random, p = (1+#{T*>=T})/(1+P)).

    What it can conclude: settings that train well give networks closer to each other than
    settings that train poorly. What it cannot: whether accuracy or a shared hyperparameter value
    makes them close (if the optimal cells all share one learning rate, networks with that learning
    rate may be alike whatever their accuracy); that question is `seed_dispersion`'s. With few
    cells the smallest attainable p is 1 / C(cells, optimal cells): read `n_permutations` and `exact`.

    Args:
      d_NxN: distances between the networks (the rows of acc_N / cells_N).
      acc_N: test accuracy; cells_N: cell id per network.
      quantile: fraction of cells in each group.
      exclude: networks to leave out (e.g. ``states != "ok"``).

    Returns:
      A `CellPermutationResult`.

    Raises:
      ClaimError: with fewer than 4 cells (2 per group).
    """
    cell_C, acc_C, n_C, member_N = cell_summary(acc_N, cells_N, exclude=exclude)
    lab_C = groups.split_groups(acc_C, quantile=quantile, seed=seed)
    pool = np.flatnonzero((lab_C == OPTIMAL) | (lab_C == SUBOPTIMAL))
    s, c = _cell_pair_sums(d_NxN, member_N, len(cell_C))
    s, c = s[np.ix_(pool, pool)], c[np.ix_(pool, pool)]
    is_opt = lab_C[pool] == OPTIMAL

    def within(m):  # (P, m) masks -> mean over different-cell pairs inside the mask, and outside it
        m = m.astype(np.float64)
        r = 1 - m
        return (((m @ s) * m).sum(1) / ((m @ c) * m).sum(1), ((r @ s) * r).sum(1) / ((r @ c) * r).sum(1))

    wo, ws = within(is_opt[None])
    t_obs = float(ws[0] - wo[0])
    masks, exact = _splits(len(pool), int(is_opt.sum()), n_permutations, seed)
    t = [np.subtract(*within(masks[i : i + 4096])[::-1]) for i in range(0, len(masks), 4096)]
    pg, pl = _p_values(t_obs, np.concatenate(t), exact)
    return CellPermutationResult(
        t_obs, float(wo[0]), float(ws[0]), pg, pl, len(masks), exact, int(is_opt.sum()), int((~is_opt).sum())
    )


class SeedDispersion(NamedTuple):
    """Spearman correlation over cells of the seeds' dispersion with the cell's accuracy."""

    rho: float
    p_value: float  # two-sided
    p_less: float  # one-sided, rho < 0: cells that train well have seeds that end up alike
    n_cells: int
    cells: pd.DataFrame  # cell, n_seeds, accuracy, dispersion


def seed_dispersion(d_NxN, acc_N, cells_N, *, exclude=None) -> SeedDispersion:
    """Do cells that train well have seeds that end up alike? The claim free of hyperparameter confounding.

    Within each hyperparameter cell the networks differ only by seed, so the cell's dispersion (mean
    pairwise distance among its analysed seeds) says how much the seed alone moves the converged
    weights. Spearman's rho (``scipy.stats.spearmanr``) of dispersion against the cell's mean accuracy,
    over the cells with at least 2 analysed seeds; rho < 0 supports the claim.

    When not to trust it: with few cells (p comes from the t approximation, n - 2 d.o.f.), or when
    poor cells barely moved from their seed-random initialisation (their dispersion is then the
    initialisation's spread, not a property of training: compare with the distance at epoch 0).

    Returns:
      A `SeedDispersion` (NaN rho / p with fewer than 3 such cells or a constant column).
    """
    cell_C, acc_C, n_C, member_N = cell_summary(acc_N, cells_N, exclude=exclude)
    # within-cell sums over the ordered pairs (i != j) of one cell
    ok = member_N >= 0
    d = np.asarray(d_NxN, np.float64)[np.ix_(ok, ok)]
    same = member_N[ok][:, None] == member_N[ok][None, :]
    np.fill_diagonal(same, False)
    tot = np.bincount(member_N[ok], (d * same).sum(1), minlength=len(cell_C))
    with np.errstate(invalid="ignore", divide="ignore"):
        disp_C = np.where(n_C >= 2, tot / (n_C * (n_C - 1)), np.nan)
    cells = pd.DataFrame({"cell": cell_C, "n_seeds": n_C, "accuracy": acc_C, "dispersion": disp_C})
    use = np.isfinite(disp_C)
    rho = p = p_less = float("nan")
    if use.sum() >= 3 and np.ptp(disp_C[use]) > 0 and np.ptp(acc_C[use]) > 0:
        r = ss.spearmanr(disp_C[use], acc_C[use])
        rho, p = float(r.statistic), float(r.pvalue)
        p_less = float(ss.spearmanr(disp_C[use], acc_C[use], alternative="less").pvalue)
    return SeedDispersion(rho, p, p_less, int(use.sum()), cells)


def _grid_tests(dists, layers, acc_N, exclude):
    keep = np.isfinite(np.asarray(acc_N, np.float64))
    if exclude is not None:
        keep &= ~np.asarray(exclude, bool)
    for metric, mats in dists.items():
        for layer, d in mats.items():
            if layers is not None and layer not in layers:
                continue
            d = np.asarray(d, np.float64)
            if np.isfinite(d[np.ix_(keep, keep)]).all():
                yield metric, layer, d


def cell_claim_table(
    dists: Mapping[str, Mapping[str, np.ndarray]],
    acc_N,
    cells_N,
    *,
    exclude=None,
    quantile: float = 0.25,
    layers: Sequence[str] | None = None,
    n_permutations: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """`cell_permutation_test` for every metric and layer (the grid-respecting claim_tests rows).

    Returns:
      DataFrame: metric, layer, n_optimal_cells, n_suboptimal_cells, within_optimal, within_suboptimal
      (different-cell pairs), ratio, statistic, p_greater, p_less, exact, n_permutations, p_value
      (two-sided), p_holm, p_bh, verdict (Holm, see `adjust_table`). Empty, with ``attrs["skipped"]``
      saying why, when the zoo has fewer than 4 cells.
    """
    rows = []
    for metric, layer, d in _grid_tests(dists, layers, acc_N, exclude):
        try:
            r = cell_permutation_test(
                d, acc_N, cells_N, quantile=quantile, exclude=exclude, n_permutations=n_permutations, seed=seed
            )
        except ClaimError as e:
            out = adjust_table(pd.DataFrame(rows))
            out.attrs["skipped"] = f"cell-level test not run: {e}"
            return out
        rows.append(
            {
                "metric": metric,
                "layer": layer,
                "n_optimal_cells": r.n_optimal_cells,
                "n_suboptimal_cells": r.n_suboptimal_cells,
                "within_optimal": r.within_optimal,
                "within_suboptimal": r.within_suboptimal,
                "ratio": r.within_suboptimal / r.within_optimal if r.within_optimal > 0 else float("nan"),
                "statistic": r.statistic,
                "p_greater": r.p_greater,
                "p_less": r.p_less,
                "exact": r.exact,
                "n_permutations": r.n_permutations,
                "p_value": float(two_sided(r.p_greater, r.p_less)),
                "direction": float(np.sign(r.p_less - r.p_greater)),
            }
        )
    return adjust_table(pd.DataFrame(rows), direction="direction", alpha=alpha).drop(
        columns="direction", errors="ignore"
    )


def seed_dispersion_table(
    dists: Mapping[str, Mapping[str, np.ndarray]],
    acc_N,
    cells_N,
    *,
    exclude=None,
    layers: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`seed_dispersion` for every metric and layer.

    Returns:
      (tests, cells): tests has metric, layer, n_cells, rho, p_value (two-sided), p_holm, p_bh,
      p_less (one-sided, rho < 0), verdict ("holds": rho < 0 with Holm p < alpha); cells has metric,
      layer, cell, n_seeds, accuracy, dispersion.
    """
    rows, per_cell = [], []
    for metric, layer, d in _grid_tests(dists, layers, acc_N, exclude):
        r = seed_dispersion(d, acc_N, cells_N, exclude=exclude)
        rows.append(
            {
                "metric": metric,
                "layer": layer,
                "n_cells": r.n_cells,
                "rho": r.rho,
                "p_value": r.p_value,
                "p_less": r.p_less,
                "direction": -np.sign(r.rho) if np.isfinite(r.rho) else 0.0,
            }
        )
        per_cell.append(r.cells.assign(metric=metric, layer=layer))
    tests = adjust_table(pd.DataFrame(rows), direction="direction", alpha=alpha).drop(
        columns="direction", errors="ignore"
    )
    cells = (
        pd.concat(per_cell, ignore_index=True)[["metric", "layer", "cell", "n_seeds", "accuracy", "dispersion"]]
        if per_cell
        else pd.DataFrame(columns=["metric", "layer", "cell", "n_seeds", "accuracy", "dispersion"])
    )
    return tests, cells


# ----------------------------------------------------------------------------------- dispersion


def wide_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """A tidy statistics table (network, layer, statistic, value) as networks × (layer, statistic)."""
    return table.pivot_table(
        index="network", columns=["layer", "statistic"], values="value", aggfunc="first", dropna=False
    )


def dispersion(
    table: pd.DataFrame, labels, *, n_permutations: int = 2000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Variance across networks (ddof 1) of every statistic within the optimal and suboptimal groups.

    The permutation test (same splits as `permutation_test`) asks whether the suboptimal group's
    variance exceeds the optimal group's, with T = log(var_suboptimal / var_optimal).

    Args:
      table: tidy statistics (network, layer, statistic, value), networks numbered like `labels`.
      labels: group labels.

    Returns:
      DataFrame: layer, statistic, var_optimal, var_suboptimal, ratio, p_greater, p_less, p_value
      (two-sided), p_holm, p_bh, verdict (Holm over all rows, see `adjust_table`).
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
    t_perm = np.concatenate([log_ratio(masks[c : c + 1024])[0] for c in range(0, len(masks), 1024)])
    rows = []
    for j, c in enumerate(cols):
        layer, stat = wide.columns[c]
        if not np.isfinite(t_obs[0, j]):
            continue  # a constant statistic (e.g. zero variance in one group)
        tp = t_perm[:, j]
        pg, pl = _p_values(float(t_obs[0, j]), tp[np.isfinite(tp)], exact)
        rows.append(
            {
                "layer": layer,
                "statistic": stat,
                "var_optimal": vo[0, j],
                "var_suboptimal": vs[0, j],
                "ratio": vs[0, j] / vo[0, j],
                "p_greater": pg,
                "p_less": pl,
                "p_value": float(two_sided(pg, pl)),
                "direction": float(np.sign(pl - pg)),
            }
        )
    return adjust_table(pd.DataFrame(rows), direction="direction", alpha=alpha).drop(
        columns="direction", errors="ignore"
    )


# --------------------------------------------------------------------------------- correlations


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (``scipy.stats.spearmanr``); NaN if either
    input is constant or n < 3."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r = ss.spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties corrected, ``scipy.stats.kendalltau``); NaN if an input is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(ss.kendalltau(x, y).statistic)


def correlations(table: pd.DataFrame, acc_N, *, exclude=None) -> pd.DataFrame:
    """Spearman correlation of every (layer, statistic) with test accuracy.

    Returns:
      DataFrame: layer, statistic, rho, p_value, p_holm, p_bh (over all rows), n (kept networks with a
      finite value).
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
    return adjust_table(pd.DataFrame(rows))


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


def hyperparameter_features(hparams: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The numeric dynamic hyperparameters that vary in the zoo (log10 of the positive scale ones).

    Args:
      hparams: one row per network (``hparams.csv`` or the last epoch of ``metrics.csv``); identifiers,
        metrics and health flags (`groups.NOT_HYPERPARAMETERS`, e.g. test_acc, max_abs_weight) are
        ignored, so nothing measured on the trained network leaks into the baseline.
    """
    cols = [
        c
        for c in groups.hyperparameter_columns(hparams)
        if pd.api.types.is_numeric_dtype(hparams[c])
        and not pd.api.types.is_bool_dtype(hparams[c])
        and hparams[c].nunique() > 1
    ]
    out = []
    for c in cols:
        v = hparams[c].to_numpy(np.float64)
        out.append(np.log10(v) if (v > 0).all() and c in ("learning_rate", "init_scale", "weight_decay") else v)
    if not out:
        return [], np.zeros((len(hparams), 0))
    return cols, np.stack(out, 1)


RIDGE_ALPHAS = tuple(10.0 ** np.arange(-3, 4))


def cell_folds(groups_N, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) fold index per network, whole groups (hyperparameter cells) per fold.

    scikit-learn's ``GroupKFold(shuffle=True)``: no group is in two folds, so a held-out network's
    cell never appears among the training networks. With a single group (a seeds-only zoo) there is
    no cell to leak and each network is its own group.
    """
    from sklearn.model_selection import GroupKFold

    groups_N = np.asarray(groups_N)
    if len(np.unique(groups_N)) < 2:
        groups_N = np.arange(len(groups_N))
    k = min(int(folds), len(np.unique(groups_N)))
    if k < 2:
        raise ClaimError(f"folds: {folds!r} must be >= 2 (and the zoo needs >= 2 networks)")
    fold_N = np.empty(len(groups_N), np.int64)
    for f, (_, test) in enumerate(GroupKFold(k, shuffle=True, random_state=seed).split(groups_N, groups=groups_N)):
        fold_N[test] = f
    return fold_N


def predict_accuracy(
    features: Mapping[str, tuple[list[str], np.ndarray]], acc_N, *, groups_N=None, folds: int = 5, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicts test accuracy of held-out hyperparameter cells from each feature set.

    Folds come from `cell_folds(groups_N)`: pass the hyperparameter cells (`groups.hyperparameter_cells`)
    so that seeds of one cell are never on both sides; otherwise the score measures memorised cells.
    Every feature set (weights and the hyperparameters-only baseline) is scored on the same folds.
    Models: "ridge" (scikit-learn's ``RidgeCV`` on standardised features, alpha in `RIDGE_ALPHAS` by
    efficient leave-one-out on the training fold; predictions clipped to the training targets' range)
    and "gradient_boosting" (``GradientBoostingRegressor``). Non-finite feature columns are dropped.
    Scores on the out-of-fold predictions: R² (``sklearn.metrics.r2_score``) and Kendall's tau.

    Args:
      features: ``{name: (names, X_NxF)}``, e.g. ``{"weights": weight_features(p), "hyperparameters": ...}``.
      acc_N: accuracy of the kept networks (rows of every X).
      groups_N: cell id per network (default: every network its own group, i.e. plain k-fold).
      folds: number of folds (at most the number of groups).
      seed: fold assignment and boosting seed.

    Returns:
      (scores, predictions): scores has columns features, model, r2, kendall_tau, n_features, n_folds;
      predictions has row, fold, accuracy and one column per features × model.
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(acc_N, np.float64)
    n = len(y)
    if n < 4:
        raise ClaimError(f"predict_accuracy: needs at least 4 networks, got {n}")
    fold_N = cell_folds(np.arange(n) if groups_N is None else groups_N, folds, seed)
    k = int(fold_N.max()) + 1
    rows, preds = [], {"row": np.arange(n), "fold": fold_N, "accuracy": y}
    for fname, (_names, x) in features.items():
        x = np.asarray(x, np.float64)
        x = x[:, np.isfinite(x).all(0)]  # e.g. a variance that overflowed float32 in a blown-up network
        if x.shape[1] == 0:
            continue
        for model in ("ridge", "gradient_boosting"):
            yhat = np.empty(n)
            for f in range(k):
                test, train = fold_N == f, fold_N != f
                if model == "ridge":  # clipped to the training targets' range: a blown-up network's
                    # extreme features must not extrapolate to accuracies of 1e6
                    r = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x[train], y[train])
                    yhat[test] = np.clip(r.predict(x[test]), y[train].min(), y[train].max())
                else:
                    gb = GradientBoostingRegressor(
                        n_estimators=200, max_depth=2, learning_rate=0.05, subsample=1.0, random_state=seed
                    )
                    yhat[test] = gb.fit(x[train], y[train]).predict(x[test])
            preds[f"{fname}:{model}"] = yhat
            rows.append(
                {
                    "features": fname,
                    "model": model,
                    "r2": float(r2_score(y, yhat)),
                    "kendall_tau": kendall_tau(y, yhat),
                    "n_features": x.shape[1],
                    "n_folds": k,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(preds)


# ---------------------------------------------------------------------------------- bin divergence


def _kde_grid_logdens(samples: list[np.ndarray], grid: int):
    pooled = np.concatenate(samples)
    lo, hi = pooled.min(), pooled.max()
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    g = jnp.linspace(lo - pad, hi + pad, grid)
    return np.asarray(g), [np.asarray(_kde(jnp.asarray(s, jnp.float32), g.astype(jnp.float32))) for s in samples]


_kde = jax.jit(distances.kde_logdensity)


def bin_divergence(values_N, bins_N, *, grid: int = 1000, max_samples: int = 20000, seed: int = 0) -> np.ndarray:
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


def layer_depths(layers: Sequence[str]) -> dict[str, float]:
    """Per-depth-normalised position in [0, 1] of each layer (input side 0, output layer 1).

    ``layers`` must be in the model's execution order (``stats.layer_order(params)``, the order
    of a claim table's rows); names are never sorted. Same as ``stats.layer_depths``.
    """
    return stats.layer_depths(layers)


def depth_profiles(
    claim_tables: Mapping[str, pd.DataFrame], metric: str, layer_orders: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
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
        order = (
            list(t.layer)
            if layer_orders is None or zoo not in layer_orders
            else [l for l in layer_orders[zoo] if l in set(t.layer)]
            + [l for l in t.layer if l not in set(layer_orders[zoo])]
        )
        depth = layer_depths(order)
        for r in t.itertuples():
            rows.append(
                {
                    "zoo": zoo,
                    "layer": r.layer,
                    "depth": depth[r.layer],
                    "ratio": r.ratio,
                    "p_greater": r.p_greater,
                    "verdict": r.verdict,
                }
            )
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
    return {
        "same_verdict": len(set(whole_network_verdicts.values())) == 1,
        "verdicts": dict(whole_network_verdicts),
        "depth_trend": trend,
        "same_trend": len(signs) == 1 and len(trend) > 1,
    }
