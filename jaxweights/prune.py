"""`prune_run(run_dir)`: remove the MLP hidden layers flagged by modularity, retrain, compare accuracy.

Lu et al. (ECCV 2022) find that the modularity of class communities in k-NN graphs of a layer's
representations rises with depth, and read a plateau or a drop as a sign that a layer can be
removed. This module checks that claim instead of assuming it: it takes the zoo-level candidates
(`jaxweights.dynamics.pruning_candidates` on the mean last-epoch modularity curve of the
networks at or above the median test accuracy), trains the same zoo (same config, seeds and
hyperparameter grid) without those hidden layers into `<run_dir>/pruned/`, and reports each
network's final test accuracy before and after.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from jaxweights import dynamics, rundir

log = logging.getLogger("jaxweights")


class PruneError(dynamics.DynamicsError):
    """A run that cannot be pruned as asked (not an MLP, unknown layer, groups)."""


def candidate_layers(run_dir: str | Path, *, probe_size: int = 500, k: int = 3, tol: float = 0.01,
                     data_dir: str | None = None) -> tuple[list[str], dict]:
    """Zoo-level pruning candidates of a finished run, from its final parameters.

    Uses `<run_dir>/analysis/pruning.json` when `analyze` wrote one, else computes the
    modularity curves of the final parameters on the first `probe_size` test images.

    Returns:
      `(layers, info)`: candidate layer names and the curve they were read from.
    """
    run_dir = Path(run_dir)
    saved = run_dir / "analysis" / "pruning.json"
    if saved.exists():
        info = json.loads(saved.read_text())
        return list(info["layers"]), info
    setup, xp, yp, _, _ = dynamics.probe_data(run_dir, probe_size, data_dir)
    params = rundir.flatten_params(rundir.load_params(run_dir / "params.npz"))
    names, q = dynamics.modularity_curves(setup.model, params, xp, yp, setup.num_classes, k)
    good = dynamics.good_networks(run_dir)
    curve = np.nanmean(q[good] if good.any() else q, 0)
    layers = dynamics.pruning_candidates(curve, names, tol)
    return layers, {"layers": layers, "tol": tol, "depth_names": names, "curve": [float(v) for v in curve]}


def pruned_hidden(hidden: Sequence[int], layers: Sequence[str]) -> tuple[int, ...]:
    """The MLP's `hidden` widths without the hidden layers named `Dense_i` in `layers`.

    Raises:
      PruneError: a name that is not a hidden layer of this MLP (the output layer cannot go).
    """
    hidden = tuple(int(h) for h in hidden)
    drop = set()
    for name in layers:
        prefix, _, idx = name.partition("_")
        if prefix != "Dense" or not idx.isdigit() or int(idx) >= len(hidden):
            raise PruneError(f"--layers: {name!r} is not a hidden layer of this MLP "
                             f"(hidden layers: {', '.join(f'Dense_{i}' for i in range(len(hidden)))})")
        drop.add(int(idx))
    return tuple(h for i, h in enumerate(hidden) if i not in drop)


def prune_run(run_dir: str | Path, *, layers: Sequence[str] | None = None, out_dir: str | Path | None = None,
              data_dir: str | None = None, overwrite: bool = False, progress: bool = False,
              probe_size: int = 500, tol: float = 0.01) -> pd.DataFrame:
    """Removes flagged hidden layers of an MLP zoo, retrains it, and reports the accuracy change.

    Args:
      run_dir: a finished `jaxweights train` run directory of an MLP (one group).
      layers: hidden layers to remove (default: the modularity candidates, `candidate_layers`).
      out_dir: run directory of the pruned zoo (default `<run_dir>/pruned`).
      data_dir: data folder (default: the run's config).
      overwrite: passed to `run.train_and_evaluate` for the pruned run.
      progress: show a progress bar while retraining.
      probe_size, tol: for `candidate_layers`.

    Returns:
      One row per network: `network, seed, <hyperparameters>, test_acc_original, test_acc_pruned,
      delta, diverged_original, diverged_pruned`; also written to `<out_dir>/prune.csv`, with a
      summary in `<out_dir>/prune.json`. Empty (and nothing trained) when no layer is flagged.
    """
    from jaxweights import run as run_lib
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "metrics.csv").exists():
        raise PruneError(f"{run_dir}: not a finished `jaxweights train` run directory (no config.json/metrics.csv)")
    config = dynamics.run_config(run_dir)
    if config.get("groups"):
        raise PruneError(f"{run_dir}: a run with static groups; prune one group: {run_dir}/groups/NN")
    if config.model.name != "mlp":
        raise PruneError(f"model.name: pruning removes MLP hidden layers; this run trains {config.model.name!r}")
    if layers is None:
        layers, info = candidate_layers(run_dir, probe_size=probe_size, tol=tol, data_dir=data_dir)
        log.info("modularity curve %s over %s; candidates %s", np.round(info["curve"], 3).tolist(),
                 info["depth_names"], layers)
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
    pruned = run_lib.train_and_evaluate(config, out_dir, overwrite=overwrite, progress=progress)
    before = pd.read_csv(run_dir / "metrics.csv")
    before = before[before.epoch == before.epoch.max()].reset_index(drop=True)
    after = pruned[pruned.epoch == pruned.epoch.max()].reset_index(drop=True)
    hp_cols = [c for c in before.columns if c not in run_lib.METRIC_COLUMNS and c not in ("epoch",)]
    report = before[hp_cols].copy()
    report["test_acc_original"] = before.test_acc
    report["test_acc_pruned"] = after.test_acc.to_numpy()
    report["delta"] = report.test_acc_pruned - report.test_acc_original
    report["diverged_original"] = before.diverged.astype(bool)
    report["diverged_pruned"] = after.diverged.astype(bool).to_numpy()
    rundir.write_csv(out_dir / "prune.csv", report)
    good = dynamics.good_networks(run_dir)
    rundir.write_json(out_dir / "prune.json", {
        "removed": list(layers), "hidden_before": list(hidden), "hidden_after": list(new_hidden),
        "best_before": float(report.test_acc_original[~report.diverged_original].max()),
        "best_after": float(report.test_acc_pruned[~report.diverged_pruned].max()),
        "median_delta_good": float(report.delta[good].median()),
        "median_delta_all": float(report.delta.median())})
    return report
