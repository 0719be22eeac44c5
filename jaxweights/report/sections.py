"""The report's words about one zoo: the introduction, who was left out and why, and each zoo's sections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from jaxweights.report.html import Section, esc, fmt, table, verdict_html

STATE_WORDS = {
    "diverged": "diverged",
    "exploded": "exploded (weights or loss blew up, still finite)",
    "not_learned": "did not learn (accuracy within the chance margin)",
    "below_min_accuracy": "below --min_accuracy",
}


def _present(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in df.columns]


def left_out_words(s: Mapping[str, Any]) -> str:
    """The networks left out, in words: "9 diverged (left out); 4 exploded ... (included)".

    Args:
      s: a zoo summary (its "grouping" and n_diverged, n_exploded, n_not_learned, n_below_min_accuracy).

    Returns:
      The counts of each state with a reason, or "none left out".
    """
    g = s["grouping"]
    parts = []
    for st, key in (
        ("diverged", "n_diverged"),
        ("exploded", "n_exploded"),
        ("not_learned", "n_not_learned"),
        ("below_min_accuracy", "n_below_min_accuracy"),
    ):
        n = s.get(key, 0)
        if n:
            inc = (st == "exploded" and g.get("include_exploded")) or (
                st == "not_learned" and g.get("include_not_learned")
            )
            parts.append(f"{n} {STATE_WORDS[st]}" + (" (included)" if inc else " (left out)"))
    return "; ".join(parts) if parts else "none left out"


def excluded_table(s: Mapping[str, Any]) -> str:
    """The networks left out (or flagged but included), with seed, hyperparameters and why.

    Columns constant over the listed networks are dropped (network, seed, state and why are kept).

    Args:
      s: a zoo summary (its "excluded" records).

    Returns:
      The HTML (a sentence and a table), or "" when no network is listed.
    """
    ex = pd.DataFrame(s.get("excluded") or [])
    if ex.empty:
        return ""
    # columns constant over the listed networks (e.g. an unused weight decay) say nothing here
    cols = [
        c
        for c in ex.columns
        if c not in ("analysed", "group", "test_loss")
        and (c in ("network", "seed", "state", "why") or ex[c].astype(str).nunique() > 1)
    ]
    return (
        "<p>Networks not in the optimal/suboptimal comparison, or flagged (listed in <code>groups.csv</code>):</p>"
        + table(ex, cols, max_rows=40)
    )


def counts_words(c: Mapping[str, Any], alpha: float) -> str:
    """How many of the claim tests hold / are reversed: counted on Holm-adjusted p-values.

    Args:
      c: the summary's "claim" dict (n_tests, n_holds, n_reversed, optional cell-level and raw counts).
      alpha: significance level.

    Returns:
      The HTML sentence.
    """
    txt = (
        f"Across all metrics and layers, after Holm's correction over the {c['n_tests']} tests, the claim "
        f"holds in {c['n_holds']} and is reversed in {c['n_reversed']}"
    )
    if "n_holds_cell" in c:
        txt += (
            f"; with hyperparameter cells as the unit it holds in {c['n_holds_cell']} and is reversed in "
            f"{c['n_reversed_cell']}"
        )
    return txt + (
        f" (uncorrected p &lt; {fmt(alpha)}: {c.get('n_holds_raw', '–')} and {c.get('n_reversed_raw', '–')}"
        f", a count that includes chance hits)."
    )


def seed_dispersion_html(d: Mapping[str, Any]) -> str:
    """The seed-dispersion result: do cells that train well have seeds that end up alike?

    Args:
      d: the summary's "seed_dispersion" dict (rho, n_cells, p_value, p_holm, verdict).

    Returns:
      The HTML paragraph, or "" when rho is missing.
    """
    if not d or d.get("rho") is None:
        return ""
    return (
        f"<p>Free of hyperparameter confounding (seed dispersion): within each hyperparameter cell, the "
        f"mean distance between its seeds against the cell's mean accuracy, Spearman ρ = {fmt(d['rho'])} over "
        f"{d.get('n_cells', '–')} cells, p = {fmt(d.get('p_value'))}: {verdict_html(d.get('verdict', '–'))} "
        f"(Holm over the table {fmt(d.get('p_holm'))}; negative ρ: cells that train well have seeds that end up "
        f"alike). Tables <code>claim_tests.csv</code> (columns seed_*), "
        f"<code>seed_dispersion_cells.csv</code>.</p>"
    )


def claim_words(s: Mapping[str, Any]) -> str:
    """The headline in words: what the zoo shows about optimal vs suboptimal networks.

    Args:
      s: a zoo summary (its "claim", "seed_dispersion", "sensitivity" and "alpha").

    Returns:
      The HTML text.
    """
    c = s["claim"]
    v = c["verdict"]
    what = {
        "holds": "optimal networks are more alike than suboptimal ones",
        "reversed": "suboptimal networks are more alike than optimal ones",
    }.get(v, "there is no significant difference in how alike optimal and suboptimal networks are")
    txt = (
        f"In words: {what} (whole network, {esc(c['primary_metric'])} distance: mean within the optimal group "
        f"{fmt(c['within_optimal'])}, within the suboptimal group {fmt(c['within_suboptimal'])}, ratio "
        f"{fmt(c['ratio'])}, two-sided permutation p = {fmt(c.get('p_value', c['p_greater']))}: the pre-specified "
        f"headline test, judged on its own p; Holm-adjusted over all {c['n_tests']} claim tests "
        f"{fmt(c.get('p_holm'))}: {verdict_html(c.get('verdict_holm', c['verdict']))}"
    )
    if c.get("p_cell") is not None:
        txt += (
            f"; with whole hyperparameter cells as the unit p = {fmt(c['p_cell'])}: "
            f"{verdict_html(c.get('verdict_cell', '–'))} (Holm over the table {fmt(c.get('p_cell_holm'))})"
        )
    txt += ")."
    sd = s.get("seed_dispersion") or {}
    if sd.get("rho") is not None:
        txt += (
            f" Within hyperparameter cells, seeds of well-training cells end up "
            f"{'closer' if sd['rho'] < 0 else 'further apart'} (Spearman ρ = {fmt(sd['rho'])} over "
            f"{sd.get('n_cells')} cells, p = {fmt(sd.get('p_value'))}: {verdict_html(sd.get('verdict', '–'))})."
        )
    if c.get("exact_cell") and c.get("n_permutations_cell") and 2 / c["n_permutations_cell"] >= s["alpha"]:
        txt += (
            f" The cell-level test cannot reach p &lt; {fmt(s['alpha'])} on this grid: with "
            f"{c.get('n_optimal_cells')} optimal and {c.get('n_suboptimal_cells')} suboptimal cells its smallest "
            f"attainable two-sided p is {fmt(2 / c['n_permutations_cell'])}; a grid with more cells can."
        )
    if v == "holds" and c.get("verdict_cell") not in (None, "holds"):
        txt += (
            " With whole hyperparameter cells permuted it is not significant: the likeness may be that of "
            "networks trained with the same hyperparameters, not of good networks as such."
        )
    rows = [r for r in s.get("sensitivity") or [] if r.get("verdict")]
    if rows:
        same = sum(r["verdict"] == v for r in rows)
        txt += f" The verdict is the same under {same} of the {len(rows)} groupings of the table below."
    return txt


def intro_html(s: Mapping[str, Any]) -> str:
    """The report's first paragraph: the grouping in force, what was left out, what the zoo shows.

    Then the headline under the other reasonable groupings (``summary["sensitivity"]``), as a table.

    Args:
      s: a zoo summary.

    Returns:
      The HTML.
    """
    g = s["grouping"]
    rule = (
        f"optimal = the top {g['quantile']:.0%} and suboptimal = the bottom {g['quantile']:.0%} of the "
        f"analysed networks by test accuracy"
        if g.get("quantile") is not None
        else f"accuracy threshold {esc(g['threshold'])}"
    )
    head = (
        f"<p><b>Grouping in force:</b> {rule}; {s['n_kept']} of {s['n_networks']} networks analysed "
        f"({g.get('n_cells', '–')} hyperparameter cells), {left_out_words(s)}. Chance accuracy "
        f"{fmt(g.get('chance_accuracy'))}, margin {fmt(g.get('chance_margin'))}. "
        + (f"<b>Note:</b> {esc(g['note'])}. " if g.get("note") else "")
        + f"{claim_words(s)}</p>"
    )
    sens = pd.DataFrame(s.get("sensitivity") or [])
    if sens.empty:
        return head
    sens = sens.assign(
        in_force=sens.in_force.map({True: "◀ in force", False: ""}), quantile=[f"{q:.0%}" for q in sens["quantile"]]
    )
    if "n_optimal" in sens:
        sens["optimal / suboptimal"] = [
            f"{a:.0f} / {b:.0f}" if a == a else "–" for a, b in zip(sens.n_optimal, sens.n_suboptimal)
        ]
    notes = []
    for col in ("note", "verdict_cell"):
        if col not in sens:
            continue
        for i in sens.index:
            n = sens.at[i, col]
            if isinstance(n, str) and (col == "note" or n.startswith("not testable")):
                text = n.removeprefix("not testable: ")
                if text not in notes:
                    notes.append(text)
                sens.at[i, "verdict" if col == "note" else col] = f"not testable ({notes.index(text) + 1})"
    foot = "".join(f"<p><small>({i + 1}) {esc(n)}</small></p>" for i, n in enumerate(notes))
    cols = _present(
        sens,
        [
            "quantile",
            "not_learned",
            "exploded",
            "n_analysed",
            "optimal / suboptimal",
            "ratio",
            "p_value",
            "verdict",
            "p_cell",
            "verdict_cell",
            "in_force",
        ],
    )
    return head + (
        "<p><b>Sensitivity</b> of the headline (whole network, "
        f"{esc(s['claim']['primary_metric'])}) to the grouping: two-sided permutation p with networks "
        "exchangeable (p_value) and with whole hyperparameter cells exchangeable (p_cell). Each row is "
        "one pre-specified test at the stated level, not adjusted; the headline's p adjusted over all "
        "claim tests is given above. quantile: the top and bottom fraction of the analysed networks.</p>"
        + table(sens, cols)
        + foot
    )


def zoo_sections(s: Mapping[str, Any], figs: Mapping[str, Path], prefix: str = "") -> list[Section]:
    """Sections answering the study's questions for one zoo.

    Args:
      s: the zoo summary (`zoo_summary`'s first output).
      figs: ``{figure name: PNG path}`` (`zoo_summary`'s second output); missing figures are skipped.
      prefix: text put before each section title (e.g. "group 01"), none when empty.

    Returns:
      The sections, in order.
    """
    g, c = s["grouping"], s["claim"]
    p = f"{prefix}: " if prefix else ""
    secs = []
    secs.append(
        Section(
            p + "Networks and groups",
            f"<p>{s['n_networks']} networks: {s['n_kept']} analysed, {left_out_words(s)}. "
            f"Grouping by test accuracy ({esc(g['rule'])}): {g['n_optimal']} optimal "
            f"(accuracy {fmt(g['optimal_acc'][0])}–{fmt(g['optimal_acc'][1])}), {g['n_suboptimal']} suboptimal "
            f"(accuracy {fmt(g['suboptimal_acc'][0])}–{fmt(g['suboptimal_acc'][1])}). "
            f"Accuracy bins (complex-network study): edges {', '.join(fmt(e) for e in g['bin_edges'])}.</p>"
            + excluded_table(s),
            [figs[k] for k in ("accuracy_over_epochs",) if k in figs],
        )
    )
    wn = pd.DataFrame(c["whole_network"])
    secs.append(
        Section(
            p + "Are optimal networks more alike than suboptimal ones?",
            f"<p>Verdict (whole network, {esc(c['primary_metric'])}): {verdict_html(c['verdict'])}. "
            f"Mean pairwise distance within the optimal group {fmt(c['within_optimal'])}, within the suboptimal "
            f"group {fmt(c['within_suboptimal'])}, across {fmt(c['across'])} (ratio {fmt(c['ratio'])}); "
            f"two-sided permutation p = {fmt(c.get('p_value', c['p_greater']))}"
            f"{' (exact)' if c.get('exact') else ''} (one-sided, optimal more alike: {fmt(c['p_greater'])}); "
            f"95% bootstrap interval of the difference "
            f"[{fmt(c['ci'][0])}, {fmt(c['ci'][1])}]. {counts_words(c, s['alpha'])}</p>"
            + seed_dispersion_html(s.get("seed_dispersion") or {})
            + "<p>Whole network, every metric. p_value: two-sided, networks exchangeable; p_holm / p_bh: adjusted "
            "(Holm, Benjamini–Hochberg) over every network-level test of <code>claim_tests.csv</code>; verdict from "
            "p_holm. p_cell…: the same claim with whole hyperparameter cells exchangeable (pairs of one cell never "
            "count). seed_…: seed dispersion against accuracy over cells (Spearman).</p>"
            + table(
                wn,
                _present(
                    wn,
                    [
                        "metric",
                        "within_optimal",
                        "within_suboptimal",
                        "ratio",
                        "p_value",
                        "p_holm",
                        "p_bh",
                        "verdict",
                        "p_cell",
                        "p_cell_holm",
                        "verdict_cell",
                        "seed_rho",
                        "seed_p",
                        "seed_p_holm",
                        "verdict_seed",
                    ],
                ),
            )
            + "<p>Per layer (table <code>claim_tests.csv</code>):</p>"
            + table(
                pd.DataFrame(c["per_layer"]),
                _present(
                    pd.DataFrame(c["per_layer"]),
                    [
                        "metric",
                        "layer",
                        "within_optimal",
                        "within_suboptimal",
                        "ratio",
                        "p_value",
                        "p_holm",
                        "verdict",
                        "p_cell_holm",
                        "verdict_cell",
                        "seed_rho",
                        "seed_p_holm",
                        "verdict_seed",
                    ],
                ),
            ),
            [figs[k] for k in ("distance_heatmap", "weight_histograms", "kde_by_bin", "pca") if k in figs],
        )
    )
    d = s["dispersion"]
    secs.append(
        Section(
            p + "Dispersion of the statistics",
            f"<p>Variance across networks of each statistic (per layer and whole network): larger in the suboptimal "
            f"group for {d['n_larger_suboptimal']} of {d['n_statistics']} statistics; significantly larger "
            f"(permutation test, Holm-adjusted p &lt; {fmt(s['alpha'])} over the {d['n_statistics']}) for {d['n_holds']}, "
            f"significantly smaller for {d['n_reversed']} (uncorrected: {d.get('n_holds_raw', '–')} and "
            f"{d.get('n_reversed_raw', '–')}). Verdict: {verdict_html(d['verdict'])}.</p>"
            + table(
                pd.DataFrame(d["whole_network"]),
                _present(
                    pd.DataFrame(d["whole_network"]),
                    ["statistic", "var_optimal", "var_suboptimal", "ratio", "p_value", "p_holm", "p_bh", "verdict"],
                ),
            ),
        )
    )
    r = s["correlation"]
    secs.append(
        Section(
            p + "Which statistics follow accuracy? (Spearman)",
            f"<p>{r['n_significant']} of {r['n_tests']} (layer, statistic) pairs correlate with test accuracy at "
            f"Holm-adjusted p &lt; {fmt(s['alpha'])} ({r.get('n_significant_bh', '–')} at Benjamini–Hochberg-adjusted "
            f"p, {r.get('n_significant_raw', '–')} uncorrected). Strongest:</p>"
            + table(
                pd.DataFrame(r["strongest"]),
                _present(pd.DataFrame(r["strongest"]), ["layer", "statistic", "rho", "p_value", "p_holm", "p_bh", "n"]),
            ),
            [figs[k] for k in ("statistics_vs_accuracy", "weight_matrices") if k in figs],
        )
    )
    pr = s["prediction"]
    secs.append(
        Section(
            p + "Predicting accuracy from the weights (Unterthiner et al. 2020)",
            (f"<p>{esc(pr['note'])}</p>" if pr.get("note") else "")
            + f"<p>Held-out hyperparameter cells ({pr.get('folds', '–')} folds grouped by cell: no seed of a test "
            f"network's cell is trained on; column <code>fold</code> of <code>predictions.csv</code>). "
            f"Verdict: {esc(pr.get('verdict', '–'))}.</p>"
            + table(
                pd.DataFrame(pr.get("scores", [])),
                _present(
                    pd.DataFrame(pr.get("scores", [])),
                    ["features", "model", "r2", "kendall_tau", "n_features", "n_folds"],
                ),
            ),
        )
    )
    b = s["bin_divergence"]
    secs.append(
        Section(
            p + "Accuracy bins: node strength and layer fluctuation (La Malfa et al. 2021)",
            (f"<p>{esc(b['note'])}</p>" if b.get("note") else "")
            + "<p>Symmetric KL divergence between the KDEs of accuracy bins; per quantity: mean divergence of "
            "adjacent bins and between the lowest and highest bin.</p>"
            + table(pd.DataFrame(b.get("table", [])), ["quantity", "adjacent_mean", "lowest_vs_highest"]),
            [figs[k] for k in ("bin_divergence",) if k in figs],
        )
    )
    return secs
