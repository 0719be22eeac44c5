"""`prune_run(run_dir)`: remove the MLP hidden layers flagged by modularity, retrain, compare accuracy.

Lu et al. (ECCV 2022) find that the modularity of class communities in k-NN graphs of a layer's
representations rises with depth, and read a plateau or a drop as a sign that a layer can be
removed. This module checks that claim instead of assuming it: it takes the zoo-level candidates
(`jaxweights.dynamics.pruning_candidates` on the mean last-epoch modularity curve of the
optimal networks, as `jaxweights analyze` chose them, or as the caller passes them), trains the same zoo (same config, seeds and
hyperparameter grid) without those hidden layers into `<run_dir>/pruned/`, and reports each
network's final test accuracy before and after.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxweights import dynamics
from jaxweights.io import atomic, rundir
from jaxweights.io.lock import workdir_lock
from jaxweights.models import paths
from jaxweights.pipelines import train as train_pipeline
from jaxweights.pipelines import train_chunk

log = logging.getLogger("jaxweights")


class PruneError(dynamics.DynamicsError):
    """A run that cannot be pruned as asked (not an MLP, unknown layer, groups)."""


def candidate_layers(
    run_dir: str | Path,
    *,
    probe_size: int = 500,
    k: int = 3,
    tol: float = 0.01,
    data_dir: str | None = None,
    optimal_N: np.ndarray | None = None,
    exclude_N: np.ndarray | None = None,
) -> tuple[list[str], dict]:
    """Zoo-level pruning candidates of a finished run, from its final parameters (Lu et al. 2022, ECCV).

    Uses `<run_dir>/analysis/pruning.json` when `analyze` wrote one (and no masks are passed),
    else computes the modularity curves of the final parameters on a seeded class-stratified
    probe set of `probe_size` test images (`dynamics.probe_data`) and averages those of the
    networks in `optimal_N` (default: every network) not in `exclude_N`.

    Args:
      run_dir: a finished `jaxweights train` run directory.
      probe_size: probe images (`dynamics.probe_data`).
      k: neighbours of the k-NN graph.
      tol: modularity gain below which a hidden layer is a candidate (`dynamics.pruning_candidates`).
      data_dir: data folder (default: the run's config).
      optimal_N, exclude_N: boolean `(N,)` masks (`dynamics.network_masks`).

    Returns:
      `(layers, info)`: candidate layer names and the curve they were read from (`info["networks"]`:
      the networks averaged).
    """
    run_dir = Path(run_dir)
    saved = run_dir / "analysis" / "pruning.json"
    if saved.exists() and optimal_N is None and exclude_N is None:
        info = json.loads(saved.read_text())
        return list(info["layers"]), info
    setup, xp, yp, _, _ = dynamics.probe_data(run_dir, probe_size, data_dir)
    params = paths.flatten(rundir.load_params(run_dir / "params.npz"))
    names, q = dynamics.modularity_curves(setup.model, params, xp, yp, setup.num_classes, k)
    good, _ = dynamics.network_masks(q.shape[0], optimal_N, exclude_N)
    if not good.any():
        raise PruneError(f"{run_dir}: no network left to read the modularity curve from (optimal_N/exclude_N)")
    curve = np.nanmean(q[good], 0)
    layers = dynamics.pruning_candidates(curve, names, tol)
    return layers, {
        "layers": layers,
        "tol": tol,
        "depth_names": names,
        "curve": [float(v) for v in curve],
        "networks": np.flatnonzero(good).tolist(),
        "optimal_rule": "given by the caller" if optimal_N is not None else "every network",
    }


def pruned_hidden(hidden: Sequence[int], layers: Sequence[str]) -> tuple[int, ...]:
    """The MLP's `hidden` widths without the hidden layers named `Dense_i` in `layers`.

    Args:
      hidden: the MLP's hidden widths.
      layers: hidden layers to remove.

    Returns:
      The remaining widths.

    Raises:
      PruneError: a name that is not a hidden layer of this MLP (the output layer cannot go).
    """
    hidden = tuple(int(h) for h in hidden)
    drop = set()
    for name in layers:
        prefix, _, idx = name.partition("_")
        if prefix != "Dense" or not idx.isdigit() or int(idx) >= len(hidden):
            raise PruneError(
                f"--layers: {name!r} is not a hidden layer of this MLP "
                f"(hidden layers: {', '.join(f'Dense_{i}' for i in range(len(hidden)))})"
            )
        drop.add(int(idx))
    return tuple(h for i, h in enumerate(hidden) if i not in drop)


def prune_run(
    run_dir: str | Path,
    *,
    layers: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    data_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    probe_size: int = 500,
    tol: float = 0.01,
    optimal_N: np.ndarray | None = None,
    exclude_N: np.ndarray | None = None,
) -> pd.DataFrame:
    """Removes flagged hidden layers of an MLP zoo, retrains it, and reports the accuracy change.

    Args:
      run_dir: a finished `jaxweights train` run directory of an MLP (one group).
      layers: hidden layers to remove (default: the modularity candidates, `candidate_layers`).
      out_dir: run directory of the pruned zoo (default `<run_dir>/pruned`).
      data_dir: data folder (default: the run's config).
      overwrite: passed to `run.train_and_evaluate` for the pruned run.
      progress: show a progress bar while retraining.
      probe_size, tol, optimal_N, exclude_N: for `candidate_layers`; `prune.json`'s
        `median_delta_good` is over the networks the curve was read from (`optimal_N` when given,
        else those of `analysis/pruning.json`, else every network not diverged).

    Returns:
      One row per network: `network, seed, <hyperparameters>, test_acc_original, test_acc_pruned,
      delta, diverged_original, diverged_pruned`; also written to `<out_dir>/prune.csv`, with a
      summary in `<out_dir>/prune.json`. Empty (and nothing trained) when no layer is flagged.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "metrics.csv").exists():
        raise PruneError(f"{run_dir}: not a finished `jaxweights train` run directory (no config.json/metrics.csv)")
    with workdir_lock(run_dir, "prune"):  # the pruned zoo's own run directory is locked by its training
        return _prune_locked(
            run_dir, layers, out_dir, data_dir, overwrite, progress, probe_size, tol, optimal_N, exclude_N
        )


def _prune_locked(
    run_dir: Path, layers, out_dir, data_dir, overwrite, progress, probe_size, tol, optimal_N, exclude_N
) -> pd.DataFrame:
    """`prune_run` once the run directory is locked."""
    config = dynamics.run_config(run_dir)
    if config.get("groups"):
        raise PruneError(f"{run_dir}: a run with static groups; prune one group: {run_dir}/groups/NN")
    if config.model.name != "mlp":
        raise PruneError(f"model.name: pruning removes MLP hidden layers; this run trains {config.model.name!r}")
    info = {}
    if layers is None:
        layers, info = candidate_layers(
            run_dir, probe_size=probe_size, tol=tol, data_dir=data_dir, optimal_N=optimal_N, exclude_N=exclude_N
        )
        log.info(
            "modularity curve %s over %s; candidates %s",
            np.round(info["curve"], 3).tolist(),
            info["depth_names"],
            layers,
        )
    hidden = tuple(config.model.hidden)
    new_hidden = pruned_hidden(hidden, layers)
    if not layers:
        log.info("%s: no layer flagged for pruning", run_dir)
        return pd.DataFrame()
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "pruned"
    with config.unlocked():
        config.model.hidden = new_hidden
        if data_dir:
            config.data_dir = str(data_dir)
    log.info("pruning %s: hidden %s -> %s", ", ".join(layers), hidden, new_hidden)
    pruned = train_pipeline.train_and_evaluate(config, out_dir, overwrite=overwrite, progress=progress)
    before = pd.read_csv(run_dir / "metrics.csv")
    before = rundir.last_epoch(before).reset_index(drop=True)
    after = rundir.last_epoch(pruned).reset_index(drop=True)
    hp_cols = [c for c in before.columns if c not in train_chunk.METRIC_COLUMNS and c not in ("epoch",)]
    report = before[hp_cols].copy()
    report["test_acc_original"] = before.test_acc
    report["test_acc_pruned"] = after.test_acc.to_numpy()
    report["delta"] = report.test_acc_pruned - report.test_acc_original
    report["diverged_original"] = before.diverged.astype(bool)
    report["diverged_pruned"] = after.diverged.astype(bool).to_numpy()
    atomic.write_csv(out_dir / "prune.csv", report)
    saved = run_dir / "analysis" / "pruning.json"
    if "networks" not in info and saved.exists():
        info = json.loads(saved.read_text())
    if optimal_N is not None:
        good = dynamics.network_masks(len(report), optimal_N, exclude_N)[0]
        rule = "given by the caller"
    elif isinstance(info.get("networks"), list):  # older pruning.json files name a rule instead
        good = np.isin(np.arange(len(report)), info["networks"])
        rule = info.get("optimal_rule", "as analyze chose them")
    else:
        good = ~report.diverged_original.to_numpy()
        rule = "every network not diverged (none given)"
    atomic.write_json(
        out_dir / "prune.json",
        {
            "removed": list(layers),
            "hidden_before": list(hidden),
            "hidden_after": list(new_hidden),
            "best_before": float(report.test_acc_original[~report.diverged_original].max()),
            "best_after": float(report.test_acc_pruned[~report.diverged_pruned].max()),
            "median_delta_good": float(report.delta[good].median()),
            "good_networks": np.flatnonzero(good).tolist(),
            "good_rule": rule,
            "median_delta_all": float(report.delta.median()),
        },
    )
    return report
