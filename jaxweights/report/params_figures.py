"""Figures of networks read from parameter files (`jaxweights analyze-params`): weight histograms, distance heatmaps.

Drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend), so importing or calling
this never changes another program's matplotlib state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.weights import binning, stats


def write_figures(
    params: Mapping[str, Any], out: str | os.PathLike, *, dists: Mapping[str, np.ndarray] | None = None, bins: int = 64
) -> list[Path]:
    """Writes `figures/histograms.png` (each network's weight distribution, first 12 leaves) and,
    given `{group: dist_NxN}`, `figures/distances.png` (heatmaps of up to 8 groups, leaves first).

    Args:
      params: stacked parameters, networks axis first.
      out: output directory; the figures go to `out/figures/`.
      dists: optional `{group: dist_NxN}` of one metric.
      bins: histogram bins (edges shared by all networks of a leaf).

    Returns:
      The written paths.
    """
    from matplotlib.figure import Figure  # optional heavy dependency
    from matplotlib.ticker import MaxNLocator

    out = Path(out) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    hists = dict(list(binning.histograms(params, bins=bins).items())[:12])
    cols = min(4, len(hists))
    rows = -(-len(hists) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (leaf, (edges, h_NxB)) in zip(axes.flat, hists.items()):
        centers = (edges[:-1] + edges[1:]) / 2
        for h in h_NxB:
            ax.plot(centers, h, lw=0.8, alpha=0.6)
        ax.set_title(leaf, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(hists) :]:
        ax.axis("off")
    fig.suptitle("weight distributions (one line per network)", fontsize=9)
    fig.tight_layout()
    written.append(out / "histograms.png")
    fig.savefig(written[-1], dpi=100)
    if dists:
        # Leaves first, then layers and the whole network; at most 8 panels.
        dists = dict(sorted(dists.items(), key=lambda kv: (kv[0] == stats.ALL, "/" not in kv[0]))[:8])
        cols = min(4, len(dists))
        rows = -(-len(dists) // cols)
        fig = Figure(figsize=(3.0 * cols, 2.8 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (leaf, d) in zip(axes.flat, dists.items()):
            im = ax.imshow(d, cmap="viridis")
            ax.set_title(leaf, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=ax, fraction=0.046)
        for ax in list(axes.flat)[len(dists) :]:
            ax.axis("off")
        fig.tight_layout()
        written.append(out / "distances.png")
        fig.savefig(written[-1], dpi=100)
    return written
