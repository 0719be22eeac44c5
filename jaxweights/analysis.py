"""`analyze_workdir(workdir)`: statistics, node strength and distances of a trained zoo.

Reads the final parameters of every network (`params.npz`, networks axis first) and writes
`<workdir>/analysis/`:

    stats.csv                 network, layer, statistic, value, undefined (per leaf, per layer
                              and "__all__" for the whole network; layer fluctuation included)
    node_strength.npz         one (N, nodes) array per layer ("input" first)
    distances/<metric>.npz    one N×N array per layer for every distance metric
    networks.csv              the last epoch's metrics of each network (accuracy, diverged, ...)

The new analysis is built in a temporary folder and swapped in at the end, so an interrupted
`analyze` leaves the previous analysis intact. A run with static groups is analysed per group
(`analysis/groups/<NN>/`), with a combined `stats.csv` carrying a `group` column.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from jaxweights import distances, rundir, stats, strength

log = logging.getLogger("jaxweights")


# Energy distance is exact but O(D log D) per pair (minutes at N=256); ask for it with --metrics.
DEFAULT_METRICS = ("wasserstein", "ks", "jensenshannon", "kde_kl", "euclidean", "cosine")


class AnalysisError(ValueError):
    """A request the analysis cannot serve (unknown metric, folder without a trained zoo)."""


def _check_metrics(metrics: Sequence[str]) -> None:
    known = set(distances.registered_distances()) | set(distances.BUILTIN)
    for m in metrics:
        if m not in known:
            raise AnalysisError(f"--metrics: unknown distance {m!r}; known: {', '.join(sorted(known))}")


def _run_dirs(workdir: Path) -> list[tuple[str, Path]]:
    if (workdir / "params.npz").exists():
        return [("", workdir)]
    groups = sorted(p for p in (workdir / "groups").glob("*") if (p / "params.npz").exists()) \
        if (workdir / "groups").is_dir() else []
    if not groups:
        raise AnalysisError(f"{workdir}: no params.npz (is this a finished `jaxweights train` run directory?)")
    return [(p.name, p) for p in groups]


def analyze_params(params, out: Path, *, metrics: Sequence[str] | None = None, block_size: int = 64) -> pd.DataFrame:
    """Writes stats.csv, node_strength.npz and distances/ for stacked `params` into `out`."""
    table = stats.compute_statistics(params, per=("leaf", "layer", "network"))
    try:
        ns = strength.node_strength(params)
        fluct = strength.layer_fluctuation(params)
        table = pd.concat([table, fluct], ignore_index=True)
        buf = io.BytesIO()
        np.savez(buf, **ns)
        rundir.atomic_write_bytes(out / "node_strength.npz", buf.getvalue())
    except ValueError as e:  # a model whose layers do not form a chain (e.g. attention)
        log.warning("node strength skipped: %s", e)
    rundir.write_csv(out / "stats.csv", table)
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    _check_metrics(chosen)
    distances.write(str(out), distances.compute(params, metrics=chosen, block_size=block_size))
    return table


def analyze_workdir(workdir: str | os.PathLike, *, metrics: Sequence[str] | None = None,
                    block_size: int = 64) -> Path:
    """Analyses a run directory into `<workdir>/analysis/`; returns that path."""
    workdir = Path(workdir)
    _check_metrics(metrics or ())  # before any work, so a bad name costs nothing
    runs = _run_dirs(workdir)
    tmp = Path(tempfile.mkdtemp(prefix=".analysis-", dir=workdir))
    try:
        tables, nets = [], []
        for name, rd in runs:
            out = tmp / "groups" / name if name else tmp
            params = rundir.load_params(rd / "params.npz")
            n = len(next(iter(stats.flatten(params).values())))
            log.info("%s: analysing %d networks", rd, n)
            table = analyze_params(params, out, metrics=metrics, block_size=block_size)
            if (rd / "metrics.csv").exists():
                m = pd.read_csv(rd / "metrics.csv")
                last = m[m.epoch == m.epoch.max()].reset_index(drop=True)
                if name:
                    last.insert(0, "group", name)
                nets.append(last)
            if name:
                table.insert(0, "group", name)
            tables.append(table)
        if len(runs) > 1:
            rundir.write_csv(tmp / "stats.csv", pd.concat(tables, ignore_index=True))
        if nets:
            rundir.write_csv(tmp / "networks.csv", pd.concat(nets, ignore_index=True))
        final = workdir / "analysis"
        old = workdir / ".analysis-old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
