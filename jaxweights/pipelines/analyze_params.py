"""`jaxweights analyze-params`: statistics, node strength and distances of stacked parameters.

`analyze_params` is the part of `jaxweights analyze` that needs only the parameters (a run's
`params.npz`); `analyze_files` runs it on parameter files trained elsewhere (`jaxweights.io.importers`)
and adds `networks.csv` and the figures of `jaxweights.report.params_figures`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxweights import distances, stats, strength, train
from jaxweights.analysis import DEFAULT_METRICS, _check_metrics
from jaxweights.io import atomic, importers
from jaxweights.report.params_figures import write_figures

log = logging.getLogger("jaxweights")


def analyze_params(
    params,
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    layers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Writes stats.csv, node_strength.npz and distances/ for stacked `params` into `out`.

    With several devices, statistics and distances run with the networks axis split over all of
    them (`train.networks_mesh`).

    Args:
      params: stacked parameters, networks axis first.
      out: the output directory (exists).
      metrics: distance metrics (default `DEFAULT_METRICS`).
      block_size: networks per block of the N×N distance computation.
      layers: the chain order of kernel layers for node strength (default: the params' order,
        which is the execution order for a run's `params.npz`; names are never sorted).

    Returns:
      The tidy statistics table (also written to `out/stats.csv`).
    """
    mesh = None
    if jax.device_count() > 1:  # the networks axis split over every device (same numbers as one device)
        mesh = train.networks_mesh()
        log.info("statistics and distances sharded over %d devices", mesh.size)
    with _quiet_undefined():
        table = stats.compute_statistics(params, per=("leaf", "layer", "network"), mesh=mesh)
    why = undefined_summary(table, params)
    if why:
        log.warning("%s", why)
    try:
        ns = strength.node_strength(params, layers=layers)
        fluct = strength.layer_fluctuation(params, layers=layers)
        table = pd.concat([table, fluct], ignore_index=True)
        buf = io.BytesIO()
        np.savez(buf, **ns)
        atomic.atomic_write_bytes(out / "node_strength.npz", buf.getvalue())
    except ValueError as e:  # a model whose layers do not form a chain (e.g. attention)
        log.warning("node strength skipped: %s", e)
    atomic.write_csv(out / "stats.csv", table)
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    _check_metrics(chosen)
    with _quiet_undefined() as f:
        distances.write(str(out), distances.compute(params, metrics=chosen, block_size=block_size, mesh=mesh))
    if f.dropped:
        log.warning(
            "statistic-vector distances (euclidean, cosine): %d (metric, layer, statistic) columns dropped "
            "because some network's statistic is undefined (the networks above)",
            f.dropped,
        )
    return table


class _DropUndefined(logging.Filter):
    """Drops (and counts) the per-(layer, statistic) "undefined" lines; the caller says it once."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record):
        msg = str(record.msg)
        drop = msg.startswith("statistic %r undefined") or msg.startswith("%s distance: statistic %r undefined")
        self.dropped += drop
        return not drop


class _quiet_undefined:
    """Silences the one warning per undefined (layer, statistic) of `stats` and `distances`."""

    def __enter__(self):
        self.f = _DropUndefined()
        for name in (stats.__name__, distances.__name__):
            logging.getLogger(name).addFilter(self.f)
        return self.f

    def __exit__(self, *exc):
        for name in (stats.__name__, distances.__name__):
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
      table: a statistics table with an `undefined` column.
      params: the stacked parameters it was computed from.

    Returns:
      One row per network with undefined statistics.
    """
    bad = table[table.undefined.astype(bool)].groupby("network").size()
    if bad.empty:
        return pd.DataFrame(columns=["network", "n_undefined", "max_abs_weight", "reason"])
    flat = stats.flatten(params)
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
      table: a statistics table with an `undefined` column.
      params: the stacked parameters it was computed from.

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


def analyze_files(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    layers: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    figures: bool = True,
):
    """Statistics, node strength, distances and figures of networks trained elsewhere.

    The same analysis as `jaxweights analyze` (`analyze_params`), for parameter
    files: writes `out/stats.csv`, `out/node_strength.npz`, `out/distances/<metric>.npz`,
    `out/networks.csv` (network, source file) and `out/figures/*.png`.

    Args:
      paths: parameter files (see `jaxweights.io.importers.load`); their networks are stacked into one population.
      out: output directory (created).
      layout, stacked, layers: see `jaxweights.io.importers.load`.
      metrics: distance metrics (default: `DEFAULT_METRICS`).
      block_size: networks per block of the N×N distance computation.
      figures: also write the figures.

    Returns:
      `(params, stats_table)`: the stacked parameters and the tidy statistics table.
    """
    out = Path(out)
    params, srcs = importers.load(paths, layout=layout, stacked=stacked, layers=layers, with_sources=True)
    log.info("analysing %d networks from %d file(s)", len(srcs), len(list(paths)))
    out.mkdir(parents=True, exist_ok=True)
    table = analyze_params(params, out, metrics=metrics, block_size=block_size, layers=layers)
    atomic.write_csv(out / "networks.csv", pd.DataFrame({"network": np.arange(len(srcs)), "source": srcs}))
    if figures:
        chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
        first = out / "distances" / f"{chosen[0]}.npz"
        dists = None
        if first.exists():
            with np.load(first) as z:
                dists = {k: z[k] for k in z.files}
        write_figures(params, out, dists=dists)
    return params, table
