"""`analyze_params` (moving to `jaxweights.pipelines.analyze_params`); the rest of this module moved to
`jaxweights.claims` and `jaxweights.pipelines.analyze`."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxweights import distances, rundir, stats, strength
from jaxweights.claims.summary import DEFAULT_METRICS
from jaxweights.claims.undefined import quiet_undefined, undefined_summary
from jaxweights.pipelines.errors import AnalysisError, check_metrics  # noqa: F401

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

    `layers` sets the chain order of kernel layers for node strength (default: the params' order,
    which is the execution order for a run's `params.npz`; names are never sorted).
    With several devices, statistics and distances run with the networks axis split over all of
    them (`train.networks_mesh`).
    """
    mesh = None
    if jax.device_count() > 1:  # the networks axis split over every device (same numbers as one device)
        from jaxweights import train

        mesh = train.networks_mesh()
        log.info("statistics and distances sharded over %d devices", mesh.size)
    with quiet_undefined():
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
        rundir.atomic_write_bytes(out / "node_strength.npz", buf.getvalue())
    except ValueError as e:  # a model whose layers do not form a chain (e.g. attention)
        log.warning("node strength skipped: %s", e)
    rundir.write_csv(out / "stats.csv", table)
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


def __getattr__(name: str):
    """Until the merge deletes this module: the names that moved to `pipelines.analyze` and `claims`."""
    import importlib

    for target in ("jaxweights.pipelines.analyze", "jaxweights.claims"):
        module = importlib.import_module(target)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
