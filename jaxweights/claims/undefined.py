"""Undefined (NaN) statistics: why a network has them, and one log line instead of one per (layer, statistic)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from jaxweights.io import atomic
from jaxweights.models import paths
from jaxweights.weights import compute, units
from jaxweights.weights.distances import vectors

log = logging.getLogger(__name__)


class DropUndefined(logging.Filter):
    """Drops (and counts) the per-(layer, statistic) "undefined" lines; the caller says it once."""

    def __init__(self, non_finite: bool = False):
        super().__init__()
        self.dropped = 0
        self.non_finite = non_finite

    def filter(self, record):
        msg = str(record.msg)
        drop = msg.startswith("%d statistic(s) undefined") or msg.startswith(
            "%s distance: %d statistic column(s) undefined"
        )
        drop |= self.non_finite and "network(s) %s have NaN or infinite weights" in msg
        self.dropped += drop
        return not drop


class quiet_undefined:
    """Silences the statistics' and the distances' warnings about undefined statistics; the caller says why once.

    With `non_finite`, also the lines naming networks with non-finite weights (`units.warn_non_finite`),
    for a caller whose "networks" are (network, snapshot) rows and who reports them itself (`warn_undefined`).
    """

    def __init__(self, non_finite: bool = False):
        self.names = (compute.__name__, vectors.__name__) + ((units.__name__,) if non_finite else ())
        self.non_finite = non_finite

    def __enter__(self):
        self.f = DropUndefined(self.non_finite)
        for name in self.names:
            logging.getLogger(name).addFilter(self.f)
        return self.f

    def __exit__(self, *exc):
        for name in self.names:
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


NON_FINITE, NO_VARIANCE = "non-finite weights", "zero variance or all-zero kernel"


def undefined_details(table: pd.DataFrame) -> pd.DataFrame:
    """One row per undefined (reason, statistic, layer, network) of a statistics table.

    A (network, layer) whose every statistic is undefined (at one epoch, when the table has an
    `epoch` column) has non-finite weights: finite weights always give a mean and a norm. Otherwise
    the undefined statistics are those of a layer with zero variance or an all-zero kernel.

    Args:
      table: statistics table (`network, layer, statistic, undefined`, optionally `epoch`), such as
        stats.csv or stats_over_epochs.csv.

    Returns:
      DataFrame: reason, statistic, layer, network, rows (how many rows of `table`, e.g. epochs).
    """
    und = table.undefined.astype(bool)
    keys = [table[k] for k in ("epoch", "network", "layer") if k in table]
    every = und.groupby(keys).transform("all")
    hit = table[und].assign(reason=np.where(every[und], NON_FINITE, NO_VARIANCE))
    cols = ["reason", "statistic", "layer", "network"]
    return hit.groupby(cols, sort=True).size().rename("rows").reset_index()


def warn_undefined(
    what: str, table: pd.DataFrame, path: str | os.PathLike, shown: str | os.PathLike | None = None
) -> list[str]:
    """Logs one warning per cause of undefined statistics, counting distinct networks and layers.

    The details (`undefined_details`) are written to `path`; each line names that file.

    Args:
      what: what was computed (the start of each line).
      table: statistics table with an `undefined` column.
      path: the CSV of the details (written only when something is undefined).
      shown: the path the lines name (default `path`), e.g. where the analysis folder will be moved.

    Returns:
      The lines logged (none when every statistic is defined).
    """
    d = undefined_details(table)
    if d.empty:
        return []
    atomic.write_csv(path, d)
    lines = []
    for why, g in d.groupby("reason", sort=True):
        lines.append(
            f"{what}: {g.statistic.nunique()} statistic(s) undefined (NaN) in {g.network.nunique()} network(s) "
            f"({', '.join(map(str, sorted(g.network.unique())[:8]))}{', ...' if g.network.nunique() > 8 else ''}) "
            f"and {g.layer.nunique()} layer(s), because of {why}; details in {shown or path}"
        )
        log.warning("%s", lines[-1])
    return lines
