"""Undefined (NaN) statistics: why a network has them, and one log line instead of one per (layer, statistic)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from jaxweights.models import paths
from jaxweights.weights import compute
from jaxweights.weights.distances import vectors


class DropUndefined(logging.Filter):
    """Drops (and counts) the per-(layer, statistic) "undefined" lines; the caller says it once."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record):
        msg = str(record.msg)
        drop = msg.startswith("%d statistic(s) undefined") or msg.startswith(
            "%s distance: %d statistic column(s) undefined"
        )
        self.dropped += drop
        return not drop


class quiet_undefined:
    """Silences the statistics' and the distances' warnings about undefined statistics; the caller says why once."""

    def __enter__(self):
        self.f = DropUndefined()
        for name in (compute.__name__, vectors.__name__):
            logging.getLogger(name).addFilter(self.f)
        return self.f

    def __exit__(self, *exc):
        for name in (compute.__name__, vectors.__name__):
            logging.getLogger(name).removeFilter(self.f)


# |w|**4 (the fourth moment behind kurtosis) overflows float32 above this.
# moments are computed on rescaled weights (jaxweights.stats) and never overflow; a float32 *sum* such as
# `l1` of a large layer can, once |w| reaches about float32 max / 1e8
_F32_SUM_RISK = float(np.finfo(np.float32).max) / 1e8


def undefined_reasons(table: pd.DataFrame, params) -> pd.DataFrame:
    """Why each network with undefined (NaN) statistics has them: one row per such network.

    Columns: network, n_undefined, max_abs_weight, reason, one of "non-finite weights",
    "float32 overflow" (finite weights so large, max |w| above ~3.4e30, that a float32 sum over a
    layer such as `l1` can overflow), "zero variance or all-zero kernel" (scipy's criterion, see
    `jaxweights.stats`).

    Args:
      table: statistics table with an `undefined` column.
      params: stacked parameters (networks axis first).

    Returns:
      DataFrame: network, n_undefined, max_abs_weight, reason.
    """
    bad = table[table.undefined.astype(bool)].groupby("network").size()
    if bad.empty:
        return pd.DataFrame(columns=["network", "n_undefined", "max_abs_weight", "reason"])
    flat = paths.flatten(params)
    n = len(next(iter(flat.values())))
    finite = np.ones(n, bool)
    top = np.zeros(n)
    small = True
    for w in flat.values():
        w = np.asarray(w).reshape(n, -1)
        small &= w.dtype.itemsize <= 4
        ok = np.isfinite(w)
        finite &= ok.all(1)
        top = np.maximum(top, np.where(ok, np.abs(w.astype(np.float64)), 0).max(1, initial=0))
    nets = bad.index.to_numpy()
    reason = np.where(
        ~finite[nets],
        "non-finite weights",
        np.where(small & (top[nets] > _F32_SUM_RISK), "float32 overflow", "zero variance or all-zero kernel"),
    )
    return pd.DataFrame({"network": nets, "n_undefined": bad.to_numpy(), "max_abs_weight": top[nets], "reason": reason})


def undefined_summary(table: pd.DataFrame, params) -> str:
    """One line naming how many statistics are undefined, in which networks and why ("" if none).

    Args:
      table: statistics table with an `undefined` column.
      params: stacked parameters (networks axis first).

    Returns:
      The line, or "".
    """
    r = undefined_reasons(table, params)
    if r.empty:
        return ""
    parts = []
    for why, g in r.groupby("reason", sort=False):
        nets = ", ".join(map(str, g.network.head(8))) + (", ..." if len(g) > 8 else "")
        extra = f", max |w| up to {g.max_abs_weight.max():.3g}" if why == "float32 overflow" else ""
        parts.append(f"{len(g)} network(s) with {why} ({nets}{extra})")
    return (
        f"{int(r.n_undefined.sum())} statistic values undefined (NaN, column `undefined` of stats.csv) in "
        + "; ".join(parts)
    )
