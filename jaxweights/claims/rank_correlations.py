"""Rank correlations of weight statistics with accuracy (Spearman 1904; Kendall 1938, via scipy.stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats as ss

from jaxweights.claims.multiplicity import adjust_table
from jaxweights.claims.tables import wide_statistics


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (``scipy.stats.spearmanr``); NaN if either
    input is constant or n < 3.

    Args:
      x, y: paired samples.

    Returns:
      (rho, p): Spearman (1904) rank correlation and its two-sided p-value.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r = ss.spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties corrected, ``scipy.stats.kendalltau``); NaN if an input is constant.

    Args:
      x, y: paired samples.

    Returns:
      Kendall's (1938) tau-b (NaN if either is constant).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(ss.kendalltau(x, y).statistic)


def correlations(table: pd.DataFrame, acc_N, *, exclude=None) -> pd.DataFrame:
    """Spearman correlation of every (layer, statistic) with test accuracy.

    Returns:
      DataFrame: layer, statistic, rho, p_value, p_holm, p_bh (over all rows), n (kept networks with a
      finite value).

    Args:
      table: statistics table (network, layer, statistic, value).
      acc_N: test accuracy per network.
      exclude: boolean mask of networks left out.

    Returns:
      DataFrame: layer, statistic, rho, p_value, p_holm, p_bh (Holm 1979, Benjamini & Hochberg 1995).
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
