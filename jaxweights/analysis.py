"""`analyze_workdir(workdir)`: statistics, node strength and distances of a trained zoo.

Reads the final parameters of every network (`params.npz`, networks axis first) and writes
`<workdir>/analysis/`:

    stats.csv                 network, layer, statistic, value, undefined (per leaf, per layer
                              and "__all__" for the whole network; layer fluctuation included)
    node_strength.npz         one (N, nodes) array per layer ("input" first)
    distances/<metric>.npz    one N×N array per layer for every distance metric
    networks.csv              the last epoch's metrics of each network (accuracy, diverged, ...)
    groups.csv, claim_tests.csv, seed_dispersion_cells.csv, sensitivity.csv, dispersion.csv,
    correlations.csv, prediction_scores.csv, predictions.csv, bin_divergence.npz,
    figures/*.png (+ the CSV behind each),
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from jaxweights import distances, rundir, stats, strength
from jaxweights.groups import OPTIMAL

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
    groups = (
        sorted(p for p in (workdir / "groups").glob("*") if (p / "params.npz").exists())
        if (workdir / "groups").is_dir()
        else []
    )
    if not groups:
        raise AnalysisError(f"{workdir}: no params.npz (is this a finished `jaxweights train` run directory?)")
    return [(p.name, p) for p in groups]


def analyze_params(
    params,
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    layers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Writes stats.csv, node_strength.npz and distances/ for stacked `params` into `out`.

    `layers` sets the chain order of kernel layers for node strength (default: the params' order,
    which is the execution order for a run's `params.npz`; names are never sorted).
    With several devices, statistics and distances run with the networks axis split over all of
    them (`train.networks_mesh`).
    """
    mesh = None
    if jax.device_count() > 1:  # the networks axis split over every device (same numbers as one device)
        from jaxweights import train

        mesh = train.networks_mesh()
        log.info("statistics and distances sharded over %d devices", mesh.size)
    with _quiet_undefined():
        table = stats.compute_statistics(params, per=("leaf", "layer", "network"), mesh=mesh)
    why = undefined_summary(table, params)
    if why:
        log.warning("%s", why)
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
    with _quiet_undefined() as f:
        distances.write(str(out), distances.compute(params, metrics=chosen, block_size=block_size, mesh=mesh))
    if f.dropped:
        log.warning(
            "statistic-vector distances (euclidean, cosine): %d (metric, layer, statistic) columns dropped "
            "because some network's statistic is undefined (the networks above)",
            f.dropped,
        )
    return table


class _DropUndefined(logging.Filter):
    """Drops (and counts) the per-(layer, statistic) "undefined" lines; the caller says it once."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record):
        msg = str(record.msg)
        drop = msg.startswith("statistic %r undefined") or msg.startswith("%s distance: statistic %r undefined")
        self.dropped += drop
        return not drop


class _quiet_undefined:
    """Silences the one warning per undefined (layer, statistic) of `stats` and `distances`."""

    def __enter__(self):
        self.f = _DropUndefined()
        for name in (stats.__name__, distances.__name__):
            logging.getLogger(name).addFilter(self.f)
        return self.f

    def __exit__(self, *exc):
        for name in (stats.__name__, distances.__name__):
            logging.getLogger(name).removeFilter(self.f)


# |w|**4 (the fourth moment behind kurtosis) overflows float32 above this.
# moments are computed on rescaled weights (jaxweights.stats) and never overflow; a float32 *sum* such as
# `l1` of a large layer can, once |w| reaches about float32 max / 1e8
_F32_SUM_RISK = float(np.finfo(np.float32).max) / 1e8


def undefined_reasons(table: pd.DataFrame, params) -> pd.DataFrame:
    """Why each network with undefined (NaN) statistics has them: one row per such network.

    Columns: network, n_undefined, max_abs_weight, reason, one of "non-finite weights",
    "float32 overflow" (finite weights so large, max |w| above ~3.4e30, that a float32 sum over a
    layer such as `l1` can overflow), "zero variance or all-zero kernel" (scipy's criterion, see
    `jaxweights.stats`).
    """
    bad = table[table.undefined.astype(bool)].groupby("network").size()
    if bad.empty:
        return pd.DataFrame(columns=["network", "n_undefined", "max_abs_weight", "reason"])
    flat = stats.flatten(params)
    n = len(next(iter(flat.values())))
    finite = np.ones(n, bool)
    top = np.zeros(n)
    small = True
    for w in flat.values():
        w = np.asarray(w).reshape(n, -1)
        small &= w.dtype.itemsize <= 4
        ok = np.isfinite(w)
        finite &= ok.all(1)
        top = np.maximum(top, np.where(ok, np.abs(w.astype(np.float64)), 0).max(1, initial=0))
    nets = bad.index.to_numpy()
    reason = np.where(
        ~finite[nets],
        "non-finite weights",
        np.where(small & (top[nets] > _F32_SUM_RISK), "float32 overflow", "zero variance or all-zero kernel"),
    )
    return pd.DataFrame({"network": nets, "n_undefined": bad.to_numpy(), "max_abs_weight": top[nets], "reason": reason})


def undefined_summary(table: pd.DataFrame, params) -> str:
    """One line naming how many statistics are undefined, in which networks and why ("" if none)."""
    r = undefined_reasons(table, params)
    if r.empty:
        return ""
    parts = []
    for why, g in r.groupby("reason", sort=False):
        nets = ", ".join(map(str, g.network.head(8))) + (", ..." if len(g) > 8 else "")
        extra = f", max |w| up to {g.max_abs_weight.max():.3g}" if why == "float32 overflow" else ""
        parts.append(f"{len(g)} network(s) with {why} ({nets}{extra})")
    return (
        f"{int(r.n_undefined.sum())} statistic values undefined (NaN, column `undefined` of stats.csv) in "
        + "; ".join(parts)
    )


def analyze_workdir(
    workdir: str | os.PathLike,
    *,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    report: bool = True,
    extra_sections=(),
    dynamics: bool | None = None,
    data_dir: str | None = None,
    dynamics_options: Mapping[str, Any] | None = None,
    model: Any = None,
    **claim_options,
) -> Path:
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
        claim_options = _check_grouping(runs, claim_options)
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
                masks = {}
                g = None
                if (rd / "metrics.csv").exists():  # the one definition of optimal (`groups.split_groups`)
                    from jaxweights.groups import ClaimError

                    try:
                        g = run_groups(rd, params, claim_options)
                    except ClaimError as e:  # only without the report (it refuses this before)
                        log.warning("learning dynamics: no optimal group (%s); every analysed network counts", e)
                if g is not None:
                    left = g.state[~g.analysed].value_counts()
                    q = claim_options.get("threshold")
                    rule = (
                        f"test accuracy >= {q if np.ndim(q) == 0 else q[1]}"
                        if q is not None
                        else f"top {claim_options.get('quantile', 0.25):.0%} of the analysed networks by test accuracy"
                    )
                    masks = {
                        "optimal_N": (g.label == OPTIMAL).to_numpy(),
                        "exclude_N": ~g.analysed.to_numpy(bool),
                        "optimal_rule": rule
                        + (
                            " (left out: " + ", ".join(f"{n} {st}" for st, n in left.items()) + ")" if len(left) else ""
                        ),
                    }
                skipped = _dynamics(
                    rd, out, dynamics is True, data_dir, {"model": model, **masks, **(dynamics_options or {})}
                )
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
            report_workdir(
                workdir,
                tmp,
                runs,
                extra_sections=extra_sections,
                metrics=metrics,
                block_size=block_size,
                dynamics_notes=notes,
                **claim_options,
            )
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
            why = (
                f"{dirs[0] / 'checkpoints'}: {kept} checkpoint(s); learning dynamics need per-epoch snapshots "
                "(train with checkpoint_every=1, keep_checkpoints=0)"
            )
            log.info("learning dynamics skipped: %s", why)
            return why
    log.info("%s: learning dynamics", rd)
    try:
        with _quiet_undefined() as f:
            dyn.write_dynamics(rd, out, data_dir=data_dir, **options)
        if f.dropped:
            log.warning(
                "learning dynamics: %d (checkpoint, layer, statistic) warnings of undefined statistics "
                "folded into this line (stats_over_epochs.csv, column `undefined`)",
                f.dropped,
            )
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


# Runs whose metrics.csv has no `exploded` column (older runs, imported weights) are judged by
# training's loss rule (test loss above EXPLODED_LOSS_FACTOR · ln(classes), i.e. ten times a uniform
# guess's loss) and, since they do not record their initialisation (training compares max |w| with
# 100 × the network's initial max |w|), by an absolute weight bound far above any initialisation.
EXPLODED_LOSS_FACTOR = 10.0
EXPLODED_MAX_ABS_WEIGHT = 1e4


def exploded_fallback(last: pd.DataFrame, params, num_classes: int = 10) -> np.ndarray:
    """(N,) `exploded` flags: the run's column when present, else test loss > 10·ln(classes) or max |w| > 1e4."""
    if "exploded" in last:
        return last.exploded.fillna(False).to_numpy(bool)
    with np.errstate(invalid="ignore"):
        big = _max_abs_weight(last, params) > EXPLODED_MAX_ABS_WEIGHT
        if "test_loss" in last:
            big |= last.test_loss.to_numpy(np.float64) > EXPLODED_LOSS_FACTOR * np.log(num_classes)
    return big


def _max_abs_weight(last: pd.DataFrame, params) -> np.ndarray:
    if "max_abs_weight" in last:
        return last.max_abs_weight.to_numpy(np.float64)
    top = None
    for w in stats.flatten(params).values():
        w = np.abs(np.asarray(w, np.float64).reshape(len(last), -1))
        m = np.where(np.isfinite(w), w, np.inf).max(1, initial=0)
        top = m if top is None else np.maximum(top, m)
    return top


def network_groups(
    last: pd.DataFrame,
    params,
    *,
    quantile: float = 0.25,
    threshold=None,
    min_accuracy: float | None = None,
    include_exploded: bool = False,
    include_not_learned: bool = False,
    num_classes: int = 10,
    chance_margin: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """The state, reason and group of every network: one row per network, in network order.

    States come from `groups.network_states` (diverged > exploded > not_learned > ok); diverged
    networks are always left out, exploded and not-learned ones unless `include_exploded` /
    `include_not_learned`; `min_accuracy` also leaves out otherwise kept networks below it
    ("below_min_accuracy"). The analysed networks are split by `groups.split_groups`.

    Returns:
      DataFrame: network, seed and hyperparameter columns, test_acc, test_loss, max_abs_weight, cell,
      state, analysed (bool), why (empty for analysed networks), label (OPTIMAL ... EXCLUDED), group.
    """
    from jaxweights import groups as G

    last = last.sort_values("network").reset_index(drop=True)
    acc = last.test_acc.to_numpy(np.float64)
    top = _max_abs_weight(last, params)
    state = G.network_states(
        acc,
        diverged_N=last.get("diverged"),
        exploded_N=exploded_fallback(last, params, num_classes),
        params=params,
        num_classes=num_classes,
        chance_margin=chance_margin,
    )
    out = last[
        [
            c
            for c in last.columns
            if c not in ("epoch", "train_loss", "train_acc", "diverged", "exploded", "max_abs_weight")
        ]
    ].copy()
    out["max_abs_weight"] = top
    out["cell"] = G.hyperparameter_cells(last)
    out["state"] = state
    chance = G.chance_accuracy(num_classes)
    loss = last.test_loss.to_numpy(np.float64) if "test_loss" in last else np.full(len(acc), np.nan)
    why = np.full(len(acc), "", dtype=object)
    for i, st in enumerate(state):
        if st == "diverged":
            why[i] = (
                "flagged diverged in training"
                if bool(last.get("diverged", pd.Series(False, last.index))[i])
                else "non-finite weights or accuracy"
            )
        elif st == "exploded":
            why[i] = f"exploded: max |w| {top[i]:.3g}, test loss {loss[i]:.3g}"
        elif st == "not_learned":
            why[i] = f"accuracy {acc[i]:.3f} < chance {chance:.3g} + margin {chance_margin:g}"
    excluded = (
        (state == "diverged")
        | ((state == "exploded") & (not include_exploded))
        | ((state == "not_learned") & (not include_not_learned))
    )
    if min_accuracy is not None:
        below = ~excluded & (acc < min_accuracy)
        out.loc[below, "state"] = np.where(state[below] == "ok", "below_min_accuracy", state[below])
        why[below] = [f"accuracy {a:.3f} < --min_accuracy {min_accuracy:g}" for a in acc[below]]
        excluded |= below
    why[~excluded] = ""
    out["analysed"] = ~excluded
    out["why"] = why
    labels = G.split_groups(acc, quantile=quantile, threshold=threshold, exclude=excluded, seed=seed)
    out["label"] = labels
    out["group"] = [st if ex else G.GROUP_NAMES[int(v)] for v, ex, st in zip(labels, excluded, out.state)]
    return out


def zoo_summary(
    params,
    table: pd.DataFrame,
    last: pd.DataFrame,
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    quantile: float = 0.25,
    threshold=None,
    min_accuracy: float | None = None,
    include_exploded: bool = False,
    include_not_learned: bool = False,
    num_classes: int = 10,
    chance_margin: float = 0.05,
    grouping_note: str | None = None,
    bins=4,
    n_permutations: int = 2000,
    n_boot: int = 1000,
    alpha: float = 0.05,
    folds: int = 5,
    seed: int = 0,
    name: str = "",
) -> tuple[dict, dict]:
    """Tests the optimal-vs-suboptimal claims on one zoo and draws its figures into `out/figures/`.

    Args:
      params: stacked parameters of the zoo (networks axis first).
      table: its statistics table (as `analyze_params` returns).
      metrics: distance metrics for the claim (default `DEFAULT_METRICS`), computed per layer and for
        the whole network over the analysed networks only.
      last: the last epoch's metrics, one row per network (test_acc, diverged, hyperparameters).
      out: the zoo's analysis folder (tables go there, figures under ``figures/``).
      quantile, threshold: grouping (`groups.split_groups`); bins: accuracy bins (`claims.accuracy_bins`).
      min_accuracy, include_exploded, include_not_learned, num_classes, chance_margin: which networks
        are analysed (`network_groups`).
      n_permutations, n_boot, alpha, folds, seed: test and prediction options.

    Returns:
      (summary, figures): the numbers (JSON-able) and ``{figure name: PNG path}``.
    """
    from jaxweights import claims, figures

    last = last.sort_values("network").reset_index(drop=True)
    acc = last.test_acc.to_numpy(np.float64)
    if len(acc) != len(next(iter(stats.flatten(params).values()))):
        raise AnalysisError(f"{out}: metrics.csv has {len(acc)} networks but params.npz has a different number")
    choice = dict(
        quantile=quantile,
        threshold=threshold,
        min_accuracy=min_accuracy,
        include_exploded=include_exploded,
        include_not_learned=include_not_learned,
        num_classes=num_classes,
        chance_margin=chance_margin,
        seed=seed,
    )
    gt = network_groups(last, params, **choice)
    labels = gt.label.to_numpy()
    state = gt.state.to_numpy()
    excluded = ~gt.analysed.to_numpy(bool)
    bins_n, edges = claims.accuracy_bins(acc, bins, exclude=excluded)
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
        "min_accuracy": min_accuracy,
        "include_exploded": include_exploded,
        "include_not_learned": include_not_learned,
        "chance_accuracy": 1 / num_classes,
        "chance_margin": chance_margin,
        "note": grouping_note,
        "n_optimal": int((labels == claims.OPTIMAL).sum()),
        "n_suboptimal": int((labels == claims.SUBOPTIMAL).sum()),
        "optimal_acc": [acc[labels == claims.OPTIMAL].min(), acc[labels == claims.OPTIMAL].max()],
        "suboptimal_acc": [acc[labels == claims.SUBOPTIMAL].min(), acc[labels == claims.SUBOPTIMAL].max()],
        "n_cells": int(len(np.unique(cells[keep]))),
        "bin_edges": list(edges),
        "bin_counts": np.bincount(bins_n[bins_n >= 0], minlength=len(edges) - 1).tolist(),
    }
    listed = gt[(state != "ok") | excluded]
    summary["excluded"] = _records(listed.drop(columns=["label", "cell"]))
    rundir.write_csv(out / "groups.csv", gt.drop(columns="label").assign(accuracy_bin=bins_n))

    # The central claim: within / across distances, permutation tests (networks exchangeable, and
    # whole hyperparameter cells exchangeable), bootstrap intervals, adjusted p-values.
    kp = {k: np.asarray(v)[keep] for k, v in stats.flatten(params).items()}
    chosen = list(metrics) if metrics else list(DEFAULT_METRICS)
    with _quiet_undefined() as f:
        dists = distances.compute(kp, metrics=chosen, per=CLAIM_LEVELS, block_size=block_size)
    if f.dropped:
        log.warning("claim distances: %d statistic columns dropped (undefined in an analysed network)", f.dropped)
    ct = claims.claim_table(dists, labels[keep], n_permutations=n_permutations, n_boot=n_boot, alpha=alpha, seed=seed)
    ct, grid_notes = _with_grid_tests(
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
    rundir.write_csv(out / "claim_tests.csv", ct)
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
        "whole_network": _records(whole),
        "per_layer": _records(ct[ct.layer != stats.ALL]),
    }
    summary["seed_dispersion"] = {k: top[v] for k, v in SEED_COLUMNS.items() if v in top}
    _headline_verdicts(summary, top, alpha)
    summary["sensitivity"] = sensitivity(
        params, last, keep, primary, choice=choice, n_permutations=n_permutations, alpha=alpha, block_size=block_size
    )
    rundir.write_csv(out / "sensitivity.csv", pd.DataFrame(summary["sensitivity"]))

    # Dispersion and correlation of every per-layer / whole-network statistic.
    t = _claim_inputs(table)
    disp = claims.dispersion(t, labels, n_permutations=n_permutations, seed=seed, alpha=alpha)
    rundir.write_csv(out / "dispersion.csv", disp)
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
        "whole_network": _records(disp[disp.layer == stats.ALL]),
    }
    corr = claims.correlations(t, acc, exclude=excluded)
    rundir.write_csv(out / "correlations.csv", corr)
    strongest = corr.dropna().reindex(corr.dropna().rho.abs().sort_values(ascending=False).index).head(15)
    summary["correlation"] = {
        "n_tests": int(corr.rho.notna().sum()),
        "n_significant": int((corr.p_holm < alpha).sum()),
        "n_significant_bh": int((corr.p_bh < alpha).sum()),
        "n_significant_raw": int((corr.p_value < alpha).sum()),
        "strongest": _records(strongest),
    }

    # Predicting accuracy from weights (Unterthiner et al. 2020) vs hyperparameters alone.
    wn, wx = claims.weight_features(params)
    hn, hx = claims.hyperparameter_features(last)
    feats = {"weights": (wn, wx[keep]), "hyperparameters": (hn, hx[keep])}
    pred: dict = {"folds": min(folds, int(keep.sum()))}
    if keep.sum() >= max(folds, 6):
        scores, preds = claims.predict_accuracy(feats, acc[keep], folds=folds, seed=seed, groups_N=cells[keep])
        preds.insert(0, "network", np.flatnonzero(keep))
        pred["folds"], pred["grouped_by"] = int(preds.fold.max()) + 1, "hyperparameter cell"
        rundir.write_csv(out / "prediction_scores.csv", scores)
        rundir.write_csv(out / "predictions.csv", preds.drop(columns="row"))
        pred["scores"] = _records(scores)
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
        fl = _claim_inputs(table)
        fl = fl[fl.statistic == "layer_fluctuation"].pivot(index="network", columns="layer", values="value")
        for layer, s in ns.items():
            mats[f"strength · {layer}"] = claims.bin_divergence(s, bins_n, seed=seed)
            if layer in fl:
                mats[f"fluctuation · {layer}"] = claims.bin_divergence(
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

    # Figures (PNG + the CSV behind each).
    fd = out / "figures"
    figs: dict[str, Path] = {}
    a_plot = np.where(keep, acc, np.nan)
    figs["weight_histograms"] = figures.weight_histograms(fd, kp, acc[keep], networks=np.flatnonzero(keep))
    figs["kde_by_bin"] = figures.kde_by_bin(fd, kp, bins_n[keep], edges)
    d_all = dists[primary].get(stats.ALL, next(iter(dists[primary].values())))
    figs["distance_heatmap"] = figures.distance_heatmap(
        fd, d_all, acc[keep], networks=np.flatnonzero(keep), title=f"{primary} distance, whole network, best first"
    )
    figs["statistics_vs_accuracy"] = figures.statistics_vs_accuracy(fd, t, a_plot, labels)
    wide = claims.wide_statistics(t[t.statistic.isin(stats.SUMMARY) | t.statistic.str.startswith("q")])
    wide = wide.reindex(range(len(acc)))
    figs["pca"] = figures.pca_of_statistics(
        fd, [f"{a}:{b}" for a, b in wide.columns], wide.to_numpy(np.float64)[keep], acc[keep]
    )
    if mats:
        figs["bin_divergence"] = figures.bin_divergence_heatmaps(fd, mats, edges)
    figs["weight_matrices"] = figures.weight_matrices(fd, params, a_plot)
    if "epochs" in last.attrs:
        figs["accuracy_over_epochs"] = figures.accuracy_over_epochs(
            fd, last.attrs["epochs"], states=gt.set_index("network").group
        )
    summary["figures"] = {k: str(v.relative_to(out)) for k, v in figs.items()}
    return summary, figs


# claim_tests.csv columns of the grid-respecting tests, joined on (metric, layer): the cell-level
# permutation test (`claims.cell_claim_table`) and the seed dispersion (`claims.seed_dispersion_table`).
CELL_COLUMNS = {
    "within_optimal": "within_optimal_cells",
    "within_suboptimal": "within_suboptimal_cells",
    "p_value": "p_cell",
    "p_holm": "p_cell_holm",
    "p_bh": "p_cell_bh",
    "verdict": "verdict_cell",
    "n_optimal_cells": "n_optimal_cells",
    "n_suboptimal_cells": "n_suboptimal_cells",
    "exact": "exact_cell",
    "n_permutations": "n_permutations_cell",
}
SEED_COLUMNS = {
    "n_cells": "seed_n_cells",
    "rho": "seed_rho",
    "p_value": "seed_p",
    "p_holm": "seed_p_holm",
    "p_bh": "seed_p_bh",
    "verdict": "verdict_seed",
}
HEADLINE_COLUMNS = ("p_value", "p_holm", "p_bh", *CELL_COLUMNS.values())


def _with_grid_tests(
    ct: pd.DataFrame, dists, acc_n, cells_n, *, quantile: float, n_permutations: int, alpha: float, seed: int, out: Path
) -> tuple[pd.DataFrame, list[str]]:
    """`ct` with the cell-level test and the seed dispersion of each (metric, layer) beside it.

    Each family (network-level, cell-level, seed dispersion) is Holm/BH-adjusted over its own rows
    (`claims.adjust_table`). Also writes seed_dispersion_cells.csv (one row per metric, layer, cell).
    """
    from jaxweights import claims

    notes = []
    cc = claims.cell_claim_table(
        dists, acc_n, cells_n, quantile=quantile, n_permutations=n_permutations, alpha=alpha, seed=seed
    )
    if cc.attrs.get("skipped"):
        notes.append(cc.attrs["skipped"])
    sd, sd_cells = claims.seed_dispersion_table(dists, acc_n, cells_n, alpha=alpha)
    rundir.write_csv(out / "seed_dispersion_cells.csv", sd_cells)
    if not sd.empty and sd.rho.isna().all():
        notes.append(
            "seed dispersion not computed: it needs at least 3 hyperparameter cells with 2 or more analysed seeds"
        )
    key = ["metric", "layer"]
    for t, names in ((cc, CELL_COLUMNS), (sd, SEED_COLUMNS)):
        have = {k: v for k, v in names.items() if k in t}
        if not t.empty:
            ct = ct.merge(t[key + list(have)].rename(columns=have), on=key, how="left")
    return ct, notes


SENSITIVITY_QUANTILES = (0.25, 0.5)


def sensitivity(
    params,
    last: pd.DataFrame,
    keep_N,
    metric: str,
    *,
    choice: Mapping[str, Any],
    n_permutations: int = 2000,
    alpha: float = 0.05,
    block_size: int = 64,
) -> list[dict]:
    """The headline test (whole network, `metric`) under the other reasonable groupings.

    Rows: quantile 0.25 and 0.5 × not-learned networks excluded / included × exploded networks
    excluded / included (diverged ones are always out; `--min_accuracy` and a threshold apply only to
    the grouping in force, flagged ``in_force``). Each row: the networks analysed, group sizes,
    within-group mean distances, the two-sided network-level permutation p (networks exchangeable),
    the cell-level one (whole hyperparameter cells exchangeable, `claims.cell_permutation_test`), the
    verdicts at `alpha` (each row is one pre-specified test: no multiplicity adjustment), or why that
    grouping cannot be tested.

    Distances are the whole-network ones over every non-diverged network, computed once; each row
    uses the rows and columns of its networks (exact for distances of two networks alone:
    Wasserstein, KS, energy; the histogram, KDE and statistic-vector metrics keep the ranges and
    z-scoring of the pool's core networks).
    """
    from jaxweights import claims
    from jaxweights import groups as G

    seed = choice.get("seed", 0)
    base = network_groups(
        last,
        params,
        **{
            **choice,
            "quantile": 0.25,
            "threshold": None,
            "min_accuracy": None,
            "include_exploded": True,
            "include_not_learned": True,
        },
    )
    pool = base.analysed.to_numpy(bool)  # every non-diverged network
    flat = {k: np.asarray(v)[pool] for k, v in stats.flatten(params).items()}
    with _quiet_undefined():
        d_pool = np.asarray(
            distances.compute(flat, metrics=[metric], per=("network",), block_size=block_size)[metric][stats.ALL],
            np.float64,
        )
    pos = np.full(len(pool), -1)
    pos[pool] = np.arange(pool.sum())
    acc = last.sort_values("network").test_acc.to_numpy(np.float64)
    rows = []
    for q in SENSITIVITY_QUANTILES:
        for nl in (False, True):
            for ex in (False, True):
                row = {
                    "quantile": q,
                    "not_learned": "included" if nl else "excluded",
                    "exploded": "included" if ex else "excluded",
                    "in_force": bool(
                        choice.get("threshold") is None
                        and choice.get("min_accuracy") is None
                        and q == choice.get("quantile")
                        and nl == bool(choice.get("include_not_learned"))
                        and ex == bool(choice.get("include_exploded"))
                    ),
                }
                try:
                    g = network_groups(
                        last,
                        params,
                        **{
                            **choice,
                            "quantile": q,
                            "threshold": None,
                            "min_accuracy": None,
                            "include_exploded": ex,
                            "include_not_learned": nl,
                        },
                    )
                except G.ClaimError as e:
                    rows.append({**row, "note": str(e)})
                    continue
                a = g.analysed.to_numpy(bool)
                idx = pos[a]
                d = d_pool[np.ix_(idx, idx)]
                lab = g.label.to_numpy()[a]
                row["n_analysed"] = int(a.sum())
                if not np.isfinite(d).all():
                    rows.append({**row, "note": "non-finite distances between analysed networks"})
                    continue
                gd = claims.group_distances(d, lab)
                pt = claims.permutation_test(d, lab, n_permutations=n_permutations, seed=seed)
                p = float(claims.two_sided(pt.p_greater, pt.p_less))
                row.update(
                    n_optimal=int((lab == G.OPTIMAL).sum()),
                    n_suboptimal=int((lab == G.SUBOPTIMAL).sum()),
                    within_optimal=gd["within_optimal"],
                    within_suboptimal=gd["within_suboptimal"],
                    ratio=gd["ratio"],
                    p_value=p,
                    verdict=claims.verdict(p, np.sign(pt.p_less - pt.p_greater), alpha),
                )
                try:
                    cp = claims.cell_permutation_test(
                        d, acc[a], g.cell.to_numpy()[a], quantile=q, n_permutations=n_permutations, seed=seed
                    )
                    pc = float(claims.two_sided(cp.p_greater, cp.p_less))
                    row.update(p_cell=pc, verdict_cell=claims.verdict(pc, np.sign(cp.p_less - cp.p_greater), alpha))
                except G.ClaimError as e:
                    row.update(verdict_cell=f"not testable: {e}")
                rows.append(row)
    return rows


def verdict_counts(ct: pd.DataFrame, alpha: float) -> dict:
    """How many tests hold / are reversed, on Holm-adjusted p-values (the table's `verdict`), with the
    uncorrected counts beside them, named as such.

    A count of raw-p verdicts over tens of tests is not evidence (about alpha × tests hold by chance).
    """
    raw = ct.p_value < alpha if "p_value" in ct else ct.p_greater.lt(alpha) | ct.p_less.lt(alpha)
    up = ct.p_greater < ct.p_less
    out = {
        "n_holds": int((ct.verdict == "holds").sum()),
        "n_reversed": int((ct.verdict == "reversed").sum()),
        "n_holds_raw": int((raw & up).sum()),
        "n_reversed_raw": int((raw & ~up).sum()),
        "adjustment": "holm" if "p_holm" in ct else "none",
    }
    if "verdict_cell" in ct:
        out["n_holds_cell"] = int((ct.verdict_cell == "holds").sum())
        out["n_reversed_cell"] = int((ct.verdict_cell == "reversed").sum())
    return out


def _headline_verdicts(summary: dict, top: pd.Series, alpha: float) -> None:
    """The headline (whole network, primary metric) is one pre-specified test: its verdicts come from its
    own two-sided p, like each row of the sensitivity table; the table's Holm-adjusted verdicts stay beside
    them (`verdict_holm`, ...) and decide the counts over its many (metric, layer) tests."""
    from jaxweights import claims

    c, sd = summary["claim"], summary["seed_dispersion"]
    sign = lambda x: float(np.sign(x)) if np.isfinite(x) else 0.0
    c["verdict_holm"] = c["verdict"]
    c["verdict"] = claims.verdict(float(top.p_value), sign(top.p_less - top.p_greater), alpha)
    if "p_cell" in top and pd.notna(top.p_cell):
        c["verdict_cell_holm"] = c.get("verdict_cell")
        c["verdict_cell"] = claims.verdict(
            float(top.p_cell), sign(top.within_suboptimal_cells - top.within_optimal_cells), alpha
        )
    if sd.get("p_value") is not None and pd.notna(sd["p_value"]):
        sd["verdict_holm"] = sd.get("verdict")
        sd["verdict"] = claims.verdict(float(sd["p_value"]), -sign(sd["rho"]), alpha)  # holds: rho < 0


GROUPING_OPTIONS = (
    "quantile",
    "threshold",
    "min_accuracy",
    "include_exploded",
    "include_not_learned",
    "chance_margin",
    "seed",
)  # `network_groups` options among `analyze_workdir`'s


def _last_epoch(rd: Path) -> pd.DataFrame:
    m = pd.read_csv(rd / "metrics.csv")
    return m[m.epoch == m.epoch.max()].sort_values("network").reset_index(drop=True)


def num_classes(rd: Path, params=None) -> int:
    """Classes of a run's task: its dataset's (config.json), else the last kernel's outputs, else 10."""
    from jaxweights import data as data_lib

    try:
        ds = rundir.read_config(rd / "config.json").get("dataset")
        if ds in data_lib.SPECS:
            return data_lib.SPECS[ds].num_classes
    except (OSError, ValueError):
        pass
    if params is not None:
        ks = [v for k, v in stats.flatten(params).items() if k.endswith("kernel")]
        if ks:
            return int(np.shape(ks[-1])[-1])
    return 10


def run_groups(rd: Path, params, options: Mapping[str, Any]) -> pd.DataFrame:
    """`network_groups` of run directory `rd` with the grouping options among `options`."""
    return network_groups(
        _last_epoch(rd),
        params,
        num_classes=num_classes(rd, params),
        **{k: options[k] for k in GROUPING_OPTIONS if k in options},
    )


def _check_grouping(runs, options) -> dict:
    """`options`, checked on every run; refuses impossible groupings (one line naming the option).

    When leaving out the networks that did not learn leaves too few networks to group (a small zoo
    half at chance), they are included instead (`include_not_learned`), with a warning and a
    `grouping_note` the report shows: a study of the networks that are there beats none.
    """
    from jaxweights import groups as G

    for _, rd in runs:
        if not (rd / "metrics.csv").exists():
            continue
        params = rundir.load_params(rd / "params.npz")
        try:
            run_groups(rd, params, options)
        except G.ClaimError as e:
            if options.get("include_not_learned"):
                raise
            try:
                run_groups(rd, params, {**options, "include_not_learned": True})
            except G.ClaimError:
                raise e from None
            note = f"networks that did not learn are included: leaving them out, the grouping fails ({e})"
            log.warning("%s: %s", rd, note)
            options = {**options, "include_not_learned": True, "grouping_note": note}
    return options


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
        s, figs = zoo_summary(params, table, last, zout, name=name, num_classes=num_classes(rd, params), **options)
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
        sections.append(
            report.Section(
                "Across groups: the same pattern?",
                f"<p>Whole-network verdicts: {', '.join(f'{k}: {v}' for k, v in cmp['verdicts'].items())}; "
                f"same verdict: {cmp['same_verdict']}; same depth trend of the distance ratio: {cmp['same_trend']}.</p>",
                [fig],
            )
        )
    ctx = {"workdir": workdir, "analysis_dir": out, "summary": summary, "zoo": None}
    sections += report.provided_sections(ctx, extra_sections)
    intro = report.intro_html(summary) if "claim" in summary else ""
    return report.write(out, f"jaxweights analysis of {workdir.name}", sections, summary, intro=intro)
