"""The learning dynamics in the report: HTML sections and figures of what `jaxweights.dynamics` wrote.

Figures are `matplotlib.figure.Figure` objects (no pyplot: no global backend or figure registry);
each PNG has a CSV of its plotted data beside it. Quantities: relative weight change (Agrawal et al.
2020, arXiv 2011.06735), linear CKA (Kornblith et al. 2019) epoch × epoch (Sharon & Dar 2024, arXiv
2405.17377), modularity over depth (Lu et al. 2022, ECCV).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from jaxweights.dynamics import INPUT, network_masks
from jaxweights.io import atomic, rundir
from jaxweights.report import style
from jaxweights.report.html import Section, esc, fmt, table
from jaxweights.weights import stats


def report_sections(out_dir: str | Path, prefix: str = "") -> list:
    """Report sections for the dynamics that `write_dynamics` wrote to `out_dir`.

    Args:
      out_dir: a folder written by `jaxweights.dynamics.write_dynamics` (with `dynamics.json` and `figures/`).
      prefix: put before each title (e.g. "group 01").

    Returns:
      Three `Section`s: weight change (Agrawal et al. 2020), CKA and probes (Kornblith et al. 2019,
      Sharon & Dar 2024), modularity and pruning candidates (Lu et al. 2022).
    """
    out_dir = Path(out_dir)
    s = rundir.read_config(out_dir / "dynamics.json")
    fig = lambda name: [p for p in sorted((out_dir / "figures").glob(name)) if p.suffix == ".png"]
    p = f"{prefix}: " if prefix else ""
    r, m = s["rwc"], s["modularity"]
    yes = lambda b: "yes" if b else "no"
    ex = s.get("excluded", [])
    head = (
        f"<p>Over the {s['n_optimal']} optimal of {s['n_networks']} networks ({esc(s['optimal_rule'])}); "
        + (
            f"{len(ex)} excluded (left out of the study: network{'s' if len(ex) > 1 else ''} "
            f"{', '.join(map(str, ex))}), left out of every summary and figure; "
            if ex
            else ""
        )
        + f"snapshots at epochs {', '.join(map(str, s['epochs']))}.</p>"
    )
    return [
        Section(
            p + "Learning dynamics: how much does each layer move?",
            head + f"<p>Relative weight change ({esc(r['definition'])}). Do later layers change more? "
            f"{yes(r['later_layers_change_more'])} (Spearman ρ of depth vs RWC: {fmt(r['rho_depth_first'])} "
            f"at epoch {r['first_epoch']}, {fmt(r['rho_depth_last'])} at epoch {r['last_epoch']}). "
            "Both definitions per network, layer and epoch are in <code>rwc.csv</code>.</p>"
            + table(pd.DataFrame(r["per_layer"]), ["layer", "first_epoch", "last_epoch"]),
            fig("rwc.png") + fig("stats_over_epochs.png"),
        ),
        Section(
            p + "Representations: CKA and linear probes",
            "<p>Linear CKA of each layer between optimal networks at the last epoch (how alike are seeds and "
            "hyperparameters?) and between the first and last snapshot of the same network (how far has the "
            "layer moved?); linear-probe accuracy on held-out images and decision-region agreement with the "
            "previous epoch. Every matrix is in <code>cka.npz</code>, every probe in <code>probes.csv</code>.</p>"
            + table(
                pd.DataFrame(s["cka"]["per_layer"]).merge(
                    pd.DataFrame(
                        s["probes"]["per_layer"], columns=["layer", "depth", "probe_acc", "region_agreement_prev"]
                    ),
                    on=["layer", "depth"],
                    how="left",
                ),
                ["layer", "across_networks", "first_vs_last_epoch", "probe_acc", "region_agreement_prev"],
            ),
            fig("cka_network*.png"),
        ),
        Section(
            p + "Modularity over depth and pruning candidates (Lu et al. 2022)",
            f"<p>Does modularity rise with depth? {yes(m['modularity_rises_with_depth'])} (Spearman ρ "
            f"{fmt(m['rho_depth'])}). Layers where the mean curve plateaus or drops: "
            f"{esc(', '.join(m['pruning_candidates']) or 'none')} "
            "(<code>jaxweights prune</code> removes them and retrains, to check what they were worth).</p>"
            + table(pd.DataFrame(m["per_layer"]), ["layer", "modularity"]),
            fig("modularity_depth.png"),
        ),
    ]


RWC_LABELS = {
    "rwc_l1_ratio": r"RWC $\Vert w_t - w_{t-1}\Vert_1 / \Vert w_{t-1}\Vert_1$",
    "rwc_mean_elementwise": r"RWC, mean of $|w_t - w_{t-1}| / |w_{t-1}|$",
}


def plot_rwc(rwc: pd.DataFrame, good: np.ndarray, path: str | Path, column: str = "rwc_l1_ratio") -> pd.DataFrame:
    """RWC per layer over epochs, median of the optimal vs the other given networks (PNG + CSV of the plotted data).

    Relative weight change of Agrawal et al. 2020 (arXiv 2011.06735).

    Args:
      rwc: the table `rwc.csv`, excluded networks already dropped.
      good: boolean `(N,)` marking the optimal networks; every other row passed in is drawn as
        "others" (the middle and suboptimal analysed networks).
      path: the PNG to write (the CSV goes beside it).
      column: which RWC definition.

    Returns:
      The plotted table `group, layer, epoch, median, q25, q75`.
    """
    df = rwc.assign(group=np.where(np.asarray(good)[rwc.network.to_numpy()], "optimal", "others"))
    agg = (
        df.groupby(["group", "layer", "depth", "epoch"])[column]
        .agg(median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75))
        .reset_index()
    )
    layers = agg.sort_values("depth").layer.unique()
    fig, axes = style.new_figure(1, 2, figsize=(10, 3.5), sharey=True)
    for ax, grp in zip(axes, ("optimal", "others")):
        for l in layers:
            d = agg[(agg.group == grp) & (agg.layer == l)]
            ax.plot(d.epoch, d["median"], marker="o", label=l)
            ax.fill_between(d.epoch, d.q25, d.q75, alpha=0.2)
        ax.set(title="optimal networks" if grp == "optimal" else "other analysed networks", yscale="log")
        style.integer_axis(ax)
    axes[0].set_ylabel(RWC_LABELS.get(column, column))
    axes[0].legend(title="layer", fontsize=8)
    fig.suptitle("Relative weight change from the previous epoch: median and quartiles over networks")
    path = Path(path)
    style.save(fig, path, dpi=110)
    atomic.write_csv(path.with_suffix(".csv"), agg)
    return agg


def plot_cka(
    cka: Mapping[str, np.ndarray], network: int, path: str | Path, kind: str = "linear", which: str = ""
) -> None:
    """CKA heatmaps of one network: layer × layer (last epoch) and epoch × epoch per layer (PNG + CSV).

    The input's epoch × epoch panel is left out of the figure (the images do not change: 1 everywhere), not
    out of the CSV. Panels wrap after 5 to a row, on one colour scale with one colour bar.

    Linear CKA (Kornblith et al. 2019); epoch × epoch after Sharon & Dar 2024 (arXiv 2405.17377).

    Args:
      cka: the arrays of `cka.npz`.
      network: which network.
      path: the PNG to write (the CSV goes beside it).
      kind: "linear" or "unbiased" (minibatch CKA, Nguyen et al. 2021).
      which: why this network was chosen, put in the figure's title (e.g. "the first optimal network").
    """
    layers, epochs = list(cka["layers"]), [int(e) for e in cka["epochs"]]
    ll, ee = cka[f"{kind}_layers"][network], cka[f"{kind}_epochs"][network]
    moving = [(l, m) for l, m in zip(layers, ee) if l != INPUT]
    fig, axes = style.grid(1 + len(moving), cols=5, size=(2.7, 3.0))
    panels = list(axes[: 1 + len(moving)])
    bar = lambda ax: panels if ax is panels[-1] else False  # one colour bar, drawn with the last panel
    label = f"{kind} CKA (1 = same representation)"
    style.heatmap(axes[0], ll, label, bar=bar(axes[0]), vmin=0, vmax=1)
    axes[0].set(title=f"layer × layer, epoch {epochs[-1]}", xticks=range(len(layers)), yticks=range(len(layers)))
    axes[0].set_xticklabels(layers, rotation=90, fontsize=7)
    axes[0].set_yticklabels(layers, fontsize=7)
    axes[0].set(xlabel="layer", ylabel="layer")
    step = -(-len(epochs) // 8)  # at most 8 epoch ticks
    for ax, (l, m) in zip(axes[1:], moving):
        style.heatmap(ax, m, label, bar=bar(ax), vmin=0, vmax=1)
        ticks = range(0, len(epochs), step)
        ax.set(title=f"{l}: epoch × epoch", xticks=ticks, yticks=ticks, xlabel="epoch", ylabel="epoch")
        ax.set_xticklabels([epochs[t] for t in ticks], fontsize=7)
        ax.set_yticklabels([epochs[t] for t in ticks], fontsize=7)
    fig.suptitle(
        f"{kind.capitalize()} CKA of network {network}"
        + (f" ({which})" if which else "")
        + ":\nhow alike its layers' representations are, across layers and across epochs"
    )
    path = Path(path)
    style.save(fig, path, dpi=110)
    rows = [
        {"layer_a": a, "layer_b": b, "cka": float(ll[i, j])} for i, a in enumerate(layers) for j, b in enumerate(layers)
    ]
    rows += [
        {"layer_a": l, "layer_b": l, "epoch_a": ea, "epoch_b": eb, "cka": float(ee[li, i, j])}
        for li, l in enumerate(layers)
        for i, ea in enumerate(epochs)
        for j, eb in enumerate(epochs)
    ]
    atomic.write_csv(path.with_suffix(".csv"), pd.DataFrame(rows))


def plot_modularity(mod: pd.DataFrame, good: np.ndarray, path: str | Path) -> pd.DataFrame:
    """Modularity against depth at the last epoch for every network, optimal ones highlighted (PNG + CSV).

    k-NN graph modularity of Lu et al. 2022 (ECCV).

    Args:
      mod: the table `modularity.csv`.
      good: boolean `(N,)`, the optimal networks.
      path: the PNG to write (the CSV goes beside it).

    Returns:
      The plotted rows (the last epoch's).
    """
    last = mod[mod.epoch == mod.epoch.max()]
    fig, ax = style.new_figure(figsize=(5, 3.5))
    for n, d in last.groupby("network"):
        ok = bool(np.asarray(good)[n])
        ax.plot(d.depth, d.modularity, color="C0" if ok else "C3", alpha=0.6, lw=1.2 if ok else 0.8)
    names = last.sort_values("depth").drop_duplicates("depth")
    ax.set_xticks(names.depth)
    ax.set_xticklabels(names.layer, rotation=45, fontsize=8)
    ax.set(
        xlabel="layer (input side first)",
        ylabel="modularity (k-NN, k=3)",
        title=f"Modularity over depth at epoch {int(last.epoch.max())}, one line per network",
    )
    ax.legend(
        [Line2D([], [], color="C0"), Line2D([], [], color="C3")],
        ["optimal", "other analysed networks"],
        fontsize=8,
    )
    path = Path(path)
    style.save(fig, path, dpi=110)
    atomic.write_csv(path.with_suffix(".csv"), last)
    return last


def plot_stats_over_epochs(
    st: pd.DataFrame,
    good: np.ndarray,
    path: str | Path,
    statistics: Sequence[str] = ("mean", "std", "layer_fluctuation"),
) -> pd.DataFrame:
    """Per-layer statistics over epochs, median of the optimal vs the other given networks (PNG + CSV).

    Args:
      st: the table `stats_over_epochs.csv`.
      good: boolean `(N,)`, the optimal networks.
      path: the PNG to write (the CSV goes beside it).
      statistics: which statistics, one row of panels each.

    Returns:
      The plotted table `statistic, layer, group, epoch, value`.
    """
    d = st[st.statistic.isin(statistics) & ~st.layer.str.contains("/") & (st.layer != stats.ALL)]
    d = d.assign(group=np.where(np.asarray(good)[d.network.to_numpy()], "optimal", "others"))
    agg = d.groupby(["statistic", "layer", "group", "epoch"]).value.median().reset_index()
    layers = sorted(d.layer.unique(), key=lambda l: l != INPUT)  # input first, then the table's (execution) order
    fig, axes = style.new_figure(
        len(statistics), len(layers), figsize=(2.8 * len(layers), 2.4 * len(statistics)), squeeze=False
    )
    for i, s in enumerate(statistics):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            if not ((agg.statistic == s) & (agg.layer == l)).any():
                ax.axis("off")  # e.g. the input layer has node strength but no weights
                continue
            for grp, color in (("optimal", "C0"), ("others", "C3")):
                q = agg[(agg.statistic == s) & (agg.layer == l) & (agg.group == grp)]
                ax.plot(q.epoch, q.value, color=color, marker=".", label=grp)
            ax.set_title(l, fontsize=8)
            style.integer_axis(ax)
            ax.set_ylabel(s, fontsize=8)
            ax.tick_params(labelsize=7)
    next(ax for ax in axes.ravel() if ax.lines).legend(fontsize=7)
    fig.suptitle("Weight statistics over epochs: median of the optimal and of the other analysed networks")
    path = Path(path)
    style.save(fig, path, dpi=110)
    atomic.write_csv(path.with_suffix(".csv"), agg)
    return agg


def write_figures(
    out_dir: str | Path, optimal_N: np.ndarray | None = None, exclude_N: np.ndarray | None = None
) -> list[Path]:
    """Draws the dynamics figures from the tables `write_dynamics` wrote into `out_dir/figures/`.

    Args:
      out_dir: a folder written by `write_dynamics`.
      optimal_N: boolean `(N,)` marking the optimal networks (from the caller); default every
        network not excluded.
      exclude_N: boolean `(N,)` networks left out of every figure (those left out of the study); default none.

    Returns:
      The PNG paths (each has a CSV of its data beside it).
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rwc = pd.read_csv(out_dir / "rwc.csv")
    good, exclude_N = network_masks(int(rwc.network.max()) + 1, optimal_N, exclude_N)
    keep = lambda t: t[~exclude_N[t.network.to_numpy()]]  # figure scales from the analysed networks only
    paths = [fig_dir / "rwc.png", fig_dir / "modularity_depth.png", fig_dir / "stats_over_epochs.png"]
    plot_rwc(keep(rwc), good, paths[0])
    plot_modularity(keep(pd.read_csv(out_dir / "modularity.csv")), good, paths[1])
    plot_stats_over_epochs(keep(pd.read_csv(out_dir / "stats_over_epochs.csv")), good, paths[2])
    with np.load(out_dir / "cka.npz") as z:
        cka = {k: z[k] for k in z.files}
    best = (
        int(np.flatnonzero(good)[0]) if good.any() else int(np.flatnonzero(~exclude_N)[0]) if (~exclude_N).any() else 0
    )
    paths.append(fig_dir / f"cka_network{best}.png")
    which = "the first optimal network" if good.any() else "the first analysed network"
    plot_cka(cka, best, paths[-1], which=which)
    return paths
