"""Figures of networks read from parameter files (`jaxweights analyze-params`): weight histograms, distance heatmaps.

Drawn with `jaxweights.report.style` on `matplotlib.figure.Figure` objects (no pyplot, no global backend),
so importing or calling this never changes another program's matplotlib state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.weights import binning, stats

LEGEND_MAX = 10  # networks named in a legend; more are coloured by their row on a colour bar


def write_figures(
    params: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    dists: Mapping[str, np.ndarray] | None = None,
    metric: str = "",
    bins: int = 64,
) -> list[Path]:
    """Writes `figures/histograms.png` (each network's weight distribution, first 12 leaves) and,
    given `{group: dist_NxN}`, `figures/distances.png` (heatmaps of up to 8 groups, leaves first).

    Networks are numbered by their row in ``networks.csv``: named in a legend up to `LEGEND_MAX`
    networks, coloured by that number on a colour bar beyond.

    Args:
      params: stacked parameters, networks axis first.
      out: output directory; the figures go to `out/figures/`.
      dists: optional `{group: dist_NxN}` of one metric.
      metric: the name of that metric, for titles and the colour bar.
      bins: histogram bins (edges shared by all networks of a leaf).

    Returns:
      The written paths.
    """
    import matplotlib.colors  # heavy: imported when figures are drawn

    from jaxweights.report import style

    out = Path(out) / "figures"
    written = []
    hists = dict(list(binning.histograms(params, bins=bins).items())[:12])
    n = len(next(iter(hists.values()))[1])
    fig, axes = style.grid(len(hists), cols=4, size=(3.2, 2.6))
    norm = matplotlib.colors.Normalize(0, max(n - 1, 1))
    for ax, (leaf, (edges, h_NxB)) in zip(axes, hists.items()):
        centers = (edges[:-1] + edges[1:]) / 2
        for i, h in enumerate(h_NxB):
            colour = f"C{i}" if n <= LEGEND_MAX else style.cmap()(norm(i))
            ax.plot(centers, h, lw=0.8, alpha=0.7, color=colour, label=f"network {i}")
        ax.set_title(leaf, fontsize=8)
        ax.set_xlabel("weight", fontsize=8)
        ax.set_ylabel("fraction of weights", fontsize=8)
        ax.tick_params(labelsize=7)
    if n <= LEGEND_MAX:
        axes[0].legend(fontsize=6)
    else:
        style.colorbar(fig, axes[: len(hists)], norm, "network (row of networks.csv)")
    fig.suptitle(f"Weight distribution of each of the {n} networks, per parameter ({bins} bins)", fontsize=9)
    written.append(style.save(fig, out / "histograms.png", dpi=100))
    if dists:
        # Leaves first, then layers and the whole network; at most 8 panels.
        dists = dict(sorted(dists.items(), key=lambda kv: (kv[0] == stats.ALL, "/" not in kv[0]))[:8])
        what = f"{metric} distance" if metric else "distance"
        fig, axes = style.grid(len(dists), cols=4, size=(3.2, 3.0))
        for ax, (leaf, d) in zip(axes, dists.items()):
            vmax = style.distance_vmax(d)  # a few blown-up networks would saturate the scale
            style.heatmap(ax, d, what, extend="max", bar_format="%.3g", cmap=style.CMAP, vmin=0, vmax=vmax)
            ax.set_title(f"{what}: {'whole network' if leaf == stats.ALL else leaf}", fontsize=8)
            style.integer_axis(ax, "network", "x")
            style.integer_axis(ax, "network", "y")
            ax.tick_params(labelsize=7)
        fig.suptitle(
            f"Pairwise {what} between the {n} networks (rows of networks.csv); "
            "colours clipped at each panel's 90th percentile",
            fontsize=9,
        )
        written.append(style.save(fig, out / "distances.png", dpi=100))
    return written
