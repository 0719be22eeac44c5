"""Multiplicity: Holm (1979) and Benjamini-Hochberg (1995) adjusted p-values, and the verdict of a test.

Every table of many tests carries both: Holm controls the family-wise error and decides the verdicts; BH (the false
discovery rate) is reported beside it as the less strict reading.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats as ss


def _adjust_finite(p, adjust) -> np.ndarray:
    """`adjust` applied to the finite p-values of `p` (any shape); NaN stays NaN and is not counted as a test."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = adjust(p[ok])
    return out


def _holm_1d(p_m: np.ndarray) -> np.ndarray:
    m = len(p_m)
    order = np.argsort(p_m, kind="stable")
    adj = np.empty(m)
    adj[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p_m[order]))
    return adj


def holm(p) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: sorted p_(1) <= ... <= p_(m),
    adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)). NaN p-values stay NaN and are not counted in m.

    Args:
      p: p-values (any shape; NaN for a test that was not run).

    Returns:
      The adjusted p-values, same shape (NaN where `p` is NaN).
    """
    return _adjust_finite(p, _holm_1d)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg (1995) adjusted p-values (``scipy.stats.false_discovery_control``); NaN stays NaN
    and is not counted as a test.

    Args:
      p: p-values (any shape; NaN for a test that was not run).

    Returns:
      The adjusted p-values, same shape (NaN where `p` is NaN).
    """
    return _adjust_finite(p, lambda p_m: ss.false_discovery_control(p_m, method="bh"))


def two_sided(p_greater, p_less):
    """Two-sided p of a pair of one-sided permutation p-values: min(1, 2 min(p_greater, p_less)).

    Args:
      p_greater, p_less: one-sided p-values (arrays or floats).

    Returns:
      The two-sided p-values.
    """
    return np.minimum(1.0, 2 * np.minimum(np.asarray(p_greater, np.float64), np.asarray(p_less, np.float64)))


def verdict(p_adjusted: float, direction: float, alpha: float = 0.05) -> str:
    """ "holds" (the claim's direction, direction > 0), "reversed" (direction < 0) or "not significant".

    `p_adjusted` is a two-sided p already adjusted for multiplicity (the tables use Holm).

    Args:
      p_adjusted: two-sided, multiplicity-adjusted p.
      direction: sign of the effect (> 0: the claim's direction).
      alpha: significance level.

    Returns:
      "holds", "reversed" or "not significant".
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

    Args:
      table: one family of tests, one row each.
      p: the column of raw p-values.
      direction: optional column whose sign gives the direction of each effect.
      alpha: significance level of the verdicts.

    Returns:
      A copy of `table` with p_holm, p_bh (and verdict).
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
