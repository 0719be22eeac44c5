"""End to end on a real MNIST slice: a zoo with good, poor and diverged networks, analysed into
figures, report.html and summary.json; the report rendered in headless Chromium; the study command."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from jaxweights import cli, report
from jaxweights.io import rundir
from jaxweights.models import paths
from jaxweights.pipelines import analyze, study
from jaxweights.report import style
from tests.report import figcheck
from tests.zoo import QUICK_CLAIMS, REPO, train
from tests.zoo import analyze as analyze_cli

# 2 seeds × 5 learning rates × 2 init scales: the smallest rates stay near chance, the middle ones
# learn, 1e4 diverges.
GRID = (
    "--config.num_epochs=2",
    "--config.learning_rates=(0.001,0.01,0.1,0.5,10000.0)",
    "--config.init_scales=(0.3,1.0)",
    "--config.max_train=2048",
)
FIGURES = (
    "weight_histograms",
    "kde_by_bin",
    "distance_heatmap",
    "statistics_vs_accuracy",
    "pca",
    "bin_divergence",
    "weight_matrices",
    "accuracy_over_epochs",
)
DYNAMICS_FIGURES = ("rwc", "stats_over_epochs", "cka_network", "modularity_depth")  # CKA: of one network
IMAGES = len(FIGURES) + len(DYNAMICS_FIGURES)
SUMMARY_KEYS = {
    "": [
        "zoo",
        "n_networks",
        "n_diverged",
        "n_exploded",
        "n_not_learned",
        "n_below_min_accuracy",
        "n_kept",
        "alpha",
        "grouping",
        "excluded",
        "claim",
        "seed_dispersion",
        "sensitivity",
        "dispersion",
        "correlation",
        "prediction",
        "bin_divergence",
        "figures",
    ],
    "grouping": [
        "rule",
        "quantile",
        "threshold",
        "n_optimal",
        "n_suboptimal",
        "optimal_acc",
        "suboptimal_acc",
        "bin_edges",
        "bin_counts",
    ],
    "claim": [
        "primary_metric",
        "verdict",
        "within_optimal",
        "within_suboptimal",
        "across",
        "ratio",
        "p_greater",
        "p_less",
        "exact",
        "ci",
        "p_value",
        "p_holm",
        "p_bh",
        "p_cell",
        "p_cell_holm",
        "verdict_cell",
        "n_tests",
        "n_holds",
        "n_reversed",
        "n_holds_raw",
        "n_reversed_raw",
        "whole_network",
        "per_layer",
    ],
    "dispersion": ["n_statistics", "n_larger_suboptimal", "n_holds", "n_reversed", "verdict", "whole_network"],
    "correlation": ["n_tests", "n_significant", "strongest"],
    "prediction": ["folds", "scores", "verdict", "best_weights_r2", "best_weights_tau", "best_hyperparameters_r2"],
    "bin_divergence": ["table"],
}


def extra_section(ctx):
    return report.Section("An extra section", f"<p>plugged in for {Path(ctx['workdir']).name}</p>")


@pytest.fixture(scope="module")
def drawn():
    """``{PNG stem: matplotlib Figure}`` of every figure the analysis of `analysed` drew."""
    return {}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, data_dir, drawn):
    tmp = tmp_path_factory.mktemp("zoo")
    assert train(tmp, data_dir, *GRID) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(style, "save", figcheck.recording(drawn))
        out = analyze.analyze_workdir(
            tmp / "run",
            metrics=["wasserstein", "ks", "euclidean"],
            n_permutations=500,
            n_boot=200,
            extra_sections=[extra_section],
            data_dir=str(data_dir),
            dynamics_options=dict(probe_size=200, probe_steps=100, num_planes=2, resolution=8),
        )
    return tmp / "run", out


def test_summary_has_every_key_and_the_numbers_agree(analysed):
    run, out = analysed
    s = json.loads((out / "summary.json").read_text())
    for section, keys in SUMMARY_KEYS.items():
        assert set(keys) <= set(s[section] if section else s), (section, set(keys) - set(s[section] if section else s))
    m = pd.read_csv(run / "metrics.csv")
    last = m[m.epoch == 2].sort_values("network")
    n = len(last)
    assert s["n_networks"] == n >= 20 and s["n_diverged"] == int(last.diverged.sum()) >= 2
    assert s["grouping"]["n_optimal"] == s["grouping"]["n_suboptimal"] == round(0.25 * s["n_kept"])
    assert s["grouping"]["optimal_acc"][0] > 0.7 > s["grouping"]["suboptimal_acc"][1]  # good and poor
    groups = pd.read_csv(out / "groups.csv").set_index("network")
    assert (groups.group[last.diverged.to_numpy(bool)] == "diverged").all()
    # left out by default: diverged, exploded (training's flag) and not learned (accuracy < 0.1 + 0.05)
    div, exp = last.diverged.to_numpy(bool), last.exploded.to_numpy(bool) & ~last.diverged.to_numpy(bool)
    not_learned = ~div & ~exp & (last.test_acc.to_numpy() < 0.15)
    assert s["n_exploded"] == exp.sum() and s["n_not_learned"] == not_learned.sum() > 0
    assert s["n_kept"] == n - div.sum() - exp.sum() - not_learned.sum() == groups.analysed.sum()
    assert {e["network"] for e in s["excluded"]} == set(last.network[div | exp | not_learned])
    assert (groups.group[not_learned] == "not_learned").all()
    # the sensitivity table: the row in force is the headline; the 8 groupings are all there
    sens = pd.DataFrame(s["sensitivity"])
    assert len(sens) == 8 and sens.in_force.sum() == 1
    assert sens[sens.in_force].p_value.iloc[0] == pytest.approx(s["claim"]["p_value"])
    assert (
        sens[
            (sens.not_learned == "included") & (sens["quantile"] == 0.25) & (sens.exploded == "excluded")
        ].n_analysed.iloc[0]
        == s["n_kept"] + not_learned.sum()
    )
    # verdict counts from the Holm-adjusted p-values of claim_tests.csv
    ct = pd.read_csv(out / "claim_tests.csv")
    assert s["claim"]["n_holds"] == int(((ct.p_holm < 0.05) & (ct.p_greater < ct.p_less)).sum())
    assert {"p_cell", "p_cell_holm", "verdict_cell", "seed_rho", "seed_p", "seed_p_holm"} <= set(ct.columns)
    # the headline is one pre-specified test: its verdict is its own p's, as in the sensitivity row in force;
    # the Holm-adjusted verdict of the same row of claim_tests.csv stays beside it
    top = ct[(ct.metric == "wasserstein") & (ct.layer == "__all__")].iloc[0]
    assert s["claim"]["verdict_holm"] == top.verdict
    assert s["claim"]["verdict"] == sens[sens.in_force].verdict.iloc[0]
    assert (s["claim"]["verdict"] == "not significant") == (top.p_value >= 0.05 or top.p_greater == top.p_less)
    # prediction folds grouped by hyperparameter cell: no cell in two folds
    # (cells taken from the grid itself, metrics.csv's hyperparameter columns, not from the analysis's cell ids)
    preds = pd.read_csv(out / "predictions.csv").merge(last[["network", "learning_rate", "init_scale"]], on="network")
    assert (preds.groupby(["learning_rate", "init_scale"]).fold.nunique() == 1).all() and preds.fold.nunique() > 1
    assert set(preds.network) == set(groups.index[groups.analysed])
    # within-group means of the whole-network W1 == scipy over the same pairs
    params = rundir.load_params(run / "params.npz")
    flat = np.concatenate(
        [np.asarray(v, np.float64).reshape(n, -1) for _, v in sorted(paths.flatten(params).items())], 1
    )
    opt = groups.index[groups.group == "optimal"].to_numpy()
    pairs = [(i, j) for i in opt for j in opt if i < j]
    ref = np.mean([ss.wasserstein_distance(flat[i], flat[j]) for i, j in pairs])
    np.testing.assert_allclose(s["claim"]["within_optimal"], ref, rtol=1e-4)
    # the headline verdict from its numbers: two-sided p = min(1, 2 min(p_greater, p_less)) at alpha 0.05,
    # "holds" when the suboptimal networks are the more spread-out group
    c = s["claim"]
    p = min(1.0, 2 * min(c["p_greater"], c["p_less"]))
    assert c["p_value"] == pytest.approx(p)
    want = "not significant" if p >= 0.05 else "holds" if c["within_suboptimal"] > c["within_optimal"] else "reversed"
    assert c["primary_metric"] == "wasserstein" and c["verdict"] == want
    np.testing.assert_allclose(c["ratio"], c["within_suboptimal"] / c["within_optimal"], rtol=1e-9)
    assert 0 < s["claim"]["p_greater"] <= 1 and s["claim"]["ci"][0] <= s["claim"]["ci"][1]
    # the report quotes the p the verdict is judged on, named two-sided, in the opening words and the verdict
    html = (out / "report.html").read_text()
    assert html.count(f"two-sided permutation p = {report.fmt(c['p_value'])}") == 2
    # a Spearman correlation in correlations.csv == scipy on stats.csv
    stats_t = pd.read_csv(out / "stats.csv")
    corr = pd.read_csv(out / "correlations.csv").set_index(["layer", "statistic"])
    kept = groups.analysed.to_numpy(bool)
    v = stats_t[(stats_t.layer == "Dense_0") & (stats_t.statistic == "std")].sort_values("network").value.to_numpy()
    r = ss.spearmanr(v[kept], last.test_acc.to_numpy()[kept])
    np.testing.assert_allclose(
        corr.loc[("Dense_0", "std"), ["rho", "p_value"]].to_numpy(float), [r.statistic, r.pvalue], rtol=1e-6
    )
    assert {r["features"] for r in s["prediction"]["scores"]} == {"weights", "hyperparameters"}
    # the baseline sees learning rate and init scale, never the accuracy or loss columns
    assert {r["n_features"] for r in s["prediction"]["scores"] if r["features"] == "hyperparameters"} == {2}


def test_every_figure_and_its_data_exist(analysed):
    _, out = analysed
    s = json.loads((out / "summary.json").read_text())
    assert set(s["figures"]) == set(FIGURES)
    for name, rel in s["figures"].items():
        png = out / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        data = pd.read_csv(png.with_suffix(".csv"))
        assert len(data) > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == IMAGES and "src=\"figures/" not in html
    assert "An extra section" in html and "plugged in for run" in html
    for title in (
        "Are optimal networks more alike",
        "Dispersion",
        "Spearman",
        "Predicting accuracy",
        "node strength and layer fluctuation",
        "Grouping in force",
        "Sensitivity",
        "not_learned",
        "hyperparameter cells",
    ):
        assert title in html
    assert html.index("Grouping in force") < html.index("Networks and groups")  # the first paragraph


def test_every_figure_reads_well(analysed, drawn):
    """Each figure the analysis drew: every panel drawn on, labelled, each heatmap with its colour bar,
    whole-epoch ticks, no title over another panel; each PNG of a readable size and not of one colour."""
    _, out = analysed
    assert {n.rstrip("0123456789") for n in drawn} == {*FIGURES, *DYNAMICS_FIGURES}
    found = [p for name, fig in drawn.items() for p in figcheck.problems(fig, name)]
    found += [p for png in sorted((out / "figures").glob("*.png")) for p in figcheck.png_problems(png)]
    assert found == []
    # what a reader could not tell from the file name is said in the figure itself
    (cka,) = [f for n, f in drawn.items() if n.startswith("cka_network")]
    assert "CKA of network" in cka._suptitle.get_text() and "optimal" in cka._suptitle.get_text()
    epochs = [a for f in drawn.values() for a in f.axes if a.get_xlabel() == "epoch"]
    assert len(epochs) >= 4  # accuracy, RWC, statistics over epochs and the CKA epoch × epoch panels
    # heatmaps: every image has a colour bar with a label (the figure checks); here, that they exist at all
    images = {n for n, f in drawn.items() for a in f.axes if a.images}
    assert {"distance_heatmap", "bin_divergence", "weight_matrices"} <= images
    assert any(n.startswith("cka_network") for n in images)


def test_report_renders_in_headless_chromium_with_every_image_decoded(analysed, tmp_path):
    _, out = analysed
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium not found: install Debian's `chromium` package (CI does)")
    probe = (
        "<script>window.addEventListener('load', () => { const im = [...document.images];"
        "const ok = im.filter(i => i.complete && i.naturalWidth > 0).length;"
        "const sizes = im.map(i => `${i.naturalWidth}x${i.naturalHeight}`).join(' ');"
        "document.body.insertAdjacentHTML('beforeend', `<pre id=probe>IMAGES ${ok}/${im.length} SIZES ${sizes};</pre>`);"
        "});"
        "</script></body>"
    )
    page = tmp_path / "report.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe))
    res = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"IMAGES {IMAGES}/{IMAGES}" in res.stdout, (res.stdout[-500:], res.stderr[-2000:])
    # every figure as decoded by the browser: wide and high enough to read, not too heavy
    (listed,) = re.findall(r"IMAGES \d+/\d+ SIZES ([\dx ]*);", res.stdout)
    sizes = [tuple(map(int, s.split("x"))) for s in listed.split()]
    assert len(sizes) == IMAGES
    (lo_w, lo_h), (hi_w, hi_h) = figcheck.MIN_PX, figcheck.MAX_PX
    assert all(lo_w <= w <= hi_w and lo_h <= h <= hi_h for w, h in sizes), sizes


def test_cli_grouping_options_and_refusals(analysed, tmp_path, capsys):
    # a copy: the analyses below must not replace the one the other tests of this module read
    run = Path(shutil.copytree(analysed[0], tmp_path / "run"))
    assert cli.main(["analyze", "--workdir", str(run), "--threshold", "0.5,x"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert cli.main(["analyze", "--workdir", str(run), "--quantile", "0.8"]) == 2
    assert "--quantile" in capsys.readouterr().err
    before = (run / "analysis" / "summary.json").read_bytes()
    # a threshold no network reaches: one line naming it, the previous analysis kept
    assert cli.main(["analyze", "--workdir", str(run), "--metrics", "ks", "--threshold", "0.999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threshold" in err[0] and "optimal" in err[0]
    assert (run / "analysis" / "summary.json").read_bytes() == before
    # --min_accuracy leaves out, on top of the not-learned networks, the rest below it, counted apart
    assert analyze_cli(run, "--metrics", "ks", "--min_accuracy", "0.5", "--nodynamics", *QUICK_CLAIMS) == 0
    s = json.loads((run / "analysis" / "summary.json").read_text())
    m = pd.read_csv(run / "metrics.csv")
    last = m[m.epoch == m.epoch.max()]
    bad = last.diverged.astype(bool) | last.exploded.astype(bool)
    not_learned = ~bad & (last.test_acc < 0.15)
    below = int((~bad & ~not_learned & (last.test_acc < 0.5)).sum())
    assert below > 0 and s["n_below_min_accuracy"] == below and s["n_not_learned"] == not_learned.sum()
    assert s["n_kept"] == len(last) - below - int(bad.sum()) - int(not_learned.sum())
    assert s["grouping"]["suboptimal_acc"][0] >= 0.5
    groups = pd.read_csv(run / "analysis" / "groups.csv")
    assert (groups.group == "below_min_accuracy").sum() == below
    # --include_not_learned puts the chance-level networks back among the analysed ones
    assert analyze_cli(run, "--metrics", "ks", "--include_not_learned", "--nodynamics", *QUICK_CLAIMS) == 0
    s = json.loads((run / "analysis" / "summary.json").read_text())
    assert s["n_kept"] == len(last) - int(bad.sum()) and s["grouping"]["include_not_learned"]


def test_study_writes_a_combined_report_with_a_verdict_table(tmp_path, data_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("s", REPO / "configs" / "studies" / "optimal_vs_suboptimal.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("quick")
    c.datasets, c.models, c.data_dir = ("mnist",), ("mlp",), str(data_dir)
    c.overrides = {
        "all": {"max_train": 512, "max_test": 300, "learning_rates": (1e-4, 1e-3, 1e-2, 5e-2)},
        "mlp": {"model": {"hidden": (16,)}},
    }
    c.analysis.metrics, c.analysis.n_permutations, c.analysis.n_boot = ("wasserstein",), 100, 50
    path = study.run_study(c, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert path == tmp_path / "report.html" and "Verdicts per dataset" in path.read_text()
    (row,) = s["verdicts"]
    assert row["dataset"] == "mnist" and row["model"] == "mlp" and row["networks"] == 8
    assert row["claim"] == s["zoos"]["mnist_mlp"]["claim"]["verdict"]
    assert (tmp_path / "mnist_mlp" / "analysis" / "report.html").exists()
    cfg = json.loads((tmp_path / "mnist_mlp" / "config.json").read_text())
    assert cfg["model"]["hidden"] == [16] and cfg["max_train"] == 512
