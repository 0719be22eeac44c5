"""A self-contained HTML report (figures embedded as base64 PNGs) and its numbers as summary.json.

A report is a list of `Section`s (title, HTML body, figures). `jaxweights analyze` builds the
sections of the optimal-vs-suboptimal study from its summary (`zoo_sections`) and then appends
every section provider registered with `register_section` (or passed as `extra_sections`), so
other analyses plug in without editing this module::

    def my_section(ctx):            # ctx: {"workdir", "analysis_dir", "summary", "zoo"}
        return report.Section("Learning dynamics", "<p>...</p>", [Path("rwc.png")])
    report.register_section("dynamics", my_section)
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from jaxweights import rundir


class Section(NamedTuple):
    """One report section: a title, an HTML body and figures (PNG paths) shown below it."""

    title: str
    html: str
    figures: Sequence[Path] = ()


_SECTIONS: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def register_section(name: str, provider: Callable[[Mapping[str, Any]], Any], *, overwrite: bool = False) -> None:
    """Registers a section provider: ``provider(ctx) -> Section | list[Section] | None``.

    Args:
      name: unique name.
      provider: called with ``{"workdir", "analysis_dir", "summary", "zoo"}`` after the study's sections.
      overwrite: replace an existing provider of that name.
    """
    if name in _SECTIONS and not overwrite:
        raise ValueError(f"report section {name!r} already registered")
    _SECTIONS[name] = provider


def registered_sections() -> tuple[str, ...]:
    """Names of the registered section providers."""
    return tuple(_SECTIONS)


def provided_sections(ctx: Mapping[str, Any], extra: Sequence[Callable] = ()) -> list[Section]:
    """Calls the registered providers and `extra` ones with `ctx`; flattens their sections."""
    out: list[Section] = []
    for provider in (*_SECTIONS.values(), *extra):
        got = provider(ctx)
        if got is None:
            continue
        out += [got] if isinstance(got, Section) else list(got)
    return out


# ------------------------------------------------------------------------------------ HTML


def esc(x: Any) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(x))


def fmt(v: Any, digits: int = 4) -> str:
    """A number for humans: 4 significant digits, p-values below 1e-3 in scientific notation."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "–"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e5):
        return f"{f:.2e}"
    return f"{f:.{digits}g}"


def table(df: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = 60) -> str:
    """An HTML table of a DataFrame (numbers formatted with `fmt`)."""
    if df is None or len(df) == 0:
        return "<p><em>(no rows)</em></p>"
    df = df[list(columns)] if columns else df
    more = len(df) - max_rows
    df = df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    tail = f"<p><em>{more} more rows in the CSV</em></p>" if more > 0 else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}"


def img(path: str | os.PathLike, alt: str = "") -> str:
    """An <img> with the PNG embedded as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure><img alt="{esc(alt or Path(path).stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(Path(path).name)}</figcaption></figure>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.8em;color:#666}
.verdict{font-weight:600}.holds{color:#1a7f37}.reversed{color:#b35900}.ns{color:#666}
"""


def verdict_html(v: str) -> str:
    """A verdict ("holds", "reversed", "not significant") as a coloured span."""
    cls = {"holds": "holds", "reversed": "reversed"}.get(v, "ns")
    return f'<span class="verdict {cls}">{esc(v)}</span>'


def render(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The whole report as one HTML string (figures embedded)."""
    toc = "".join(f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(
        f'<h2 id="s{i}">{esc(s.title)}</h2>{s.html}' + "".join(img(f) for f in s.figures)
        for i, s in enumerate(sections)
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}<ol>{toc}</ol>{body}</body></html>"
    )


def write(
    out: str | os.PathLike, title: str, sections: Sequence[Section], summary: Mapping[str, Any], intro: str = ""
) -> Path:
    """Writes ``out/report.html`` and ``out/summary.json``; returns the report's path."""
    out = Path(out)
    rundir.write_json(out / "summary.json", _finite(summary))
    rundir.atomic_write_bytes(out / "report.html", render(title, sections, intro).encode())
    return out / "report.html"


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so summary.json is strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) or hasattr(obj, "dtype"):
        try:
            f = float(obj)
        except (TypeError, ValueError):
            return obj
        if hasattr(obj, "dtype") and obj.dtype.kind in "iub":
            return obj.item()
        return f if math.isfinite(f) else None
    return obj


# ------------------------------------------------------------------------- the study's sections

STATE_WORDS = {
    "diverged": "diverged",
    "exploded": "exploded (weights or loss blew up, still finite)",
    "not_learned": "did not learn (accuracy within the chance margin)",
    "below_min_accuracy": "below --min_accuracy",
}


def _present(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in df.columns]


def left_out_words(s: Mapping[str, Any]) -> str:
    """ "9 diverged, 4 exploded ... left out" (or "none left out") from a zoo summary."""
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
    """The networks left out (or flagged but included), with seed, hyperparameters and why."""
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
    """How many of the claim tests hold / are reversed: counted on Holm-adjusted p-values."""
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
    """The seed-dispersion result: do cells that train well have seeds that end up alike?"""
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
    """The headline in words: what the zoo shows about optimal vs suboptimal networks."""
    c = s["claim"]
    v = c["verdict"]
    what = {
        "holds": "optimal networks are more alike than suboptimal ones",
        "reversed": "suboptimal networks are more alike than optimal ones",
    }.get(v, "there is no significant difference in how alike optimal and suboptimal networks are")
    txt = (
        f"In words: {what} (whole network, {esc(c['primary_metric'])} distance: mean within the optimal group "
        f"{fmt(c['within_optimal'])}, within the suboptimal group {fmt(c['within_suboptimal'])}, ratio "
        f"{fmt(c['ratio'])}, permutation p = {fmt(c.get('p_value', c['p_greater']))}: the pre-specified "
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
    """The report's first paragraph: the grouping in force, what was left out, what the zoo shows; then
    the headline under the other reasonable groupings (`summary["sensitivity"]`)."""
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
    """Sections answering the study's questions for one zoo, from `analysis.zoo_summary`'s output."""
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
            f"permutation p = {fmt(c['p_greater'])}"
            f"{' (exact)' if c.get('exact') else ''}; 95% bootstrap interval of the difference "
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
