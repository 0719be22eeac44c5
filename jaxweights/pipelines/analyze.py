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

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import dynamics as dyn
from jaxweights.claims import (
    OPTIMAL,
    ClaimError,
    claim_summary,
    depth_profiles,
    quiet_undefined,
    records,
    same_pattern,
    warn_undefined,
)
from jaxweights.claims.summary import DEFAULT_METRICS
from jaxweights.io import atomic, rundir
from jaxweights.io.lock import workdir_lock
from jaxweights.pipelines import heartbeat
from jaxweights.pipelines.errors import AnalysisError, check_metrics
from jaxweights.pipelines.grouping import check_grouping, num_classes, run_groups
from jaxweights.pipelines.params import analyze_params
from jaxweights.report import Section, figures, intro_html, provided_sections, write, zoo_figures, zoo_sections
from jaxweights.report import dynamics as report_dynamics
from jaxweights.weights import compute

__all__ = [
    "DEFAULT_METRICS",
    "AnalysisError",
    "analyze_workdir",
    "num_classes",
    "report_workdir",
    "run_groups",
    "zoo_summary",
]

log = logging.getLogger("jaxweights")


def _run_dirs(workdir: Path) -> list[tuple[str, Path]]:
    if (workdir / "params.npz").exists():
        return [("", workdir)]
    groups = (
        sorted(p for p in (workdir / "groups").glob("*") if (p / "params.npz").exists())
        if (workdir / "groups").is_dir()
        else []
    )
    if not groups:
        zoos = _zoo_dirs(workdir)
        if zoos:  # a study folder (`jaxweights study`), or any folder of run directories
            commands = " && ".join(f"jaxweights analyze --workdir {z}" for z in zoos)
            report = workdir / "report.html"
            combined = f"; their combined study report is {report}" if report.is_file() else ""
            raise AnalysisError(
                f"{workdir}: not one run directory but a folder of {len(zoos)} "
                f"{'zoo' if len(zoos) == 1 else 'zoos'} ({', '.join(z.name for z in zoos)}); analyse "
                f"{'it' if len(zoos) == 1 else 'them'} with: {commands}{combined}"
            )
        raise AnalysisError(f"{workdir}: no params.npz (is this a finished `jaxweights train` run directory?)")
    return [(p.name, p) for p in groups]


def _zoo_dirs(folder: Path) -> list[Path]:
    """The run directories directly inside ``folder`` (a config.json or params.npz), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "config.json").is_file() or (p / "params.npz").is_file())


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

    Args:
      workdir: a run directory of `jaxweights train` (params.npz, or groups/<NN>/params.npz).
      metrics: distance metrics (default `DEFAULT_METRICS`).
      block_size: networks per block of the N×N distances.
      report: also test the claims and write the figures, report.html and summary.json.
      extra_sections: more report section providers.
      dynamics: learning dynamics: None (when there are snapshots), True (required) or False.
      data_dir: where the probe images of the dynamics are read.
      dynamics_options: options of `write_dynamics`.
      model: the Flax module of a run trained with your own module.
      **claim_options: options of `zoo_summary`.

    Returns:
      The analysis folder, ``<workdir>/analysis``.

    Raises:
      WorkdirLockedError: another process works in `workdir` (see `jaxweights.io.lock`).
    """
    workdir = Path(workdir)
    check_metrics(metrics or ())  # before any work, so a bad name costs nothing
    runs = _run_dirs(workdir)
    with workdir_lock(workdir, "analyze"):
        return _analyze_runs(
            workdir,
            runs,
            metrics,
            block_size,
            report,
            extra_sections,
            dynamics,
            data_dir,
            dynamics_options,
            model,
            claim_options,
        )


def _analyze_runs(
    workdir,
    runs,
    metrics,
    block_size,
    report,
    extra_sections,
    dynamics,
    data_dir,
    dynamics_options,
    model,
    claim_options,
) -> Path:
    """`analyze_workdir` once the workdir is locked."""
    if report:  # refuse impossible grouping options before minutes of distances
        claim_options = check_grouping(runs, claim_options)
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
            n = len(next(iter(compute.flatten(params).values())))
            with heartbeat.step(f"{rd}: analysing {n} networks (statistics, node strength, distances)"):
                table = analyze_params(params, out, metrics=metrics, block_size=block_size)
            if dynamics is not False:
                masks = {}
                g = None
                if (rd / "metrics.csv").exists():  # the one definition of optimal (`groups.split_groups`)
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
                    rd,
                    out,
                    dynamics is True,
                    data_dir,
                    {"model": model, **masks, **(dynamics_options or {})},
                    workdir / "analysis" / out.relative_to(tmp),
                )
                if skipped:
                    notes[name] = skipped
            if (rd / "metrics.csv").exists():
                m = pd.read_csv(rd / "metrics.csv")
                last = rundir.last_epoch(m).reset_index(drop=True)
                if name:
                    last.insert(0, "group", name)
                nets.append(last)
            if name:
                table.insert(0, "group", name)
            tables.append(table)
        if len(runs) > 1:
            atomic.write_csv(tmp / "stats.csv", pd.concat(tables, ignore_index=True))
        if nets:
            atomic.write_csv(tmp / "networks.csv", pd.concat(nets, ignore_index=True))
        if report and all((rd / "metrics.csv").exists() for _, rd in runs):
            with heartbeat.step(f"{workdir}: claims, figures and report"):
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


def _dynamics(
    rd: Path, out: Path, required: bool, data_dir: str | None, options: Mapping[str, Any], final: Path
) -> str | None:
    """Writes the learning dynamics of run `rd` into `out` (`final` once the analysis is done); returns why skipped."""

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
    try:
        with heartbeat.step(f"{rd}: learning dynamics"), quiet_undefined(non_finite=True) as f:
            dyn.write_dynamics(rd, out, data_dir=data_dir, **{"figures": report_dynamics.write_figures, **options})
        if f.dropped and (out / "stats_over_epochs.csv").is_file():
            table = pd.read_csv(out / "stats_over_epochs.csv")
            warn_undefined("learning dynamics", table, out / "warnings.csv", shown=final / "warnings.csv")
    except (dyn.DynamicsError, data_lib.DataError, config_lib.ConfigError) as e:
        if required:
            raise
        log.warning("learning dynamics skipped: %s", e)
        return str(e)
    return None


def zoo_summary(params, table: pd.DataFrame, last: pd.DataFrame, out: Path, **options) -> tuple[dict, dict]:
    """Tests the optimal-vs-suboptimal claims on one zoo (`claims.claim_summary`) and draws its figures.

    Args:
      params: stacked parameters of the zoo (networks axis first).
      table: its statistics table (as `analyze_params` returns).
      last: the last epoch's metrics, one row per network (test_acc, diverged, hyperparameters); with
        ``last.attrs["epochs"]`` (every epoch's metrics) the accuracy-over-epochs figure is drawn too.
      out: the zoo's analysis folder (tables go there, figures under ``figures/``).
      **options: `claims.claim_summary`'s options (metrics, quantile, threshold, bins, n_permutations, ...).

    Returns:
      (summary, figures): the numbers (JSON-able) and ``{figure name: PNG path}``.
    """
    n = len(next(iter(compute.flatten(params).values())))
    if len(last) != n:
        raise AnalysisError(f"{out}: metrics.csv has {len(last)} networks but params.npz has a different number")
    summary, c = claim_summary(params, table, last, out, **options)
    figs = zoo_figures(out / "figures", c, epochs=last.attrs.get("epochs"))
    summary["figures"] = {k: str(v.relative_to(out)) for k, v in figs.items()}
    return summary, figs


def report_workdir(workdir: Path, out: Path, runs, *, extra_sections=(), dynamics_notes=None, **options) -> Path:
    """Runs `zoo_summary` on every group of an analysed run and writes report.html + summary.json to `out`.

    Groups whose learning dynamics were written (`dynamics.json`) get their sections and a
    `dynamics` entry in the summary; `dynamics_notes` (group -> why they were skipped) are recorded.

    Args:
      workdir: the run directory.
      out: the analysis folder being written (each group's under ``groups/<name>``).
      runs: ``[(group name or "", run directory)]``.
      extra_sections: more report section providers.
      dynamics_notes: ``{group: why its dynamics were skipped}``.
      **options: options of `zoo_summary`.

    Returns:
      The path of report.html.
    """
    dynamics_notes = dynamics_notes or {}
    sections, summaries, tables = [], {}, {}
    for name, rd in runs:
        zout = out / "groups" / name if name else out
        params = rundir.load_params(rd / "params.npz")
        table = pd.read_csv(zout / "stats.csv")
        m = pd.read_csv(rd / "metrics.csv")
        last = rundir.last_epoch(m).reset_index(drop=True)
        last.attrs["epochs"] = m
        s, figs = zoo_summary(params, table, last, zout, name=name, num_classes=num_classes(rd, params), **options)
        summaries[name or "zoo"] = s
        tables[name or "zoo"] = pd.read_csv(zout / "claim_tests.csv")
        sections += zoo_sections(s, figs, prefix=f"group {name}" if name else "")
        if (zout / "dynamics.json").exists():
            s["dynamics"] = rundir.read_config(zout / "dynamics.json")
            sections += report_dynamics.report_sections(zout, prefix=f"group {name}" if name else "")
        elif name in dynamics_notes:
            s["dynamics"] = {"skipped": dynamics_notes[name]}
    summary = summaries.get("zoo") or {"groups": summaries}
    if len(runs) > 1:  # static groups (e.g. several architectures): same pattern across them?
        metric = next(iter(summaries.values()))["claim"]["primary_metric"]
        prof = depth_profiles(tables, metric)
        cmp = same_pattern({k: v["claim"]["verdict"] for k, v in summaries.items()}, prof)
        fig = figures.depth_profile(out / "figures", prof)
        summary["comparison"] = {**cmp, "metric": metric, "profiles": records(prof)}
        sections.append(
            Section(
                "Across groups: the same pattern?",
                f"<p>Whole-network verdicts: {', '.join(f'{k}: {v}' for k, v in cmp['verdicts'].items())}; "
                f"same verdict: {cmp['same_verdict']}; same depth trend of the distance ratio: {cmp['same_trend']}.</p>",
                [fig],
            )
        )
    ctx = {"workdir": workdir, "analysis_dir": out, "summary": summary, "zoo": None}
    sections += provided_sections(ctx, extra_sections)
    intro = intro_html(summary) if "claim" in summary else ""
    return write(out, f"jaxweights analysis of {workdir.name}", sections, summary, intro=intro)
