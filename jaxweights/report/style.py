"""The one figure style: the colour map, panel grids on `matplotlib.figure.Figure` objects and the PNG writer.

No pyplot and no global backend: a `Figure` built here renders with the Agg canvas when saved, whatever backend
the importing program (a notebook, a GUI) uses. Every figure of the package, the report's, the dynamics' and the
imported weights', is drawn with these helpers and written with `save`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from jaxweights.io import atomic

CMAP = "viridis"  # test accuracy: dark = poor, yellow = good
DPI = 90

__all__ = [
    "CMAP",
    "DPI",
    "acc_norm",
    "cmap",
    "colorbar",
    "distance_vmax",
    "empty",
    "grid",
    "heatmap",
    "integer_axis",
    "new_figure",
    "save",
    "save_with_data",
]


def cmap(name: str = CMAP) -> matplotlib.colors.Colormap:
    """The registered colour map `name` (default `CMAP`).

    Args:
      name: a matplotlib colour map name.

    Returns:
      The colour map.
    """
    return matplotlib.colormaps[name]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize=(6, 4), squeeze: bool = True, **kwargs):
    """A `matplotlib.figure.Figure` (not registered with pyplot) and its axes, as ``plt.subplots`` returns them.

    The figure has matplotlib's constrained layout: titles, axis labels and colour bars of neighbouring
    panels are spaced so that none overlaps another.

    Args:
      nrows, ncols: the panel grid.
      figsize: inches.
      squeeze: as ``plt.subplots``: one panel -> one Axes.
      **kwargs: more `Figure.subplots` options (sharex, ...).

    Returns:
      (fig, axes).
    """
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def grid(n: int, cols: int = 4, size=(3.6, 2.8)):
    """A figure of `n` panels, `cols` per row, each `size` inches; the unused panels are hidden.

    Args:
      n: number of panels.
      cols: panels per row (at most `n`).
      size: (width, height) of a panel, inches.

    Returns:
      (fig, axes): the figure and a flat array of its axes.
    """
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = new_figure(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def acc_norm(acc) -> matplotlib.colors.Normalize:
    """Colour normalisation spanning the finite accuracies.

    Args:
      acc: accuracies (NaN ignored).

    Returns:
      A `Normalize` from their minimum to their maximum.
    """
    acc = np.asarray(acc, np.float64)
    return matplotlib.colors.Normalize(vmin=np.nanmin(acc), vmax=np.nanmax(acc))


def colorbar(fig, axes, norm, label: str = "test accuracy") -> None:
    """One colour bar of `CMAP` under `norm` beside `axes`.

    Args:
      fig: the figure.
      axes: the axes it sits beside.
      norm: the colour normalisation (e.g. `acc_norm`).
      label: its label.
    """
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=CMAP)
    fig.colorbar(sm, ax=list(axes), label=label, shrink=0.8)


def heatmap(
    ax,
    m,
    label: str,
    *,
    bar=True,
    extend: str = "neither",
    bar_format: str | None = None,
    cmap: str = "magma",
    **imshow,
):
    """A matrix drawn as an image, with a colour bar saying what its colours mean.

    Args:
      ax: the panel.
      m: the (rows, cols) matrix.
      label: the colour bar's label (the quantity and its unit or scale).
      bar: True: a colour bar of its own beside `ax`; a list of axes: one bar beside all of them (for panels
        drawn on one colour scale, the last one drawn passes them); False: none (another panel's bar says it).
      extend: the colour bar's arrows ("max": values above the scale are clipped).
      bar_format: the colour bar's tick format (e.g. "%.2g"); default matplotlib's for the norm.
      cmap: the colour map.
      **imshow: more `Axes.imshow` options (vmin, vmax, norm, aspect, ...).

    Returns:
      The image.
    """
    im = ax.imshow(m, cmap=cmap, **imshow)
    if bar is not False:
        cb = ax.figure.colorbar(im, ax=ax if bar is True else list(bar), extend=extend, format=bar_format, shrink=0.8)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return im


def distance_vmax(d_NxN, q: float = 90) -> float | None:
    """The top of a distance heatmap's colour scale: the `q`-th percentile of the finite off-diagonal distances,
    so that a few blown-up networks do not saturate the scale (draw the colour bar with ``extend="max"``).

    Args:
      d_NxN: (N, N) distances.
      q: the percentile.

    Returns:
      The value, or None (matplotlib's default) when there is no finite off-diagonal distance.
    """
    d = np.asarray(d_NxN, np.float64)
    off = d[~np.eye(len(d), dtype=bool)]
    off = off[np.isfinite(off)]
    return float(np.percentile(off, q)) if off.size else None


def integer_axis(ax, label: str = "epoch", axis: str = "x") -> None:
    """Labels an axis of whole numbers (epochs, network numbers) and puts its ticks on whole numbers only
    (no 1.25, 1.5).

    Args:
      ax: the panel.
      label: the axis label.
      axis: "x" or "y".
    """
    getattr(ax, f"set_{axis}label")(label)
    getattr(ax, f"{axis}axis").set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def empty(ax, why: str) -> None:
    """An empty panel that says why it is empty.

    Args:
      ax: the panel.
      why: the text shown in its centre.
    """
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, color="0.3", transform=ax.transAxes)


def save(fig, path: str | Path, *, dpi: int = DPI) -> Path:
    """Writes `fig` as a PNG to `path` atomically (the folder is created).

    Args:
      fig: a `matplotlib.figure.Figure`.
      path: the PNG file.
      dpi: resolution.

    Returns:
      `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    return path


def save_with_data(fig, out: str | Path, stem: str, data: pd.DataFrame) -> Path:
    """Writes ``out/<stem>.csv`` (the data behind the figure) and ``out/<stem>.png``.

    Args:
      fig: a `matplotlib.figure.Figure`.
      out: output folder (created).
      stem: file stem.
      data: the data behind the figure.

    Returns:
      The PNG path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(out / f"{stem}.csv", data)
    return save(fig, out / f"{stem}.png")
