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

from jaxweights import train
from jaxweights.claims.summary import DEFAULT_METRICS
from jaxweights.claims.undefined import quiet_undefined, undefined_summary
from jaxweights.io import atomic, importers
from jaxweights.pipelines import heartbeat
from jaxweights.pipelines.errors import check_metrics
from jaxweights.report.params_figures import write_figures
from jaxweights.weights import compute, distances, strength

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
    with quiet_undefined():
        table = compute.compute_statistics(params, per=("leaf", "layer", "network"), mesh=mesh)
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
    check_metrics(chosen)
    with quiet_undefined() as f:
        distances.write(str(out), distances.compute(params, metrics=chosen, block_size=block_size, mesh=mesh))
    if f.dropped:
        log.warning(
            "statistic-vector distances (euclidean, cosine): %d (metric, layer, statistic) columns dropped "
            "because some network's statistic is undefined (the networks above)",
            f.dropped,
        )
    return table


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
      paths: parameter files (see `jaxweights.io.importers.files`); their networks are stacked into one population.
      out: output directory (created).
      layout, stacked, layers: see `jaxweights.io.importers.files`.
      metrics: distance metrics (default: `DEFAULT_METRICS`).
      block_size: networks per block of the N×N distance computation.
      figures: also write the figures.

    Returns:
      `(params, stats_table)`: the stacked parameters and the tidy statistics table.
    """
    out = Path(out)
    paths = list(paths)
    with heartbeat.step(f"{out}: reading {len(paths)} file{'' if len(paths) == 1 else 's'}"):
        params, srcs = importers.load(paths, layout=layout, stacked=stacked, layers=layers, with_sources=True)
    out.mkdir(parents=True, exist_ok=True)
    n = len(srcs)
    with heartbeat.step(f"{out}: analysing {n} network{'' if n == 1 else 's'} (statistics, node strength, distances)"):
        table = analyze_params(params, out, metrics=metrics, block_size=block_size, layers=layers)
    atomic.write_csv(out / "networks.csv", pd.DataFrame({"network": np.arange(len(srcs)), "source": srcs}))
    if figures:
        chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
        first = out / "distances" / f"{chosen[0]}.npz"
        dists = None
        if first.exists():
            with np.load(first) as z:
                dists = {k: z[k] for k in z.files}
        write_figures(params, out, dists=dists, metric=chosen[0])
    return params, table
