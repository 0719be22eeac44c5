"""`claim_summary`: every claim about one zoo, as numbers (JSON-able) and the tables behind them.

The optimal-vs-suboptimal study of Zheng et al. (2024, arXiv 2408.11720) on one zoo: groups, the claim tests
(network-level, cell-level, seed dispersion; Holm 1979 and Benjamini & Hochberg 1995 adjusted), their sensitivity
to the grouping, the dispersion and correlation of every statistic, accuracy prediction from weight statistics
(Unterthiner et al. 2020, arXiv 2002.11448) and the divergence of accuracy bins (La Malfa et al. 2021).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from jaxweights.claims.divergence import bin_divergence
from jaxweights.claims.groups import GROUPING_DEFAULTS, OPTIMAL, SUBOPTIMAL, accuracy_bins, network_groups
from jaxweights.claims.multiplicity import verdict
from jaxweights.claims.prediction import hyperparameter_features, predict_accuracy, weight_features
from jaxweights.claims.rank_correlations import correlations
from jaxweights.claims.robustness import sensitivity
from jaxweights.claims.tables import (
    HEADLINE_COLUMNS,
    SEED_COLUMNS,
    claim_table,
    dispersion,
    verdict_counts,
    with_grid_tests,
)
from jaxweights.claims.undefined import quiet_undefined
from jaxweights.io import atomic
from jaxweights.weights import compute, distances, stats, strength

log = logging.getLogger("jaxweights")

# Energy distance is exact but O(D log D) per pair (minutes at N=256); ask for it with --metrics.


# Energy distance is exact but O(D log D) per pair (minutes at N=256); ask for it with --metrics.
DEFAULT_METRICS = ("wasserstein", "ks", "jensenshannon", "kde_kl", "euclidean", "cosine")


CLAIM_LEVELS = ("layer", "network")  # distances of whole layers and of the whole network test the claim


def claim_inputs(table: pd.DataFrame) -> pd.DataFrame:
    """Per-layer and whole-network rows of a statistics table, without histogram bins.

    Args:
      table: tidy statistics (network, layer, statistic, value).

    Returns:
      Its rows whose statistic does not start with ``hist_`` and whose layer is not a single leaf
      (a path ending in /kernel, /bias, /scale or /embedding).
    """
    t = table[~table.statistic.astype(str).str.startswith("hist_")]
    leaves = t.layer.astype(str).str.endswith(("/kernel", "/bias", "/scale", "/embedding"))
    return t[~leaves]


def records(df: pd.DataFrame) -> list[dict]:
    """A DataFrame as JSON-able records: one dict per row, numpy scalars as Python values.

    Args:
      df: the table.

    Returns:
      ``[{column: value}]``, one dict per row.
    """
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]


class ClaimContext(NamedTuple):
    """What `claim_summary` computed that the figures draw: the zoo, who was analysed, its groups and distances."""

    params: Any  # stacked parameters of every network
    kept_params: dict  # {path: (n, ...)} of the analysed networks
    acc: np.ndarray  # (N,) test accuracy
    keep: np.ndarray  # (N,) analysed
    labels: np.ndarray  # (N,) OPTIMAL ... EXCLUDED
    bins: np.ndarray  # (N,) accuracy bin (-1: left out)
    edges: np.ndarray  # accuracy bin edges
    dists: dict  # {metric: {layer: (n, n)}} over the analysed networks
    primary: str  # the headline metric
    statistics: pd.DataFrame  # per-layer and whole-network statistics (`claim_inputs`)
    bin_divergence: dict  # {quantity: (B, B)}
    groups: pd.DataFrame  # `network_groups`


def claim_summary(
    params,
    table: pd.DataFrame,
    last: pd.DataFrame,
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    grouping_note: str | None = None,
    bins=4,
    n_permutations: int = 2000,
    n_boot: int = 1000,
    alpha: float = 0.05,
    folds: int = 5,
    seed: int = 0,
    name: str = "",
    **grouping,
) -> tuple[dict, ClaimContext]:
    """Tests the optimal-vs-suboptimal claims (Zheng et al. 2024, arXiv 2408.11720) on one zoo.

    Writes the tables (groups.csv, claim_tests.csv, seed_dispersion_cells.csv, sensitivity.csv,
    dispersion.csv, correlations.csv, prediction_scores.csv, predictions.csv, bin_divergence.npz) into `out`.
    p-values of many tests are Holm (1979) and Benjamini & Hochberg (1995) adjusted; accuracy is predicted
    from weight statistics as in Unterthiner et al. (2020, arXiv 2002.11448).

    Args:
      params: stacked parameters of the zoo (networks axis first).
      table: its statistics table (as `analyze_params` returns).
      metrics: distance metrics for the claim (default `DEFAULT_METRICS`), computed per layer and for
        the whole network over the analysed networks only.
      block_size: networks per block of the distance computations.
      grouping_note: a note on the grouping, shown in the report (``summary["grouping"]["note"]``).
      last: the last epoch's metrics, one row per network (test_acc, diverged, hyperparameters).
      out: the zoo's analysis folder (the tables go there).
      bins: accuracy bins (`accuracy_bins`).
      n_permutations, n_boot, alpha, folds, seed: test and prediction options.
      name: the zoo's name in the summary (``summary["zoo"]``).
      **grouping: which networks are analysed and how they are split, the keyword options of
        `network_groups` (quantile, threshold, min_accuracy, include_exploded, include_not_learned,
        num_classes, chance_margin; defaults `GROUPING_DEFAULTS`).

    Returns:
      (summary, context): the numbers (JSON-able) and the arrays the figures draw (`ClaimContext`).
    """
    last = last.sort_values("network").reset_index(drop=True)
    acc = last.test_acc.to_numpy(np.float64)
    unknown = set(grouping) - set(GROUPING_DEFAULTS)
    if unknown:
        raise TypeError(f"claim_summary: unknown option(s) {sorted(unknown)}")
    choice = {**GROUPING_DEFAULTS, **grouping, "seed": seed}
    quantile, threshold, num_classes = choice["quantile"], choice["threshold"], choice["num_classes"]
    gt = network_groups(last, params, **choice)
    labels = gt.label.to_numpy()
    state = gt.state.to_numpy()
    excluded = ~gt.analysed.to_numpy(bool)
    bins_n, edges = accuracy_bins(acc, bins, exclude=excluded)
    keep = ~excluded
    cells = gt.cell.to_numpy()
    count = lambda st: int((state == st).sum())
    summary: dict = {
        "zoo": name,
        "n_networks": int(len(acc)),
        "n_diverged": count("diverged"),
        "n_exploded": count("exploded"),
        "n_not_learned": count("not_learned"),
        "n_below_min_accuracy": count("below_min_accuracy"),
        "n_kept": int(keep.sum()),
        "alpha": alpha,
    }
    summary["grouping"] = {
        "rule": f"threshold {threshold}" if threshold is not None else f"top/bottom {quantile:.0%} by rank",
        "quantile": None if threshold is not None else quantile,
        "threshold": threshold,
        "min_accuracy": choice["min_accuracy"],
        "include_exploded": choice["include_exploded"],
        "include_not_learned": choice["include_not_learned"],
        "chance_accuracy": 1 / num_classes,
        "chance_margin": choice["chance_margin"],
        "note": grouping_note,
        "n_optimal": int((labels == OPTIMAL).sum()),
        "n_suboptimal": int((labels == SUBOPTIMAL).sum()),
        "optimal_acc": [acc[labels == OPTIMAL].min(), acc[labels == OPTIMAL].max()],
        "suboptimal_acc": [acc[labels == SUBOPTIMAL].min(), acc[labels == SUBOPTIMAL].max()],
        "n_cells": int(len(np.unique(cells[keep]))),
        "bin_edges": list(edges),
        "bin_counts": np.bincount(bins_n[bins_n >= 0], minlength=len(edges) - 1).tolist(),
    }
    listed = gt[(state != "ok") | excluded]
    summary["excluded"] = records(listed.drop(columns=["label", "cell"]))
    atomic.write_csv(out / "groups.csv", gt.drop(columns="label").assign(accuracy_bin=bins_n))

    # The central claim: within / across distances, permutation tests (networks exchangeable, and
    # whole hyperparameter cells exchangeable), bootstrap intervals, adjusted p-values.
    kp = {k: np.asarray(v)[keep] for k, v in compute.flatten(params).items()}
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    with quiet_undefined() as f:
        dists = distances.compute(kp, metrics=chosen, per=CLAIM_LEVELS, block_size=block_size)
    if f.dropped:
        log.warning("claim distances: %d statistic columns dropped (undefined in an analysed network)", f.dropped)
    ct = claim_table(dists, labels[keep], n_permutations=n_permutations, n_boot=n_boot, alpha=alpha, seed=seed)
    ct, grid_notes = with_grid_tests(
        ct,
        dists,
        acc[keep],
        cells[keep],
        quantile=quantile if threshold is None else 0.25,
        n_permutations=n_permutations,
        alpha=alpha,
        seed=seed,
        out=out,
    )
    atomic.write_csv(out / "claim_tests.csv", ct)
    primary = "wasserstein" if "wasserstein" in dists else next(iter(dists))
    whole = ct[ct.layer == stats.ALL]
    top = whole[whole.metric == primary]
    top = top.iloc[0] if len(top) else ct[ct.metric == primary].iloc[0]
    summary["claim"] = {
        "primary_metric": primary,
        "verdict": top.verdict,
        "within_optimal": top.within_optimal,
        "within_suboptimal": top.within_suboptimal,
        "across": top.across,
        "ratio": top.ratio,
        "p_greater": top.p_greater,
        "p_less": top.p_less,
        "exact": bool(top.exact),
        "ci": [top.ci_low, top.ci_high],
        **{c: top[c] for c in HEADLINE_COLUMNS if c in top},
        "n_tests": int(len(ct)),
        **verdict_counts(ct, alpha),
        "notes": grid_notes,
        "whole_network": records(whole),
        "per_layer": records(ct[ct.layer != stats.ALL]),
    }
    summary["seed_dispersion"] = {k: top[v] for k, v in SEED_COLUMNS.items() if v in top}
    headline_verdicts(summary, top, alpha)
    summary["sensitivity"] = sensitivity(
        params, last, keep, primary, choice=choice, n_permutations=n_permutations, alpha=alpha, block_size=block_size
    )
    atomic.write_csv(out / "sensitivity.csv", pd.DataFrame(summary["sensitivity"]))

    # Dispersion and correlation of every per-layer / whole-network statistic.
    t = claim_inputs(table)
    disp = dispersion(t, labels, n_permutations=n_permutations, seed=seed, alpha=alpha)
    atomic.write_csv(out / "dispersion.csv", disp)
    nh, nr = int((disp.verdict == "holds").sum()), int((disp.verdict == "reversed").sum())  # Holm
    larger = int((disp.ratio > 1).sum())
    summary["dispersion"] = {
        "n_statistics": int(len(disp)),
        "n_larger_suboptimal": larger,
        "n_holds": nh,
        "n_reversed": nr,
        "n_holds_raw": int((disp.p_greater < alpha).sum()),
        "n_reversed_raw": int((disp.p_less < alpha).sum()),
        "verdict": "holds"
        if nh > nr and larger > len(disp) / 2
        else "reversed"
        if nr > nh and larger < len(disp) / 2
        else "not significant",
        "whole_network": records(disp[disp.layer == stats.ALL]),
    }
    corr = correlations(t, acc, exclude=excluded)
    atomic.write_csv(out / "correlations.csv", corr)
    strongest = corr.dropna().reindex(corr.dropna().rho.abs().sort_values(ascending=False).index).head(15)
    summary["correlation"] = {
        "n_tests": int(corr.rho.notna().sum()),
        "n_significant": int((corr.p_holm < alpha).sum()),
        "n_significant_bh": int((corr.p_bh < alpha).sum()),
        "n_significant_raw": int((corr.p_value < alpha).sum()),
        "strongest": records(strongest),
    }

    # Predicting accuracy from weights (Unterthiner et al. 2020) vs hyperparameters alone.
    wn, wx = weight_features(params)
    hn, hx = hyperparameter_features(last)
    feats = {"weights": (wn, wx[keep]), "hyperparameters": (hn, hx[keep])}
    pred: dict = {"folds": min(folds, int(keep.sum()))}
    if keep.sum() >= max(folds, 6):
        scores, preds = predict_accuracy(feats, acc[keep], folds=folds, seed=seed, groups_N=cells[keep])
        preds.insert(0, "network", np.flatnonzero(keep))
        pred["folds"], pred["grouped_by"] = int(preds.fold.max()) + 1, "hyperparameter cell"
        atomic.write_csv(out / "prediction_scores.csv", scores)
        atomic.write_csv(out / "predictions.csv", preds.drop(columns="row"))
        pred["scores"] = records(scores)
        w = scores[scores.features == "weights"]
        h = scores[scores.features == "hyperparameters"]
        bw = w.loc[w.r2.idxmax()]
        pred["best_weights_r2"], pred["best_weights_tau"] = bw.r2, bw.kendall_tau
        pred["best_hyperparameters_r2"] = h.r2.max() if len(h) else None
        better = not len(h) or bw.r2 > h.r2.max()
        pred["verdict"] = (
            f"weight statistics {'predict' if bw.r2 > 0 else 'do not predict'} the accuracy of "
            f"held-out cells (best R² {bw.r2:.3f}, Kendall τ {bw.kendall_tau:.3f}, {bw.model})"
            + (
                f", {'better' if better else 'no better'} than hyperparameters alone (R² {h.r2.max():.3f})"
                if len(h)
                else ""
            )
        )
    else:
        pred.update(
            scores=[],
            verdict="not computed",
            note=f"{int(keep.sum())} analysed networks: too few for {folds}-fold prediction",
        )
    summary["prediction"] = pred

    # Accuracy bins: node strength and layer fluctuation distributions (La Malfa et al. 2021).
    mats, brows = {}, []
    try:
        ns = strength.node_strength(params)
        fl = claim_inputs(table)
        fl = fl[fl.statistic == "layer_fluctuation"].pivot(index="network", columns="layer", values="value")
        for layer, s in ns.items():
            mats[f"strength · {layer}"] = bin_divergence(s, bins_n, seed=seed)
            if layer in fl:
                mats[f"fluctuation · {layer}"] = bin_divergence(
                    fl[layer].reindex(range(len(acc))).to_numpy(), bins_n, seed=seed
                )
        for q, m in mats.items():
            adj = [m[i, i + 1] for i in range(len(m) - 1)]
            brows.append(
                {
                    "quantity": q,
                    "adjacent_mean": float(np.nanmean(adj)) if np.isfinite(adj).any() else None,
                    "lowest_vs_highest": m[0, -1] if len(m) > 1 else None,
                }
            )
        bd = {"table": brows}
        np.savez(out / "bin_divergence.npz", **{k.replace(" · ", "__"): v for k, v in mats.items()})
    except ValueError as e:  # no chain of dense/conv layers (e.g. ViT)
        bd = {"table": [], "note": f"node strength not defined for this model: {e}"}
    summary["bin_divergence"] = bd

    context = ClaimContext(
        params=params,
        kept_params=kp,
        acc=acc,
        keep=keep,
        labels=labels,
        bins=bins_n,
        edges=edges,
        dists=dists,
        primary=primary,
        statistics=t,
        bin_divergence=mats,
        groups=gt,
    )
    return summary, context


def headline_verdicts(summary: dict, top: pd.Series, alpha: float) -> None:
    """Judges the headline (whole network, primary metric) on its own two-sided p, in place.

    The headline is one pre-specified test, like each row of the sensitivity table; the table's
    Holm-adjusted verdicts stay beside it (`verdict_holm`, `verdict_cell_holm`) and decide the counts
    over its many (metric, layer) tests. Sets ``summary["claim"]["verdict"]`` from ``top.p_value``,
    ``summary["claim"]["verdict_cell"]`` from ``top.p_cell`` (when present) and
    ``summary["seed_dispersion"]["verdict"]`` from its p (the claim holds when rho < 0).

    Args:
      summary: the zoo summary, with its "claim" and "seed_dispersion" dicts; modified in place.
      top: the claim table's row of the headline test.
      alpha: significance level.
    """
    c, sd = summary["claim"], summary["seed_dispersion"]
    sign = lambda x: float(np.sign(x)) if np.isfinite(x) else 0.0
    c["verdict_holm"] = c["verdict"]
    c["verdict"] = verdict(float(top.p_value), sign(top.p_less - top.p_greater), alpha)
    if "p_cell" in top and pd.notna(top.p_cell):
        c["verdict_cell_holm"] = c.get("verdict_cell")
        c["verdict_cell"] = verdict(
            float(top.p_cell), sign(top.within_suboptimal_cells - top.within_optimal_cells), alpha
        )
    if sd.get("p_value") is not None and pd.notna(sd["p_value"]):
        sd["verdict_holm"] = sd.get("verdict")
        sd["verdict"] = verdict(float(sd["p_value"]), -sign(sd["rho"]), alpha)  # holds: rho < 0
