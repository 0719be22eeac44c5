"""Figures of a zoo's weights against accuracy: one PNG per figure and the data behind it as CSV.

Every function takes an output folder and a stem and writes ``<stem>.png`` and ``<stem>.csv``
(tidy: one row per plotted value), returning the PNG path. Colours encode test accuracy
(viridis: dark = poor, yellow = good) unless a figure says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd

from jaxweights.claims import OPTIMAL, SUBOPTIMAL, divergence, layer_depths
from jaxweights.io import rundir
from jaxweights.report import style
from jaxweights.report.style import (
    CMAP,
    acc_norm,
    cmap,
    colorbar,
    empty,
    grid,
    heatmap,
    integer_axis,
    new_figure,
    save_with_data,
)
from jaxweights.weights import compute, units


def kernel_leaves(params) -> list[str]:
    """Kernel leaf paths in depth order (input side first).

    Args:
      params: parameters (nested or '/'-flat dict), networks axis N first.

    Returns:
      The paths of the kernel leaves, e.g. ``["Dense_0/kernel", "Dense_1/kernel"]``.
    """
    flat = compute.flatten(params)
    ks = [k for k, v in flat.items() if compute.is_kernel(k, v)]
    depth = layer_depths([units.layer_of(k) for k in ks])
    return sorted(ks, key=lambda k: depth[units.layer_of(k)])


def _robust_edges(w_ND: np.ndarray, bins: int, q: float = 0.002, seed: int = 0) -> np.ndarray:
    """Edges spanning the pooled [q, 1-q] quantiles, so one blown-up network does not flatten the rest."""
    flat = w_ND.ravel()
    if flat.size > 200_000:
        flat = np.random.default_rng(seed).choice(flat, 200_000, replace=False)
    lo, hi = np.quantile(flat, [q, 1 - q])
    return np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 1, hi + 1, bins + 1)


def weight_histograms(
    out, params, acc_N, *, bins: int = 64, max_layers: int = 8, networks=None, stem: str = "weight_histograms"
) -> Path:
    """Per-layer weight histograms of every network overlaid, coloured by test accuracy.

    Edges are shared by all networks and span the pooled 0.2-99.8% quantiles (weights outside
    are left out of the plot; masses are fractions of each network's weights).

    Args:
      out: output folder.
      params: stacked parameters, networks axis N first.
      acc_N: (N,) test accuracy per network.
      bins: histogram bins per layer.
      max_layers: kernels drawn (input side first).
      networks: the network id of each row of `params` in the CSV (default 0..N-1).
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: layer, network, bin_left, bin_right, mass, test_acc).
    """
    leaves = kernel_leaves(params)[:max_layers]
    flat = compute.flatten(params)
    hists = {}
    for k in leaves:
        w = np.asarray(flat[k], np.float64).reshape(len(acc_N), -1)
        edges = _robust_edges(w, bins)
        hists[k] = (edges, np.stack([np.histogram(r, edges)[0] / r.size for r in w]))
    norm = acc_norm(acc_N)
    fig, axes = grid(len(leaves))
    rows = []
    order = np.argsort(acc_N)  # good networks drawn last, on top
    for ax, leaf in zip(axes, leaves):
        edges, h = hists[leaf]
        edges, h = np.asarray(edges), np.asarray(h)
        centres = (edges[:-1] + edges[1:]) / 2
        for i in order:
            ax.plot(centres, h[i], color=cmap()(norm(acc_N[i])), lw=0.8, alpha=0.7)
        ax.set_title(leaf, fontsize=9)
        ax.set_yscale("log")
        ax.set(xlabel="weight", ylabel="fraction of weights")
        ids = np.arange(len(h)) if networks is None else np.asarray(networks)
        rows.append(
            pd.DataFrame(
                {
                    "layer": leaf,
                    "network": np.repeat(ids, len(centres)),
                    "bin_left": np.tile(edges[:-1], len(h)),
                    "bin_right": np.tile(edges[1:], len(h)),
                    "mass": h.ravel(),
                    "test_acc": np.repeat(acc_N, len(centres)),
                }
            )
        )
    colorbar(fig, axes[: len(leaves)], norm)
    fig.suptitle("Weight histograms per layer (fraction of each network's weights), one line per network")
    return save_with_data(fig, out, stem, pd.concat(rows, ignore_index=True))


def kde_by_bin(
    out,
    params,
    bins_N,
    edges,
    *,
    grid: int = 400,
    per_network: int = 4000,
    max_layers: int = 8,
    stem: str = "kde_by_bin",
    seed: int = 0,
) -> Path:
    """Gaussian KDE of each layer's pooled weights per accuracy bin (Scott's bandwidth).

    Args:
      out: output folder.
      params: stacked parameters (networks axis first).
      bins_N: accuracy bin per network (-1 = left out), as `claims.accuracy_bins` gives.
      edges: the bin edges.
      grid: points of the density grid (between the pooled 1% and 99% quantiles).
      per_network: weights per network and layer beyond which a random subsample is used.
      max_layers: kernels drawn (input side first).
      stem: file stem.
      seed: seed of the subsample.

    Returns:
      The PNG path (``<stem>.csv``: layer, bin, acc_low, acc_high, x, density).
    """
    grid_points = grid
    leaves = kernel_leaves(params)[:max_layers]
    flat = compute.flatten(params)
    rng = np.random.default_rng(seed)
    nb = len(edges) - 1
    fig, axes = style.grid(len(leaves))
    colours = cmap()(np.linspace(0, 1, max(nb, 2)))
    rows = []
    for ax, leaf in zip(axes, leaves):
        w = np.asarray(flat[leaf], np.float64).reshape(len(bins_N), -1)
        take = w if w.shape[1] <= per_network else w[:, rng.choice(w.shape[1], per_network, replace=False)]
        lo, hi = np.quantile(take[bins_N >= 0], [0.01, 0.99])
        g = np.linspace(lo, hi, grid_points)
        drawn = [b for b in range(nb) if len(np.unique(take[bins_N == b])) >= 2]
        if drawn:  # every bin in one call of one compiled KDE (samples padded to one length)
            x, m = divergence.pad_samples([take[bins_N == b].ravel() for b in drawn])
            logd = divergence.kde_logdensities(jnp.asarray(x), jnp.asarray(m), jnp.asarray(g, jnp.float32))
            dens_B = np.exp(np.asarray(logd))
        for b, dens in zip(drawn, dens_B if drawn else []):
            label = f"[{edges[b]:.3f}, {edges[b + 1]:.3f}]"
            ax.plot(g, dens, color=colours[b], label=label)
            rows.append(
                pd.DataFrame(
                    {"layer": leaf, "bin": b, "acc_low": edges[b], "acc_high": edges[b + 1], "x": g, "density": dens}
                )
            )
        if not ax.lines:
            empty(ax, "no accuracy bin has two distinct weights")
        ax.set_title(leaf, fontsize=9)
        ax.set(xlabel="weight", ylabel="density (Gaussian KDE)")
    if axes[0].lines:
        axes[0].legend(title="test accuracy bin", fontsize=7)
    fig.suptitle("Density of the weights of the networks in each test accuracy bin, per layer")
    return save_with_data(fig, out, stem, pd.concat(rows, ignore_index=True) if rows else pd.DataFrame())


def distance_heatmap(
    out, d_NxN, acc_N, *, title: str = "", metric: str = "", networks=None, stem: str = "distance_heatmap"
) -> Path:
    """The N×N distance matrix with networks ordered by test accuracy (best first).

    The colour scale is clipped at the 90th percentile of the off-diagonal distances.

    Args:
      out: output folder.
      d_NxN: (N, N) distances.
      acc_N: (N,) test accuracy per network.
      title: panel title (default a description of the ordering).
      metric: the distance's name, on the colour bar.
      networks: the network id of each row of `d_NxN` in the CSV (default 0..N-1).
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: row_rank, col_rank, row_network, col_network, distance).
    """
    order = np.argsort(-np.asarray(acc_N), kind="stable")
    d = np.asarray(d_NxN)[np.ix_(order, order)]
    fig, ax = new_figure(figsize=(6, 5))
    what = f"{metric} distance" if metric else "distance"
    heatmap(ax, d, f"{what} (colour clipped at the 90th percentile)", extend="max", vmin=0, vmax=style.distance_vmax(d))
    ax.set_title(title or "pairwise distance, networks by accuracy (best first)", fontsize=9)
    ax.set_xlabel("network rank by accuracy")
    ax.set_ylabel("network rank by accuracy")
    n = len(order)
    ids = order if networks is None else np.asarray(networks)[order]
    data = pd.DataFrame(
        {
            "row_rank": np.repeat(np.arange(n), n),
            "col_rank": np.tile(np.arange(n), n),
            "row_network": np.repeat(ids, n),
            "col_network": np.tile(ids, n),
            "distance": d.ravel(),
        }
    )
    return save_with_data(fig, out, stem, data)


def statistics_vs_accuracy(
    out,
    table: pd.DataFrame,
    acc_N,
    labels,
    *,
    statistics: Sequence[str] = ("mean", "std", "kurtosis", "l2", "layer_fluctuation"),
    layers: Sequence[str] | None = None,
    stem: str = "statistics_vs_accuracy",
) -> Path:
    """Each statistic against test accuracy, one panel per (statistic, layer); groups marked.

    Networks with non-finite accuracy are left out; a panel whose values span more than 50 times
    their 75th percentile of |value| gets a symlog axis.

    Args:
      out: output folder.
      table: tidy statistics (network, layer, statistic, value).
      acc_N: (N,) test accuracy per network (indexed by the table's network).
      labels: (N,) group labels (OPTIMAL, SUBOPTIMAL, others drawn as "middle").
      statistics: statistics drawn.
      layers: layers drawn (default every layer name without "/": per layer and ``"__all__"``).
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: network, layer, statistic, value, test_acc, group).
    """
    t = table[table.statistic.isin(statistics)]
    if layers is None:
        layers = [l for l in t.layer.unique() if "/" not in l]  # per layer and "__all__"
    t = t[t.layer.isin(layers)].copy()
    acc_N, labels = np.asarray(acc_N), np.asarray(labels)
    t["test_acc"] = acc_N[t.network.to_numpy()]
    t["group"] = np.select(
        [labels[t.network] == OPTIMAL, labels[t.network] == SUBOPTIMAL], ["optimal", "suboptimal"], "middle"
    )
    t = t[np.isfinite(t.test_acc)]
    panels = [(s, l) for s in statistics for l in layers if ((t.statistic == s) & (t.layer == l)).any()]
    fig, axes = grid(len(panels), cols=min(len(layers), 5), size=(3.0, 2.4))
    colour = {"optimal": "tab:green", "suboptimal": "tab:red", "middle": "0.6"}
    for ax, (s, l) in zip(axes, panels):
        p = t[(t.statistic == s) & (t.layer == l)]
        for g, c in colour.items():
            q = p[p.group == g]
            ax.scatter(q.test_acc, q.value, s=10, color=c, label=g)
        v = np.abs(p.value.to_numpy(np.float64))
        v = v[np.isfinite(v)]
        typical = np.percentile(v, 75) if v.size else 0
        if typical > 0 and v.max() > 50 * typical:  # a few blown-up networks: keep the rest readable
            ax.set_yscale("symlog", linthresh=typical)
        ax.set_title(f"{s} · {l}", fontsize=8)
        ax.set_xlabel("test accuracy", fontsize=7)
        ax.set_ylabel(s, fontsize=7)
        ax.tick_params(labelsize=7)
    if panels:
        axes[0].legend(fontsize=6)
        fig.suptitle("Weight statistics against test accuracy (analysed networks; one panel per statistic · layer)")
    return save_with_data(fig, out, stem, t[["network", "layer", "statistic", "value", "test_acc", "group"]])


def pca_of_statistics(out, names: Sequence[str], x_NxF, acc_N, *, stem: str = "pca") -> Path:
    """2-D PCA of the networks' statistic vectors, coloured by test accuracy.

    Each statistic is rank-transformed to normal scores first (`QuantileTransformer`), so a few
    blown-up networks with weights of 1e5 do not take the whole first component; statistics with a
    non-finite value or no spread are left out.

    Args:
      out: output folder.
      names: the F statistics' names (unused).
      x_NxF: (N, F) statistics per network.
      acc_N: (N,) test accuracy per network.
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: network, pc1, pc2, test_acc).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import QuantileTransformer

    x = np.asarray(x_NxF, np.float64)
    keep = np.isfinite(x).all(0) & (np.nanstd(x, 0) > 0)
    x = x[:, keep]
    z = QuantileTransformer(n_quantiles=min(len(x), 1000), output_distribution="normal").fit_transform(x)
    pca = PCA(n_components=2).fit(z)
    pc = pca.transform(z)
    norm = acc_norm(acc_N)
    fig, ax = new_figure(figsize=(5.5, 4.5))
    sc = ax.scatter(pc[:, 0], pc[:, 1], c=acc_N, cmap=CMAP, norm=norm, s=25, edgecolor="k", lw=0.3)
    fig.colorbar(sc, ax=ax, label="test accuracy")
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ev[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})")
    ax.set_title(f"PCA of {keep.sum()} rank-transformed weight statistics per network", fontsize=9)
    return save_with_data(
        fig,
        out,
        stem,
        pd.DataFrame({"network": np.arange(len(pc)), "pc1": pc[:, 0], "pc2": pc[:, 1], "test_acc": acc_N}),
    )


def bin_divergence_heatmaps(out, mats: Mapping[str, np.ndarray], edges, *, stem: str = "bin_divergence") -> Path:
    """Symmetric KL between accuracy bins, one heatmap per quantity, symlog colours.

    The bin divergence of La Malfa et al. 2021, arXiv 2110.02628.

    Args:
      out: output folder.
      mats: ``{quantity: (B, B) symmetric KL}`` (node strength of a layer, or fluctuation), as
        `claims.bin_divergence` gives (NaN: a bin with fewer than 2 distinct values).
      edges: the B + 1 accuracy bin edges.
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: quantity, bin_a, bin_b, sym_kl).
    """
    names = list(mats)
    fig, axes = grid(len(names), cols=4, size=(3.2, 2.8))
    labels = [f"{edges[b]:.2f}-{edges[b + 1]:.2f}" for b in range(len(edges) - 1)]
    rows = []
    for ax, name in zip(axes, names):
        m = np.asarray(mats[name])
        if not np.isfinite(m[~np.eye(len(m), dtype=bool)]).any():
            empty(ax, "no finite divergence:\nfewer than 2 distinct values\nper accuracy bin")
            ax.set_title(name, fontsize=8)
            continue
        # symmetric log colours: the lowest-vs-highest bins can be 1e5 × the adjacent ones
        norm = matplotlib.colors.SymLogNorm(linthresh=1.0, vmin=0)
        heatmap(ax, m, "symmetric KL (symlog scale)", bar_format="%.3g", norm=norm)
        ax.set_xticks(range(len(m)), labels[: len(m)], rotation=45, fontsize=6)
        ax.set_yticks(range(len(m)), labels[: len(m)], fontsize=6)
        ax.set_xlabel("test accuracy bin", fontsize=8)
        ax.set_ylabel("test accuracy bin", fontsize=8)
        ax.set_title(name, fontsize=8)
        i, j = np.meshgrid(range(len(m)), range(len(m)), indexing="ij")
        rows.append(pd.DataFrame({"quantity": name, "bin_a": i.ravel(), "bin_b": j.ravel(), "sym_kl": m.ravel()}))
    fig.suptitle("Symmetric KL divergence of each quantity's distribution between test accuracy bins")
    return save_with_data(fig, out, stem, pd.concat(rows, ignore_index=True) if rows else pd.DataFrame())


def weight_matrices(out, params, acc_N, *, max_layers: int = 4, stem: str = "weight_matrices") -> Path:
    """Kernels of the best and the worst network as images (conv kernels as (kh·kw·cin, cout)).

    Args:
      out: output folder.
      params: stacked parameters, networks axis N first.
      acc_N: (N,) test accuracy per network (NaN ignored when picking best and worst).
      max_layers: kernels drawn (input side first).
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: which, network, layer, row, col, value).
    """
    acc = np.asarray(acc_N, np.float64)
    best, worst = int(np.nanargmax(acc)), int(np.nanargmin(acc))
    leaves = kernel_leaves(params)[:max_layers]
    flat = compute.flatten(params)
    fig, axes = new_figure(2, len(leaves), figsize=(3.6 * len(leaves), 6.4), squeeze=False)
    rows = []
    for r, (net, what) in enumerate(((best, "best"), (worst, "worst"))):
        for c, leaf in enumerate(leaves):
            m = np.asarray(flat[leaf][net], np.float64)
            m = m.reshape(-1, m.shape[-1])
            lim = np.nanmax(np.abs(m)) or 1.0
            ax = axes[r, c]
            heatmap(ax, m, "weight", cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
            ax.set_title(f"{what} (net {net}, acc {acc[net]:.3f})\n{leaf} {m.shape[0]}×{m.shape[1]}", fontsize=8)
            integer_axis(ax, "output unit", "x")
            integer_axis(ax, "input unit", "y")
            ax.tick_params(labelsize=7)
            i, j = np.indices(m.shape)
            rows.append(
                pd.DataFrame(
                    {
                        "which": what,
                        "network": net,
                        "layer": leaf,
                        "row": i.ravel(),
                        "col": j.ravel(),
                        "value": m.ravel(),
                    }
                )
            )
    fig.suptitle("Kernels of the best and the worst network (colours: weight, 0 white)")
    return save_with_data(fig, out, stem, pd.concat(rows, ignore_index=True))


LEFT_OUT_STYLE = {
    "diverged": ("0.55", "--"),
    "exploded": ("tab:red", ":"),
    "not_learned": ("0.75", "-."),
    "below_min_accuracy": ("0.75", "-."),
}


def accuracy_over_epochs(
    out, metrics: pd.DataFrame, *, states: pd.Series | None = None, stem: str = "accuracy_over_epochs"
) -> Path:
    """Test accuracy of every network over epochs, coloured by its final accuracy.

    Networks left out of the analysis are drawn in grey/red with their own line style and left out
    of the colour scale.

    Args:
      out: output folder.
      metrics: every epoch's metrics (network, epoch, test_acc; optional group, diverged, ...).
      states: network (or (group, network)) -> "diverged", "exploded", "not_learned",
        "below_min_accuracy" or another state (drawn normally); default: the last epoch's `diverged`
        column.
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: the metrics' key, epoch, accuracy, loss and flag columns, and state).
    """
    m = metrics.sort_values(["network", "epoch"])
    key = ["group", "network"] if "group" in m else ["network"]
    final = rundir.last_epoch(m).set_index(key)
    if states is None:
        div = final.diverged.astype(bool) if "diverged" in final else pd.Series(False, final.index)
        states = pd.Series(np.where(div, "diverged", "ok"), index=final.index)
    left = {k: v for k, v in states.items() if v in LEFT_OUT_STYLE}
    kept = final.test_acc[[k not in left for k in final.index]]
    norm = acc_norm(kept.fillna(kept.min()) if len(kept) else final.test_acc.fillna(0))
    fig, ax = new_figure(figsize=(6, 4))
    for k, g in m.groupby(key):
        k = k[0] if len(key) == 1 else k  # groupby on a one-column list yields 1-tuples
        f = final.test_acc.get(k, np.nan)
        colour, ls = LEFT_OUT_STYLE.get(left.get(k), (cmap()(norm(f)), "-"))
        ax.plot(g.epoch, g.test_acc, color=colour, ls=ls, lw=0.9, alpha=0.8)
    integer_axis(ax)
    ax.set_ylabel("test accuracy")
    counts = pd.Series(list(left.values()), dtype=object).value_counts()
    style = {
        "diverged": "grey dashed",
        "exploded": "red dotted",
        "not_learned": "light dash-dot",
        "below_min_accuracy": "light dash-dot",
    }
    what = ", ".join(f"{n} {st.replace('_', ' ')} ({style[st]})" for st, n in counts.items())
    ax.set_title(f"{len(final)} networks" + (f"; left out: {what}" if what else ""), fontsize=8)
    colorbar(fig, [ax], norm, "final test accuracy (analysed networks)")
    cols = [c for c in (*key, "epoch", "test_acc", "test_loss", "train_acc", "diverged", "exploded") if c in m]
    data = m[cols].assign(
        state=[left.get(k, "ok") for k in (m[key[0]] if len(key) == 1 else zip(*(m[c] for c in key)))]
    )
    return save_with_data(fig, out, stem, data)


def depth_profile(out, table: pd.DataFrame, *, value: str = "ratio", stem: str = "depth_profile") -> Path:
    """A per-layer quantity against per-depth-normalised layer position, one line per zoo.

    Args:
      out: output folder.
      table: columns ``zoo, depth`` and `value` (e.g. within-suboptimal / within-optimal distance
        ratio, as `claims.depth_profiles` gives).
      value: the column drawn.
      stem: file stem.

    Returns:
      The PNG path (``<stem>.csv``: `table` as given).
    """
    fig, ax = new_figure(figsize=(6, 4))
    for zoo, g in table.groupby("zoo"):
        g = g.sort_values("depth")
        ax.plot(g.depth, g[value], marker="o", label=zoo)
    ax.axhline(1.0, color="0.5", ls=":")
    ax.set_xlabel("layer depth (0 = input side, 1 = output layer)")
    ax.set_ylabel("within-suboptimal / within-optimal distance")
    ax.legend(fontsize=7)
    return save_with_data(fig, out, stem, table)
