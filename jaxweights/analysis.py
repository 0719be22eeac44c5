"""`analyze_workdir(workdir)`: statistics, node strength and distances of a trained zoo.

Reads the final parameters of every network (`params.npz`, networks axis first) and writes
`<workdir>/analysis/`:

    stats.csv                 network, layer, statistic, value, undefined (per leaf, per layer
                              and "__all__" for the whole network; layer fluctuation included)
    node_strength.npz         one (N, nodes) array per layer ("input" first)
    distances/<metric>.npz    one N×N array per layer for every distance metric
    networks.csv              the last epoch's metrics of each network (accuracy, diverged, ...)
    groups.csv, claim_tests.csv, dispersion.csv, correlations.csv, prediction_scores.csv,
    predictions.csv, bin_divergence.npz, figures/*.png (+ the CSV behind each),
    report.html, summary.json  the optimal-vs-suboptimal study (`zoo_summary`, `report_workdir`)

The new analysis is built in a temporary folder and swapped in at the end, so an interrupted
`analyze` leaves the previous analysis intact. A run with static groups is analysed per group
(`analysis/groups/<NN>/`), with a combined `stats.csv` carrying a `group` column.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from jaxweights import distances, rundir, stats, strength

log = logging.getLogger("jaxweights")


# Energy distance is exact but O(D log D) per pair (minutes at N=256); ask for it with --metrics.
DEFAULT_METRICS = ("wasserstein", "ks", "jensenshannon", "kde_kl", "euclidean", "cosine")


class AnalysisError(ValueError):
    """A request the analysis cannot serve (unknown metric, folder without a trained zoo)."""


def _check_metrics(metrics: Sequence[str]) -> None:
    known = set(distances.registered_distances()) | set(distances.BUILTIN)
    for m in metrics:
        if m not in known:
            raise AnalysisError(f"--metrics: unknown distance {m!r}; known: {', '.join(sorted(known))}")


def _run_dirs(workdir: Path) -> list[tuple[str, Path]]:
    if (workdir / "params.npz").exists():
        return [("", workdir)]
    groups = sorted(p for p in (workdir / "groups").glob("*") if (p / "params.npz").exists()) \
        if (workdir / "groups").is_dir() else []
    if not groups:
        raise AnalysisError(f"{workdir}: no params.npz (is this a finished `jaxweights train` run directory?)")
    return [(p.name, p) for p in groups]


def analyze_params(params, out: Path, *, metrics: Sequence[str] | None = None, block_size: int = 64,
                   layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Writes stats.csv, node_strength.npz and distances/ for stacked `params` into `out`.

    `layers` sets the chain order of kernel layers for node strength (default: natural name order).
    With several devices, statistics and distances run with the networks axis split over all of
    them (`train.networks_mesh`).
    """
    mesh = None
    if jax.device_count() > 1:  # the networks axis split over every device (same numbers as one device)
        from jaxweights import train
        mesh = train.networks_mesh()
        log.info("statistics and distances sharded over %d devices", mesh.size)
    table = stats.compute_statistics(params, per=("leaf", "layer", "network"), mesh=mesh)
    try:
        ns = strength.node_strength(params, layers=layers)
        fluct = strength.layer_fluctuation(params, layers=layers)
        table = pd.concat([table, fluct], ignore_index=True)
        buf = io.BytesIO()
        np.savez(buf, **ns)
        rundir.atomic_write_bytes(out / "node_strength.npz", buf.getvalue())
    except ValueError as e:  # a model whose layers do not form a chain (e.g. attention)
        log.warning("node strength skipped: %s", e)
    rundir.write_csv(out / "stats.csv", table)
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    _check_metrics(chosen)
    distances.write(str(out), distances.compute(params, metrics=chosen, block_size=block_size, mesh=mesh))
    return table


def analyze_workdir(workdir: str | os.PathLike, *, metrics: Sequence[str] | None = None,
                    block_size: int = 64, report: bool = True, extra_sections=(), dynamics: bool | None = None,
                    data_dir: str | None = None, dynamics_options: Mapping[str, Any] | None = None,
                    model: Any = None, **claim_options) -> Path:
    """Analyses a run directory into `<workdir>/analysis/`; returns that path.

    With `report` (and a `metrics.csv`), also tests the optimal-vs-suboptimal claims and writes
    figures, report.html and summary.json (`report_workdir`); `claim_options` go to `zoo_summary`
    (quantile, threshold, bins, n_permutations, n_boot, alpha, folds, seed); `extra_sections` are
    report section providers (see `jaxweights.report`).

    Learning dynamics (`jaxweights.dynamics.write_dynamics`: rwc.csv, stats_over_epochs.csv,
    modularity.csv, cka.npz, probes.csv, dynamics.json and their figures, and report sections):
    `dynamics=None` computes them when the run kept at least two per-epoch checkpoints and skips
    them with a log line otherwise (or when its data cannot be found); `True` requires them (errors
    are raised); `False` skips them. `data_dir` is where the probe images are read (default: the
    run's config); `dynamics_options` go to `write_dynamics` (probe_size, k, cka_batch, ...);
    `model` is the Flax module of a run trained with your own module (needed for its dynamics).

    In a multi-host job (`jax.distributed` initialised), call it in every process: they all
    compute, with the networks axis sharded over every device, and process 0 alone writes.
    """
    workdir = Path(workdir)
    _check_metrics(metrics or ())  # before any work, so a bad name costs nothing
    runs = _run_dirs(workdir)
    if report:  # refuse impossible grouping options before minutes of distances
        _check_grouping(runs, claim_options)
    # Several processes (`config.multihost`) all compute (the sharded statistics and distances
    # need every process); process 0 alone writes `analysis/`, the others into a scratch folder.
    main = jax.process_index() == 0
    if main:
        _remove_stale_analyses(workdir)
    tmp = Path(tempfile.mkdtemp(prefix=f".analysis-{os.getpid()}-", dir=workdir if main else None))
    try:
        tables, nets, notes = [], [], {}
        for name, rd in runs:
            out = tmp / "groups" / name if name else tmp
            params = rundir.load_params(rd / "params.npz")
            n = len(next(iter(stats.flatten(params).values())))
            log.info("%s: analysing %d networks", rd, n)
            table = analyze_params(params, out, metrics=metrics, block_size=block_size)
            if dynamics is not False:
                skipped = _dynamics(rd, out, dynamics is True, data_dir, {"model": model, **(dynamics_options or {})})
                if skipped:
                    notes[name] = skipped
            if (rd / "metrics.csv").exists():
                m = pd.read_csv(rd / "metrics.csv")
                last = m[m.epoch == m.epoch.max()].reset_index(drop=True)
                if name:
                    last.insert(0, "group", name)
                nets.append(last)
            if name:
                table.insert(0, "group", name)
            tables.append(table)
        if len(runs) > 1:
            rundir.write_csv(tmp / "stats.csv", pd.concat(tables, ignore_index=True))
        if nets:
            rundir.write_csv(tmp / "networks.csv", pd.concat(nets, ignore_index=True))
        if report and all((rd / "metrics.csv").exists() for _, rd in runs):
            report_workdir(workdir, tmp, runs, extra_sections=extra_sections, metrics=metrics, block_size=block_size,
                           dynamics_notes=notes, **claim_options)
        final = workdir / "analysis"
        if main:
            old = workdir / ".analysis-old"
            if old.exists():
                shutil.rmtree(old)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            if old.exists():
                shutil.rmtree(old)
        if jax.process_count() > 1:  # nobody returns before process 0 has put `analysis/` in place
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"analysed {workdir}")
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _remove_stale_analyses(workdir: Path) -> None:
    """Removes `.analysis-<pid>-*` folders of analyses killed before they could clean up.

    A folder whose process is still alive (another `analyze` of the same workdir) is left alone.
    """
    for p in workdir.glob(".analysis-*-*"):
        pid = p.name.split("-")[1]
        if not pid.isdigit() or not p.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("%s: removing the unfinished analysis of a killed process", p)
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def _dynamics(rd: Path, out: Path, required: bool, data_dir: str | None, options: Mapping[str, Any]) -> str | None:
    """Writes the learning dynamics of run `rd` into `out`; returns why they were skipped, or None."""
    from jaxweights import config as config_lib
    from jaxweights import data as data_lib
    from jaxweights import dynamics as dyn
    if not required:
        try:
            dirs = dyn.snapshot_dirs(rd)
        except dyn.DynamicsError as e:
            log.info("learning dynamics skipped: %s", e)
            return str(e)
        kept = sum(p.name.isdigit() for p in (dirs[0] / "checkpoints").iterdir())
        if kept < 2:
            why = (f"{dirs[0] / 'checkpoints'}: {kept} checkpoint(s); learning dynamics need per-epoch snapshots "
                   "(train with checkpoint_every=1, keep_checkpoints=0)")
            log.info("learning dynamics skipped: %s", why)
            return why
    log.info("%s: learning dynamics", rd)
    try:
        dyn.write_dynamics(rd, out, data_dir=data_dir, **options)
    except (dyn.DynamicsError, data_lib.DataError, config_lib.ConfigError) as e:
        if required:
            raise
        log.warning("learning dynamics skipped: %s", e)
        return str(e)
    return None


# ------------------------------------------------ optimal vs suboptimal: claims, figures, report

CLAIM_LEVELS = ("layer", "network")  # distances of whole layers and of the whole network test the claim


def _claim_inputs(table: pd.DataFrame) -> pd.DataFrame:
    """Per-layer and whole-network rows of a statistics table, without histogram bins."""
    t = table[~table.statistic.astype(str).str.startswith("hist_")]
    leaves = t.layer.astype(str).str.endswith(("/kernel", "/bias", "/scale", "/embedding"))
    return t[~leaves]


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]


def zoo_summary(params, table: pd.DataFrame, last: pd.DataFrame, out: Path, *, metrics: Sequence[str] | None = None,
                block_size: int = 64, quantile: float = 0.25, threshold=None, min_accuracy: float | None = None,
                bins=4, n_permutations: int = 2000,
                n_boot: int = 1000, alpha: float = 0.05, folds: int = 5, seed: int = 0,
                name: str = "") -> tuple[dict, dict]:
    """Tests the optimal-vs-suboptimal claims on one zoo and draws its figures into `out/figures/`.

    Args:
      params: stacked parameters of the zoo (networks axis first).
      table: its statistics table (as `analyze_params` returns).
      metrics: distance metrics for the claim (default `DEFAULT_METRICS`), computed per layer and for
        the whole network over the non-diverged networks only (a diverged network's huge weights would
        stretch the shared histogram and KDE ranges of the others).
      last: the last epoch's metrics, one row per network (test_acc, diverged, hyperparameters).
      out: the zoo's analysis folder (tables go there, figures under ``figures/``).
      quantile, threshold: grouping (`claims.split_groups`); bins: accuracy bins (`claims.accuracy_bins`).
      min_accuracy: also leave out networks below this accuracy (e.g. 0.2: at chance on 10 classes),
        counted apart from the diverged ones.
      n_permutations, n_boot, alpha, folds, seed: test and prediction options.

    Returns:
      (summary, figures): the numbers (JSON-able) and ``{figure name: PNG path}``.
    """
    from jaxweights import claims, figures
    last = last.sort_values("network").reset_index(drop=True)
    acc = last.test_acc.to_numpy(np.float64)
    if len(acc) != len(next(iter(stats.flatten(params).values()))):
        raise AnalysisError(f"{out}: metrics.csv has {len(acc)} networks but params.npz has a different number")
    diverged = claims.diverged_mask(acc, last.get("diverged"), params)
    below = ~diverged & (acc < min_accuracy) if min_accuracy is not None else np.zeros(len(acc), bool)
    excluded = diverged | below
    labels = claims.split_groups(acc, quantile=quantile, threshold=threshold, exclude=excluded)
    bins_n, edges = claims.accuracy_bins(acc, bins, exclude=excluded)
    keep = ~excluded
    summary: dict = {"zoo": name, "n_networks": int(len(acc)), "n_diverged": int(diverged.sum()),
                     "n_below_min_accuracy": int(below.sum()), "n_kept": int(keep.sum()), "alpha": alpha}
    summary["grouping"] = {
        "rule": f"threshold {threshold}" if threshold is not None else f"top/bottom {quantile:.0%} by rank",
        "quantile": None if threshold is not None else quantile, "threshold": threshold,
        "min_accuracy": min_accuracy,
        "n_optimal": int((labels == claims.OPTIMAL).sum()), "n_suboptimal": int((labels == claims.SUBOPTIMAL).sum()),
        "optimal_acc": [acc[labels == claims.OPTIMAL].min(), acc[labels == claims.OPTIMAL].max()],
        "suboptimal_acc": [acc[labels == claims.SUBOPTIMAL].min(), acc[labels == claims.SUBOPTIMAL].max()],
        "bin_edges": list(edges), "bin_counts": np.bincount(bins_n[bins_n >= 0], minlength=len(edges) - 1).tolist()}
    groups_df = last[[c for c in ("network", "seed", "learning_rate", "init_scale", "test_acc", "diverged")
                      if c in last]]
    groups_df = groups_df.assign(group=[claims.GROUP_NAMES[int(v)] if not below[i] else "below_min_accuracy"
                                        for i, v in enumerate(labels)], accuracy_bin=bins_n)
    rundir.write_csv(out / "groups.csv", groups_df)

    # The central claim: within / across distances, permutation tests, bootstrap intervals.
    kp = {k: np.asarray(v)[keep] for k, v in stats.flatten(params).items()}
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    dists = distances.compute(kp, metrics=chosen, per=CLAIM_LEVELS, block_size=block_size)
    ct = claims.claim_table(dists, labels[keep], n_permutations=n_permutations, n_boot=n_boot, alpha=alpha,
                            seed=seed)
    rundir.write_csv(out / "claim_tests.csv", ct)
    primary = "wasserstein" if "wasserstein" in dists else next(iter(dists))
    whole = ct[ct.layer == stats.ALL]
    top = whole[whole.metric == primary]
    top = top.iloc[0] if len(top) else ct[ct.metric == primary].iloc[0]
    summary["claim"] = {
        "primary_metric": primary, "verdict": top.verdict, "within_optimal": top.within_optimal,
        "within_suboptimal": top.within_suboptimal, "across": top.across, "ratio": top.ratio,
        "p_greater": top.p_greater, "p_less": top.p_less, "exact": bool(top.exact), "ci": [top.ci_low, top.ci_high],
        "n_tests": int(len(ct)), "n_holds": int((ct.verdict == "holds").sum()),
        "n_reversed": int((ct.verdict == "reversed").sum()),
        "whole_network": _records(whole), "per_layer": _records(ct[ct.layer != stats.ALL])}

    # Dispersion and correlation of every per-layer / whole-network statistic.
    t = _claim_inputs(table)
    disp = claims.dispersion(t, labels, n_permutations=n_permutations, seed=seed, alpha=alpha)
    rundir.write_csv(out / "dispersion.csv", disp)
    nh, nr = int((disp.verdict == "holds").sum()), int((disp.verdict == "reversed").sum())
    larger = int((disp.ratio > 1).sum())
    summary["dispersion"] = {
        "n_statistics": int(len(disp)), "n_larger_suboptimal": larger, "n_holds": nh, "n_reversed": nr,
        "verdict": "holds" if nh > nr and larger > len(disp) / 2 else "reversed" if nr > nh and larger < len(disp) / 2
        else "not significant", "whole_network": _records(disp[disp.layer == stats.ALL])}
    corr = claims.correlations(t, acc, exclude=excluded)
    rundir.write_csv(out / "correlations.csv", corr)
    strongest = corr.dropna().reindex(corr.dropna().rho.abs().sort_values(ascending=False).index).head(15)
    summary["correlation"] = {"n_tests": int(corr.rho.notna().sum()),
                              "n_significant": int((corr.p_value < alpha).sum()), "strongest": _records(strongest)}

    # Predicting accuracy from weights (Unterthiner et al. 2020) vs hyperparameters alone.
    wn, wx = claims.weight_features(params)
    hn, hx = claims.hyperparameter_features(last)
    feats = {"weights": (wn, wx[keep]), "hyperparameters": (hn, hx[keep])}
    pred: dict = {"folds": min(folds, int(keep.sum()))}
    if keep.sum() >= max(folds, 6):
        scores, preds = claims.predict_accuracy(feats, acc[keep], folds=folds, seed=seed)
        preds.insert(0, "network", np.flatnonzero(keep))
        rundir.write_csv(out / "prediction_scores.csv", scores)
        rundir.write_csv(out / "predictions.csv", preds.drop(columns="row"))
        pred["scores"] = _records(scores)
        w = scores[scores.features == "weights"]
        h = scores[scores.features == "hyperparameters"]
        bw = w.loc[w.r2.idxmax()]
        pred["best_weights_r2"], pred["best_weights_tau"] = bw.r2, bw.kendall_tau
        pred["best_hyperparameters_r2"] = h.r2.max() if len(h) else None
        better = not len(h) or bw.r2 > h.r2.max()
        pred["verdict"] = (f"weight statistics predict held-out accuracy with R² {bw.r2:.3f}, Kendall τ "
                           f"{bw.kendall_tau:.3f} ({bw.model})" +
                           (f", {'better' if better else 'no better'} than hyperparameters alone "
                            f"(R² {h.r2.max():.3f})" if len(h) else ""))
    else:
        pred.update(scores=[], verdict="not computed",
                    note=f"{int(keep.sum())} non-diverged networks: too few for {folds}-fold prediction")
    summary["prediction"] = pred

    # Accuracy bins: node strength and layer fluctuation distributions (La Malfa et al. 2021).
    mats, brows = {}, []
    try:
        ns = strength.node_strength(params)
        fl = _claim_inputs(table)
        fl = fl[fl.statistic == "layer_fluctuation"].pivot(index="network", columns="layer", values="value")
        for layer, s in ns.items():
            mats[f"strength · {layer}"] = claims.bin_divergence(s, bins_n, seed=seed)
            if layer in fl:
                mats[f"fluctuation · {layer}"] = claims.bin_divergence(fl[layer].reindex(range(len(acc))).to_numpy(),
                                                                       bins_n, seed=seed)
        for q, m in mats.items():
            adj = [m[i, i + 1] for i in range(len(m) - 1)]
            brows.append({"quantity": q, "adjacent_mean": float(np.nanmean(adj)) if np.isfinite(adj).any() else None,
                          "lowest_vs_highest": m[0, -1] if len(m) > 1 else None})
        bd = {"table": brows}
        np.savez(out / "bin_divergence.npz", **{k.replace(" · ", "__"): v for k, v in mats.items()})
    except ValueError as e:  # no chain of dense/conv layers (e.g. ViT)
        bd = {"table": [], "note": f"node strength not defined for this model: {e}"}
    summary["bin_divergence"] = bd

    # Figures (PNG + the CSV behind each).
    fd = out / "figures"
    figs: dict[str, Path] = {}
    a_plot = np.where(keep, acc, np.nan)
    figs["weight_histograms"] = figures.weight_histograms(fd, kp, acc[keep])
    figs["kde_by_bin"] = figures.kde_by_bin(fd, kp, bins_n[keep], edges)
    d_all = dists[primary].get(stats.ALL, next(iter(dists[primary].values())))
    figs["distance_heatmap"] = figures.distance_heatmap(fd, d_all, acc[keep],
                                                        title=f"{primary} distance, whole network, best first")
    figs["statistics_vs_accuracy"] = figures.statistics_vs_accuracy(fd, t, a_plot, labels)
    wide = claims.wide_statistics(t[t.statistic.isin(stats.SUMMARY) | t.statistic.str.startswith("q")])
    wide = wide.reindex(range(len(acc)))
    figs["pca"] = figures.pca_of_statistics(fd, [f"{a}:{b}" for a, b in wide.columns],
                                            wide.to_numpy(np.float64)[keep], acc[keep])
    if mats:
        figs["bin_divergence"] = figures.bin_divergence_heatmaps(fd, mats, edges)
    figs["weight_matrices"] = figures.weight_matrices(fd, params, a_plot)
    if "epochs" in last.attrs:
        figs["accuracy_over_epochs"] = figures.accuracy_over_epochs(fd, last.attrs["epochs"])
    summary["figures"] = {k: str(v.relative_to(out)) for k, v in figs.items()}
    return summary, figs


def _check_grouping(runs, options) -> None:
    from jaxweights import claims
    for _, rd in runs:
        if (rd / "metrics.csv").exists():
            m = pd.read_csv(rd / "metrics.csv")
            last = m[m.epoch == m.epoch.max()].sort_values("network")
            excluded = claims.diverged_mask(last.test_acc, last.get("diverged"))
            if options.get("min_accuracy") is not None:
                excluded |= last.test_acc.to_numpy() < options["min_accuracy"]
            claims.split_groups(last.test_acc, quantile=options.get("quantile", 0.25),
                                threshold=options.get("threshold"), exclude=excluded)


def report_workdir(workdir: Path, out: Path, runs, *, extra_sections=(), dynamics_notes=None, **options) -> Path:
    """Runs `zoo_summary` on every group of an analysed run and writes report.html + summary.json to `out`.

    Groups whose learning dynamics were written (`dynamics.json`) get their sections and a
    `dynamics` entry in the summary; `dynamics_notes` (group -> why they were skipped) are recorded.
    """
    from jaxweights import claims, dynamics, figures, report
    dynamics_notes = dynamics_notes or {}
    sections, summaries, tables = [], {}, {}
    for name, rd in runs:
        zout = out / "groups" / name if name else out
        params = rundir.load_params(rd / "params.npz")
        table = pd.read_csv(zout / "stats.csv")
        m = pd.read_csv(rd / "metrics.csv")
        last = m[m.epoch == m.epoch.max()].reset_index(drop=True)
        last.attrs["epochs"] = m
        s, figs = zoo_summary(params, table, last, zout, name=name, **options)
        summaries[name or "zoo"] = s
        tables[name or "zoo"] = pd.read_csv(zout / "claim_tests.csv")
        sections += report.zoo_sections(s, figs, prefix=f"group {name}" if name else "")
        if (zout / "dynamics.json").exists():
            s["dynamics"] = rundir.read_config(zout / "dynamics.json")
            sections += dynamics.report_sections(zout, prefix=f"group {name}" if name else "")
        elif name in dynamics_notes:
            s["dynamics"] = {"skipped": dynamics_notes[name]}
    summary = summaries.get("zoo") or {"groups": summaries}
    if len(runs) > 1:  # static groups (e.g. several architectures): same pattern across them?
        metric = next(iter(summaries.values()))["claim"]["primary_metric"]
        prof = claims.depth_profiles(tables, metric)
        cmp = claims.same_pattern({k: v["claim"]["verdict"] for k, v in summaries.items()}, prof)
        fig = figures.depth_profile(out / "figures", prof)
        summary["comparison"] = {**cmp, "metric": metric, "profiles": _records(prof)}
        sections.append(report.Section(
            "Across groups: the same pattern?",
            f"<p>Whole-network verdicts: {', '.join(f'{k}: {v}' for k, v in cmp['verdicts'].items())}; "
            f"same verdict: {cmp['same_verdict']}; same depth trend of the distance ratio: {cmp['same_trend']}.</p>",
            [fig]))
    ctx = {"workdir": workdir, "analysis_dir": out, "summary": summary, "zoo": None}
    sections += report.provided_sections(ctx, extra_sections)
    return report.write(out, f"jaxweights analysis of {workdir.name}", sections, summary)
