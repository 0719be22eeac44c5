"""The answers the report gives about a zoo's dynamics (`dynamics.json`), over its optimal networks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from jaxweights.dynamics.common import network_masks


def _spearman(x, y) -> float:
    """Spearman's ρ (`scipy.stats.spearmanr`) over the pairs where both values are finite; NaN if fewer
    than 3 such pairs or either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def summarize(
    rwc: pd.DataFrame,
    mod: pd.DataFrame,
    probes: pd.DataFrame,
    cka: Mapping[str, np.ndarray],
    optimal_N: np.ndarray,
    candidates: Sequence[str],
    *,
    exclude_N: np.ndarray | None = None,
    optimal_rule: str = "given by the caller",
) -> dict:
    """The answers the report gives about a zoo's dynamics (`dynamics.json`), over its optimal networks.

    Args:
      rwc, mod, probes, cka: the tables of `write_dynamics`.
      optimal_N: boolean `(N,)` optimal networks, from the caller (`jaxweights.groups`); the
        dynamics have no rule of their own.
      candidates: the zoo-level pruning candidates.
      exclude_N: boolean `(N,)` networks left out of the study (diverged, exploded, not learned, ...) never summarised, even if marked optimal.
      optimal_rule: words for the rule behind `optimal_N`.

    Returns:
      `{"n_networks", "n_optimal", "n_excluded", "excluded", "optimal_rule", "rwc", "modularity",
      "cka", "probes"}`: per-layer tables (lists of records, depth order) and headline numbers:
      Spearman ρ of depth vs median RWC of the optimal networks at the first and last compared epoch
      (`later_layers_change_more` when both are positive), and of depth vs their mean final
      modularity (`modularity_rises_with_depth`). With no optimal network left every number is NaN.
    """
    good, exclude_N = network_masks(len(np.asarray(optimal_N)), optimal_N, exclude_N)
    g = set(np.flatnonzero(good).tolist())
    epochs = [int(e) for e in cka["epochs"]]
    layers = [str(l) for l in cka["layers"]]
    keys = ["layer", "depth", "epoch"]
    every = rwc.groupby(keys).rwc_l1_ratio.median().index  # all layers and epochs, even with no optimal network
    per = rwc[rwc.network.isin(g)].groupby(keys).rwc_l1_ratio.median().reindex(every).unstack("epoch")
    per = per.reset_index().sort_values("depth")
    e_first, e_last = per.columns[2], per.columns[-1]
    rwc_rows = [
        {
            "layer": row.layer,
            "depth": int(row.depth),
            "first_epoch": float(row[e_first]),
            "last_epoch": float(row[e_last]),
        }
        for _, row in per.iterrows()
    ]
    rho_first, rho_last = _spearman(per.depth, per[e_first]), _spearman(per.depth, per[e_last])
    final = mod[mod.epoch == epochs[-1]]
    curve = (
        final[final.network.isin(g)]
        .groupby(["depth", "layer"])
        .modularity.mean()
        .reindex(final.groupby(["depth", "layer"]).modularity.mean().index)
        .reset_index()
        .sort_values("depth")
    )
    rho_mod = _spearman(curve.depth, curve.modularity)
    idx = np.flatnonzero(good)
    nanmean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # no empty-slice warning
    cka_rows = []
    for li, l in enumerate(layers):
        m = cka["linear_networks"][li][np.ix_(idx, idx)]
        cka_rows.append(
            {
                "layer": l,
                "depth": li,
                "across_networks": nanmean(m[~np.eye(len(idx), dtype=bool)]),
                "first_vs_last_epoch": nanmean(cka["linear_epochs"][idx, li, 0, -1]),
            }
        )
    pr = probes[(probes.epoch == epochs[-1]) & probes.network.isin(g)]
    probe_rows = [
        {
            "layer": l,
            "depth": int(d),
            "probe_acc": float(v.probe_acc.mean()),
            "region_agreement_prev": float(v.region_agreement_prev.mean()),
        }
        for (d, l), v in pr.groupby(["depth", "layer"])
    ]
    return {
        "n_networks": int(len(good)),
        "n_optimal": int(good.sum()),
        "n_excluded": int(exclude_N.sum()),
        "excluded": np.flatnonzero(exclude_N).tolist(),
        "optimal_rule": optimal_rule,
        "epochs": epochs,
        "rwc": {
            "definition": "rwc_l1_ratio = ||w_t - w_{t-1}||_1 / ||w_{t-1}||_1, median of the optimal networks",
            "first_epoch": int(e_first),
            "last_epoch": int(e_last),
            "per_layer": rwc_rows,
            "rho_depth_first": rho_first,
            "rho_depth_last": rho_last,
            "later_layers_change_more": bool(rho_first > 0 and rho_last > 0),
        },
        "modularity": {
            "per_layer": [
                {"layer": row.layer, "depth": int(row.depth), "modularity": float(row.modularity)}
                for row in curve.itertuples()
            ],
            "rho_depth": rho_mod,
            "modularity_rises_with_depth": bool(rho_mod > 0),
            "pruning_candidates": list(candidates),
        },
        "cka": {"per_layer": cka_rows},
        "probes": {"per_layer": probe_rows},
    }
