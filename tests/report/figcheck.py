"""What every figure of the package must have, checked on the `matplotlib.figure.Figure` objects themselves.

`recording(into)` wraps `style.save` (which every figure goes through) so that a test keeps the figures an
analysis draws; `problems(fig)` lists what a reader would trip over, rendered with the Agg canvas.
"""

from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.transforms import Bbox

from jaxweights.report import style

# A PNG narrower or lower than this is unreadable in the report; wider or higher, too heavy.
MIN_PX, MAX_PX = (300, 200), (4000, 4000)


def recording(into: MutableMapping[str, object]):
    """A stand-in for `style.save` that also keeps each figure, by the stem of the PNG it is saved to."""
    save = style.save

    def recorded(fig, path, **kw):
        into[Path(path).stem] = fig
        return save(fig, path, **kw)

    return recorded


def _colorbar_axes(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def _labelled(ax, axis: str, fig) -> bool:
    """The axis has a label, or a panel it shares the axis with has one, or the figure has one for all panels."""
    if getattr(ax, f"get_{axis}label")():
        return True
    shared = getattr(ax, f"get_shared_{axis}_axes")().get_siblings(ax)
    sup = getattr(fig, f"_sup{axis}label", None)
    return any(getattr(a, f"get_{axis}label")() for a in shared) or bool(sup and sup.get_text())


def _covered(mappable, fig) -> bool:
    """The colours of an image (or a scatter coloured by value) are explained by a colour bar with a label."""
    bars = [a._colorbar for a in fig.axes if _colorbar_axes(a)]
    same = [
        b
        for b in bars
        if b.mappable is mappable
        or (
            b.cmap.name == mappable.cmap.name
            and np.allclose([b.norm.vmin, b.norm.vmax], [mappable.norm.vmin, mappable.norm.vmax], equal_nan=True)
        )
    ]
    return any(b.ax.get_ylabel() or b.ax.get_xlabel() for b in same)


def _integer_ticks(ax, axis: str) -> list[str]:
    """The tick labels shown on `axis` inside its view that are not whole numbers."""
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    locs = getattr(ax, f"get_{axis}ticks")()
    labels = getattr(ax, f"get_{axis}ticklabels")()
    bad = []
    for loc, lab in zip(locs, labels):
        text = lab.get_text().replace("\u2212", "-").strip("$")
        if not (lo - 1e-9 <= loc <= hi + 1e-9) or not text:
            continue
        try:
            value = float(text)
        except ValueError:
            bad.append(text)
            continue
        if value != round(value):
            bad.append(text)
    return bad


def _overlap(a: Bbox, b: Bbox, tol: float = 1.0) -> bool:
    i = Bbox.intersection(a, b)
    return i is not None and i.width > tol and i.height > tol


def problems(fig, name: str = "") -> list[str]:
    """What is wrong with `fig` for a reader: each a line naming the figure and the panel.

    Checked on every visible panel (colour bars apart): something drawn in it (non-background pixels inside
    its frame), an x and a y label (its own, a shared axis's, or the figure's), a labelled colour bar for each
    image or value-coloured scatter, whole-number ticks on an epoch axis, and its title clear of every other
    panel's title, tick labels and axis labels.
    """
    FigureCanvasAgg(fig)  # a Figure built without pyplot renders with Agg, as `style.save` does
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    height = rgba.shape[0]
    out = []
    panels = [a for a in fig.axes if a.get_visible() and a.axison and not _colorbar_axes(a)]
    for k, ax in enumerate(panels):
        where = f"{name} panel {k} {ax.get_title()!r}"
        drawn = ax.lines or ax.collections or ax.images or ax.patches
        x0, y0, x1, y1 = ax.get_window_extent(renderer).extents
        inside = rgba[int(height - y1) + 3 : int(height - y0) - 3, int(x0) + 3 : int(x1) - 3, :3].astype(int)
        face = np.array(ax.get_facecolor()[:3]) * 255
        ink = (np.abs(inside - face).max(-1) > 40).mean() if inside.size else 0.0
        if ink < 1e-3:
            out.append(f"{where}: blank ({ink:.2%} of its pixels drawn)")
        if not drawn:  # a panel that says why it is empty (`style.empty`) needs no axis labels
            if not ax.texts:
                out.append(f"{where}: nothing drawn and no text saying why")
            continue
        for axis in ("x", "y"):
            if not _labelled(ax, axis, fig):
                out.append(f"{where}: no {axis} label")
            if "epoch" in getattr(ax, f"get_{axis}label")().lower():
                bad = _integer_ticks(ax, axis)
                if bad:
                    out.append(f"{where}: epoch ticks that are not whole epochs: {bad}")
        for m in [*ax.images, *(c for c in ax.collections if c.get_array() is not None and c.cmap is not None)]:
            if not _covered(m, fig):
                out.append(f"{where}: {type(m).__name__} without a labelled colour bar")
    titled = [a for a in fig.axes if a.get_visible() and a.get_title()]
    for a in titled:
        t = a.title.get_window_extent(renderer)
        for b in fig.axes:
            if b is a or not b.get_visible():
                continue
            others = [b.xaxis.get_tightbbox(renderer), b.yaxis.get_tightbbox(renderer)]
            if b.get_title():
                others.append(b.title.get_window_extent(renderer))
            if any(o is not None and _overlap(t, o) for o in others):
                out.append(f"{name}: the title {a.get_title()!r} overlaps the panel {b.get_title()!r}")
    if fig._suptitle is not None:
        s = fig._suptitle.get_window_extent(renderer)
        if any(_overlap(s, a.title.get_window_extent(renderer)) for a in titled):
            out.append(f"{name}: the figure's title overlaps a panel's title")
    return out


def png_problems(path: Path) -> list[str]:
    """A written PNG too small or too large to read, or all of one colour."""
    import matplotlib.image

    px = matplotlib.image.imread(path)
    h, w = px.shape[:2]
    out = []
    if not (MIN_PX[0] <= w <= MAX_PX[0] and MIN_PX[1] <= h <= MAX_PX[1]):
        out.append(f"{path.name}: {w}×{h} pixels, outside {MIN_PX}..{MAX_PX}")
    if (np.abs(px[..., :3] - px[0, 0, :3]).max(-1) > 0.15).mean() < 0.01:
        out.append(f"{path.name}: almost all one colour")
    return out
