"""The figures of one zoo's claims: drawn from what `claims.claim_summary` computed (`claims.ClaimContext`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jaxweights.claims import ClaimContext, wide_statistics
from jaxweights.report.figures import (
    accuracy_over_epochs,
    bin_divergence_heatmaps,
    distance_heatmap,
    kde_by_bin,
    pca_of_statistics,
    statistics_vs_accuracy,
    weight_histograms,
    weight_matrices,
)
from jaxweights.weights import stats


def zoo_figures(out: str | Path, c: ClaimContext, *, epochs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Draws every figure of one zoo's claims into `out` (PNG + the CSV behind each).

    Args:
      out: the figures folder.
      c: what `claims.claim_summary` computed.
      epochs: every epoch's metrics (metrics.csv), for the accuracy-over-epochs figure (None: not drawn).

    Returns:
      ``{figure name: PNG path}``.
    """
    kp, acc, keep, labels, bins_n, edges = c.kept_params, c.acc, c.keep, c.labels, c.bins, c.edges
    dists, primary, t, mats, gt = c.dists, c.primary, c.statistics, c.bin_divergence, c.groups
    fd = Path(out)
    figs: dict[str, Path] = {}
    a_plot = np.where(keep, acc, np.nan)
    figs["weight_histograms"] = weight_histograms(fd, kp, acc[keep], networks=np.flatnonzero(keep))
    figs["kde_by_bin"] = kde_by_bin(fd, kp, bins_n[keep], edges)
    d_all = dists[primary].get(stats.ALL, next(iter(dists[primary].values())))
    figs["distance_heatmap"] = distance_heatmap(
        fd,
        d_all,
        acc[keep],
        networks=np.flatnonzero(keep),
        metric=primary,
        title=f"{primary} distance, whole network, best first",
    )
    figs["statistics_vs_accuracy"] = statistics_vs_accuracy(fd, t, a_plot, labels)
    wide = wide_statistics(t[t.statistic.isin(stats.SUMMARY) | t.statistic.str.startswith("q")])
    wide = wide.reindex(range(len(acc)))
    figs["pca"] = pca_of_statistics(
        fd, [f"{a}:{b}" for a, b in wide.columns], wide.to_numpy(np.float64)[keep], acc[keep]
    )
    if mats:
        figs["bin_divergence"] = bin_divergence_heatmaps(fd, mats, edges)
    figs["weight_matrices"] = weight_matrices(fd, c.params, a_plot)
    if epochs is not None:
        figs["accuracy_over_epochs"] = accuracy_over_epochs(fd, epochs, states=gt.set_index("network").group)
    return figs
