"""Permutation tests and bootstrap intervals of "optimal networks are more alike" on a distance matrix.

The claim (Zheng et al. 2024, arXiv 2408.11720): successful networks are similar to other successful networks in
their converged weights, while poor networks vary. Given one N×N distance matrix, `permutation_test` compares the
mean distance within the suboptimal group with the mean distance within the optimal group (networks exchangeable),
`cell_permutation_test` does the same with whole hyperparameter cells exchangeable, `seed_dispersion` asks whether
cells that train well have seeds that end up alike, and `bootstrap_ci` gives percentile intervals.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.stats as ss

from jaxweights.claims.groups import OPTIMAL, SUBOPTIMAL, ClaimError, split_groups


def _pair_mean(d_NxN, a, b) -> float:
    """Mean distance over pairs (i in a, j in b, i != j)."""
    sub = d_NxN[np.ix_(a, b)]
    ne = a[:, None] != b[None, :]
    return float(sub[ne].mean()) if ne.any() else float("nan")


def group_distances(d_NxN, labels) -> dict[str, float]:
    """Mean pairwise distance within the optimal group, within the suboptimal group and across.

    Args:
      d_NxN: symmetric distance matrix.
      labels: group labels (OPTIMAL, SUBOPTIMAL, ...).

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
    """Tests "optimal networks are more alike than suboptimal ones" (Zheng et al. 2024, arXiv 2408.11720).

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


BOOTSTRAP_BATCH_PAIRS = 2**25  # resampled pairs per batch (256 MB of float64)


def resampled_within(d_NxN, idx) -> np.ndarray:
    """Mean distance over the pairs of different networks among resampled positions.

    A pair of positions holding the same network (a network's distance to itself) does not count.

    Args:
      d_NxN: (N, N) distance matrix.
      idx: (..., k) network indices (floats are truncated to ints), one resample per leading index.

    Returns:
      (...) mean distances; NaN for a resample with no pair of different networks.
    """
    idx = np.asarray(idx).astype(int)
    sub = d_NxN[idx[..., :, None], idx[..., None, :]]
    ne = idx[..., :, None] != idx[..., None, :]
    with np.errstate(invalid="ignore"):
        return (sub * ne).sum((-2, -1)) / ne.sum((-2, -1))


def bootstrap_ci(d_NxN, labels, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple]:
    """Percentile bootstrap intervals of the within-group mean distances and their difference (Efron 1979).

    Networks are resampled with replacement within each group (``scipy.stats.bootstrap``, one group at a
    time); a pair of resampled positions counts only if it holds two different networks (a network's
    distance to itself is not a pair), so a resample of one network repeated has no value and is left out
    of the percentiles.

    Args:
      d_NxN: symmetric distance matrix.
      labels: group labels (OPTIMAL and SUBOPTIMAL networks are resampled).
      n_boot: resamples per group.
      level: confidence level.
      seed: seed of the resampling.

    Returns:
      ``{"within_optimal": (lo, hi), "within_suboptimal": (lo, hi), "difference": (lo, hi)}`` where
      difference = within_suboptimal - within_optimal.
    """
    d = np.asarray(d_NxN, np.float64)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)

    def boot(g):
        members = np.flatnonzero(labels == g).astype(np.float64)
        if len(members) < 2:  # no pair in any resample
            return np.full(n_boot, np.nan)
        with warnings.catch_warnings():  # resamples without a pair are NaN on purpose (left out below)
            warnings.simplefilter("ignore", ss.DegenerateDataWarning)
            r = ss.bootstrap(
                (members,),
                lambda i, axis=-1: resampled_within(d, i),
                n_resamples=n_boot,
                method="percentile",
                vectorized=True,
                batch=max(1, BOOTSTRAP_BATCH_PAIRS // len(members) ** 2),  # bounds the gathered distances
                random_state=rng,
            )
        return r.bootstrap_distribution

    bo, bs = boot(OPTIMAL), boot(SUBOPTIMAL)
    a = (1 - level) / 2 * 100
    ci = lambda x: tuple(float(v) for v in np.nanpercentile(x, [a, 100 - a]))
    return {"within_optimal": ci(bo), "within_suboptimal": ci(bs), "difference": ci(bs - bo)}


def cell_summary(acc_N, cells_N, *, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hyperparameter cells of the analysed networks: their mean accuracy and number of seeds.

    A network is analysed when its accuracy is finite and it is not in `exclude`.

    Args:
      acc_N: (N,) test accuracy per network.
      cells_N: (N,) hyperparameter cell id per network (`hyperparameter_cells`).
      exclude: optional (N,) bool mask of networks to leave out.

    Returns:
      (cell_C, acc_C, n_C, member_N): the C sorted cell ids that hold an analysed network, mean
      accuracy of each cell's analysed seeds, number of analysed seeds, and each network's position
      in cell_C (-1 for networks not analysed).

    Raises:
      ClaimError: `cells_N` and `acc_N` differ in shape.
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
      n_permutations: every assignment when there are at most this many (exact p), else this many
        random ones.
      seed: seed of the random assignments and of the tie-breaking in `split_groups`.

    Returns:
      A `CellPermutationResult`.

    Raises:
      ClaimError: with fewer than 4 cells (2 per group).
    """
    cell_C, acc_C, n_C, member_N = cell_summary(acc_N, cells_N, exclude=exclude)
    lab_C = split_groups(acc_C, quantile=quantile, seed=seed)
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

    Args:
      d_NxN: symmetric distance matrix.
      acc_N: test accuracy per network.
      cells_N: hyperparameter cell per network.
      exclude: boolean mask of networks left out.

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
