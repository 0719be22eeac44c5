"""Claim tables: the permutation tests of every (metric, layer), and the dispersion of every statistic.

`claim_table` (networks exchangeable), `cell_claim_table` (hyperparameter cells exchangeable) and
`seed_dispersion_table` test the claim of Zheng et al. (2024, arXiv 2408.11720) on each distance matrix;
`dispersion` compares the variance of each weight statistic across the optimal and the suboptimal group.
Each table is one family of tests, Holm / Benjamini-Hochberg adjusted (`jaxweights.claims.multiplicity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxweights.claims.groups import OPTIMAL, SUBOPTIMAL, ClaimError
from jaxweights.claims.multiplicity import adjust_table, two_sided
from jaxweights.claims.permutation import (
    _p_values,
    _splits,
    bootstrap_ci,
    cell_permutation_test,
    group_distances,
    permutation_test,
    seed_dispersion,
)
from jaxweights.io import atomic


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

    Only (metric, layer) matrices whose distances among the networks with finite accuracy (and not
    excluded) are all finite are tested.

    Args:
      dists: ``{metric: {layer: (N, N) distances}}``.
      acc_N: (N,) test accuracy per network.
      cells_N: (N,) hyperparameter cell id per network (`hyperparameter_cells`).
      exclude: optional (N,) bool mask of networks to leave out.
      quantile: fraction of the cells in each of the optimal and suboptimal groups.
      layers: restrict to these layers (default all).
      n_permutations: every assignment of the cells when there are at most this many (exact p),
        else this many random ones.
      alpha: significance level of the verdicts.
      seed: seed of the permutations.

    Returns:
      DataFrame: metric, layer, n_optimal_cells, n_suboptimal_cells, within_optimal, within_suboptimal
      (different-cell pairs), ratio (NaN when within_optimal is not positive), statistic, p_greater,
      p_less, exact, n_permutations, p_value (two-sided), p_holm, p_bh, verdict (Holm, see
      `adjust_table`). Empty, with ``attrs["skipped"]`` saying why, when the test cannot run
      (`ClaimError`, e.g. fewer than 4 cells).
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
    """`seed_dispersion` for every metric and layer (the matrices `cell_claim_table` tests).

    Args:
      dists, acc_N, cells_N, exclude: as in `cell_claim_table` (distances ``{metric: {layer: (N, N)}}``,
        accuracy, cell ids and the networks left out).
      layers: restrict to these layers (default all).
      alpha: significance level of the verdicts.

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


def wide_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """A tidy statistics table as one row per network and one column per (layer, statistic).

    Args:
      table: tidy statistics (network, layer, statistic, value).

    Returns:
      DataFrame indexed by network, with (layer, statistic) MultiIndex columns (NaN where missing).
    """
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
      n_permutations: every split when there are at most this many (exact p), else this many random ones.
      seed: seed of the random splits.
      alpha: significance level of the verdicts.

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


# claim_tests.csv columns of the grid-respecting tests, joined on (metric, layer): the cell-level
# permutation test (`cell_claim_table`) and the seed dispersion (`seed_dispersion_table`).
CELL_COLUMNS = {
    "within_optimal": "within_optimal_cells",
    "within_suboptimal": "within_suboptimal_cells",
    "p_value": "p_cell",
    "p_holm": "p_cell_holm",
    "p_bh": "p_cell_bh",
    "verdict": "verdict_cell",
    "n_optimal_cells": "n_optimal_cells",
    "n_suboptimal_cells": "n_suboptimal_cells",
    "exact": "exact_cell",
    "n_permutations": "n_permutations_cell",
}


SEED_COLUMNS = {
    "n_cells": "seed_n_cells",
    "rho": "seed_rho",
    "p_value": "seed_p",
    "p_holm": "seed_p_holm",
    "p_bh": "seed_p_bh",
    "verdict": "verdict_seed",
}


HEADLINE_COLUMNS = ("p_value", "p_holm", "p_bh", *CELL_COLUMNS.values())


def with_grid_tests(
    ct: pd.DataFrame, dists, acc_n, cells_n, *, quantile: float, n_permutations: int, alpha: float, seed: int, out: Path
) -> tuple[pd.DataFrame, list[str]]:
    """A claim table with the cell-level test and the seed dispersion of each (metric, layer) beside it.

    Each family (network-level, cell-level, seed dispersion) is Holm/BH-adjusted over its own rows
    (`adjust_table`); their columns are renamed by `CELL_COLUMNS` and `SEED_COLUMNS` and joined on
    (metric, layer). Also writes ``out/seed_dispersion_cells.csv`` (one row per metric, layer, cell).

    Args:
      ct: the network-level claim table (`claim_table`).
      dists: ``{metric: {layer: (N, N) distances}}``.
      acc_n: (N,) test accuracy per network.
      cells_n: (N,) hyperparameter cell id per network.
      quantile: fraction of the cells in each group of the cell-level test.
      n_permutations: permutations of the cell-level test (see `cell_claim_table`).
      alpha: significance level.
      seed: seed of the permutations.
      out: folder of the CSV.

    Returns:
      (table, notes): `ct` with the grid tests' columns, and sentences saying which grid test could
      not run and why.
    """
    notes = []
    cc = cell_claim_table(
        dists, acc_n, cells_n, quantile=quantile, n_permutations=n_permutations, alpha=alpha, seed=seed
    )
    if cc.attrs.get("skipped"):
        notes.append(cc.attrs["skipped"])
    sd, sd_cells = seed_dispersion_table(dists, acc_n, cells_n, alpha=alpha)
    atomic.write_csv(out / "seed_dispersion_cells.csv", sd_cells)
    if not sd.empty and sd.rho.isna().all():
        notes.append(
            "seed dispersion not computed: it needs at least 3 hyperparameter cells with 2 or more analysed seeds"
        )
    key = ["metric", "layer"]
    for t, names in ((cc, CELL_COLUMNS), (sd, SEED_COLUMNS)):
        have = {k: v for k, v in names.items() if k in t}
        if not t.empty:
            ct = ct.merge(t[key + list(have)].rename(columns=have), on=key, how="left")
    return ct, notes


def verdict_counts(ct: pd.DataFrame, alpha: float) -> dict:
    """How many tests hold / are reversed, on Holm-adjusted p-values (the table's `verdict`), with the
    uncorrected counts beside them, named as such.

    A count of raw-p verdicts over tens of tests is not evidence (about alpha × tests hold by chance).

    Args:
      ct: a claim table (`claim_table`, with the grid tests beside it).
      alpha: significance level.

    Returns:
      ``{n_holds, n_reversed, n_holds_raw, n_reversed_raw, adjustment[, n_holds_cell, n_reversed_cell]}``.
    """
    raw = ct.p_value < alpha if "p_value" in ct else ct.p_greater.lt(alpha) | ct.p_less.lt(alpha)
    up = ct.p_greater < ct.p_less
    out = {
        "n_holds": int((ct.verdict == "holds").sum()),
        "n_reversed": int((ct.verdict == "reversed").sum()),
        "n_holds_raw": int((raw & up).sum()),
        "n_reversed_raw": int((raw & ~up).sum()),
        "adjustment": "holm" if "p_holm" in ct else "none",
    }
    if "verdict_cell" in ct:
        out["n_holds_cell"] = int((ct.verdict_cell == "holds").sum())
        out["n_reversed_cell"] = int((ct.verdict_cell == "reversed").sum())
    return out
