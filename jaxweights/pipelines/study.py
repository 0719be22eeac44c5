"""The whole study: datasets × model families, each zoo trained and analysed, one combined report.

    jaxweights study --config configs/studies/optimal_vs_suboptimal.py[:quick] --workdir DIR [--data_dir D]

For every dataset × family of the config, trains the preset zoo (`jaxweights.presets`) into
``DIR/<dataset>_<family>/``, analyses it (`analyze_workdir`: claims, figures, report) and
then writes ``DIR/report.html`` and ``DIR/summary.json``: a table of verdicts per dataset × model,
and per dataset whether the model families show the same pattern (same whole-network verdict, same
trend of the within-suboptimal / within-optimal distance ratio over per-depth-normalised layers).
A zoo that is already trained is resumed or reused (see `train_pipeline.train_and_evaluate`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import ml_collections
import pandas as pd

from jaxweights.claims import depth_profiles, same_pattern
from jaxweights.config import apply_overrides, presets
from jaxweights.io.lock import workdir_lock
from jaxweights.pipelines import train as train_pipeline
from jaxweights.pipelines.analyze import analyze_workdir
from jaxweights.report import Section, esc, figures, fmt, table, verdict_html, write

log = logging.getLogger("jaxweights")


def zoo_config(study: ml_collections.ConfigDict, dataset: str, family: str) -> ml_collections.ConfigDict:
    """The training config of one zoo: the preset, then the study's overrides ("all", then family).

    Overrides are nested dicts merged into the preset, e.g. ``{"mlp": {"model": {"hidden": (64,)}}}``.

    Args:
      study: the study config (`quick`, optional `data_dir` and `overrides`).
      dataset: the zoo's dataset name.
      family: the zoo's model family (e.g. "mlp"), also the key of its overrides.

    Returns:
      The zoo's training config.
    """
    c = presets.study_config(dataset, family, "quick" if study.quick else None)
    if study.get("data_dir"):
        c.data_dir = study.data_dir
    overrides = study.get("overrides") or {}
    for scope in ("all", family):
        c = apply_overrides(
            c, overrides.get(scope) or {}, where=f"study overrides[{scope!r}]", keep_groups=True, new_keys=True
        )
    return c


def _row(dataset: str, family: str, s: dict[str, Any]) -> dict[str, Any]:
    c, pr, sd = s["claim"], s["prediction"], s.get("seed_dispersion") or {}
    return {
        "dataset": dataset,
        "model": family,
        "networks": s["n_networks"],
        "analysed": s.get("n_kept"),
        "diverged": s["n_diverged"],
        "exploded": s.get("n_exploded"),
        "not_learned": s.get("n_not_learned"),
        "best_acc": s["grouping"]["optimal_acc"][1],
        "claim": c["verdict"],
        "ratio": c["ratio"],
        "p_value": c.get("p_value", c["p_greater"]),
        "p_holm": c.get("p_holm"),
        "claim_cells": c.get("verdict_cell"),
        "p_cell": c.get("p_cell"),
        "seed_rho": sd.get("rho"),
        "seed_p": sd.get("p_value"),
        "tests_holding_holm": f"{c['n_holds']}/{c['n_tests']}",
        "dispersion": s["dispersion"]["verdict"],
        "prediction_r2": pr.get("best_weights_r2"),
        "prediction_tau": pr.get("best_weights_tau"),
        "hparams_r2": pr.get("best_hyperparameters_r2"),
    }


def run_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = False) -> Path:
    """Trains and analyses every zoo of the study and writes the combined report.

    Args:
      config: a study config (`configs/studies/optimal_vs_suboptimal.py`): datasets, models, quick,
        overrides, analysis options.
      workdir: output folder; zoos go to ``<workdir>/<dataset>_<model>/``.
      progress: show training progress bars.

    Returns:
      The path of the combined report.html (summary.json beside it).

    Raises:
      WorkdirLockedError: another process works in `workdir` (see `jaxweights.io.lock`).
    """
    workdir = Path(workdir)
    with workdir_lock(workdir, "study"):  # each zoo's folder is locked by its training and analysis
        return _run_study(config, workdir, progress)


def _run_study(config: ml_collections.ConfigDict, workdir: Path, progress: bool) -> Path:
    """`run_study` once the workdir is locked."""
    opts = dict(config.analysis)
    metrics = opts.pop("metrics", None)
    rows, summaries, sections = [], {}, []
    for dataset in config.datasets:
        tables = {}
        for family in config.models:
            zoo = workdir / f"{dataset}_{family}"
            log.info("study: %s × %s -> %s", dataset, family, zoo)
            train_pipeline.train_and_evaluate(zoo_config(config, dataset, family), zoo, progress=progress)
            out = analyze_workdir(zoo, metrics=list(metrics) if metrics else None, **opts)
            s = json.loads((out / "summary.json").read_text())
            summaries[f"{dataset}_{family}"] = s
            rows.append(_row(dataset, family, s))
            tables[family] = pd.read_csv(out / "claim_tests.csv")
        if len(tables) > 1:
            metric = summaries[f"{dataset}_{config.models[0]}"]["claim"]["primary_metric"]
            prof = depth_profiles(tables, metric)
            cmp = same_pattern({f: summaries[f"{dataset}_{f}"]["claim"]["verdict"] for f in tables}, prof)
            fig = figures.depth_profile(workdir / "figures", prof, stem=f"depth_profile_{dataset}")
            summaries.setdefault("comparison", {})[dataset] = {**cmp, "metric": metric}
            trends = ", ".join(f"{k}: {fmt(v)}" for k, v in cmp["depth_trend"].items())
            sections.append(
                Section(
                    f"{dataset}: do the model families show the same pattern?",
                    f"<p>Whole-network verdicts ({esc(metric)}): "
                    + ", ".join(f"{k} {verdict_html(v)}" for k, v in cmp["verdicts"].items())
                    + f". Same verdict: <b>{cmp['same_verdict']}</b>. Spearman correlation of the per-layer distance "
                    f"ratio with normalised depth: {esc(trends)}; same trend: <b>{cmp['same_trend']}</b>.</p>",
                    [fig],
                )
            )
    verdicts = pd.DataFrame(rows)
    links = "".join(
        f'<li><a href="{d}_{m}/analysis/report.html">{d} × {m}</a></li>'
        for d, m in zip(verdicts.dataset, verdicts["model"])
    )
    head = Section(
        "Verdicts per dataset × model",
        "<p>claim: are optimal networks more alike than suboptimal ones (whole network, permutation test, "
        "verdict on the Holm-adjusted p); claim_cells / p_cell: the same with whole hyperparameter cells as the "
        "unit; seed_rho / seed_p: Spearman of the seeds' dispersion within a cell against the cell's accuracy "
        "(negative: cells that train well have seeds that end up alike); tests_holding_holm: claim tests holding "
        "after Holm's correction; ratio: mean distance within suboptimal / within optimal; dispersion: do statistics vary more among "
        "suboptimal networks; prediction: held-out R² and Kendall τ of accuracy predicted from weight "
        "statistics, beside hyperparameters alone.</p>" + table(verdicts) + f"<ul>{links}</ul>",
    )
    summary = {
        "zoos": {k: v for k, v in summaries.items() if k != "comparison"},
        "comparison": summaries.get("comparison", {}),
        "verdicts": verdicts.to_dict("records"),
        "config": config.to_dict(),
    }
    return write(workdir, "jaxweights study: optimal vs suboptimal networks", [head, *sections], summary)
