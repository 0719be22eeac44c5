"""Learning dynamics wired into `jaxweights analyze`: tables, figures, report sections, summary.json."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from jaxweights import cli
from tests.conftest import DYNAMICS_ZOO_ARGS, REPO
from tests.zoo import QUICK_CLAIMS, analyze


def test_analyze_writes_dynamics_tables_report_sections_and_summary(dynamics_zoo, data_dir, tmp_path, capsys):
    run, _ = dynamics_zoo
    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("analysis", "pruned"))
    assert analyze(work, "--metrics", "ks", *QUICK_CLAIMS, "--probe_size", "200", "--data_dir", str(data_dir)) == 0
    out = work / "analysis"
    for f in (
        "rwc.csv",
        "stats_over_epochs.csv",
        "modularity.csv",
        "cka.npz",
        "probes.csv",
        "dynamics.json",
        "figures/rwc.png",
        "figures/modularity_depth.png",
        "figures/stats_over_epochs.png",
        "stats.csv",
    ):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    d = s["dynamics"]
    assert d == json.loads((out / "dynamics.json").read_text())
    # The summary's numbers are those of the tables, over the networks the caller marked optimal
    # (listed in pruning.json; every network when none are given).
    good = np.asarray(json.loads((out / "pruning.json").read_text())["networks"])
    assert d["n_optimal"] == len(good) and d["epochs"] == [0, 1, 2]
    rwc = pd.read_csv(out / "rwc.csv")
    for row in d["rwc"]["per_layer"]:
        v = rwc[(rwc.layer == row["layer"]) & rwc.network.isin(good)]
        assert row["first_epoch"] == pytest.approx(v[v.epoch == 1].rwc_l1_ratio.median())
        assert row["last_epoch"] == pytest.approx(v[v.epoch == 2].rwc_l1_ratio.median())
    mod = pd.read_csv(out / "modularity.csv")
    for row in d["modularity"]["per_layer"]:
        v = mod[(mod.layer == row["layer"]) & (mod.epoch == 2) & mod.network.isin(good)]
        assert row["modularity"] == pytest.approx(v.modularity.mean())
    with np.load(out / "cka.npz") as z:
        m = z["linear_networks"][2][np.ix_(good, good)]
        assert d["cka"]["per_layer"][2]["across_networks"] == pytest.approx(m[~np.eye(len(good), dtype=bool)].mean())
    html = (out / "report.html").read_text()
    for title in (
        "Learning dynamics: how much does each layer move?",
        "Representations: CKA and linear probes",
        "Modularity over depth and pruning candidates",
    ):
        assert title in html
    assert html.count("data:image/png;base64,") == len(s["figures"]) + 4  # rwc, stats, CKA, modularity
    # --nodynamics: none of it, and the previous analysis is replaced whole.
    assert analyze(work, "--metrics", "ks", *QUICK_CLAIMS, "--nodynamics") == 0
    assert not (out / "rwc.csv").exists() and "dynamics" not in json.loads((out / "summary.json").read_text())


def test_analyze_without_snapshots_skips_by_default_and_refuses_when_asked(tmp_path, data_dir, capsys):
    argv = [
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(tmp_path / "run"),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        *DYNAMICS_ZOO_ARGS,
        "--config.keep_checkpoints=1",
    ]
    assert cli.main(argv) == 0
    assert (
        cli.main(
            [
                "analyze",
                "--workdir",
                str(tmp_path / "run"),
                "--metrics",
                "ks",
                "--permutations",
                "100",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "run" / "analysis" / "summary.json").read_text())
    assert "1 checkpoint(s)" in s["dynamics"]["skipped"] and "keep_checkpoints=0" in s["dynamics"]["skipped"]
    assert not (tmp_path / "run" / "analysis" / "rwc.csv").exists()
    capsys.readouterr()
    assert cli.main(["analyze", "--workdir", str(tmp_path / "run"), "--metrics", "ks", "--dynamics"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and "keep_checkpoints=0" in err[0]
    assert (tmp_path / "run" / "analysis" / "summary.json").exists()  # the previous analysis is kept
