"""Prints the README's "What it found" table from analysed zoos (see benchmarks/findings.sh).

    python benchmarks/findings_table.py runs/findings

One row per zoo folder holding `analysis/summary.json`: the networks and how many were left out
(diverged, exploded, did not learn), the groups, the headline test (whole-network Wasserstein-1,
networks as the unit: raw and Holm-adjusted p), the cell-level test (whole hyperparameter cells as
the unit), the headline's verdict on its own p and on Holm's over all claim tests, the seed-dispersion test (Spearman over cells of the seeds' mean pairwise distance vs
the cell's accuracy; negative rho = good cells' seeds end up alike) and the count of
(layer x metric) tests that hold after Holm's adjustment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if x != x:
        return "–"
    return f"{x:.{digits}g}"


def _range(r) -> str:
    return f"{float(r[0]):.2f}–{float(r[1]):.2f}"


def _own_verdict(c: dict, alpha: float) -> str:
    """The headline's verdict from its own two-sided p (what `analyze` writes as `claim.verdict`)."""
    if "verdict_holm" in c:
        return c["verdict"]
    p, up = float(c["p_value"]), float(c["p_less"]) - float(c["p_greater"])
    return "not significant" if not p < alpha or up == 0 else "holds" if up > 0 else "reversed"


def row(name: str, s: dict) -> str:
    g, c, sd = s["grouping"], s["claim"], s.get("seed_dispersion", {})
    holm = c.get("verdict_holm", c["verdict"])
    left = f"{s['n_diverged']} / {s['n_exploded']} / {s['n_not_learned']}"
    cell = (
        f"{_f(c.get('p_cell'))} ({c.get('n_optimal_cells', '–')} vs {c.get('n_suboptimal_cells', '–')} cells)"
        if c.get("p_cell") is not None
        else "not testable"
    )
    seed = f"ρ {_f(sd.get('rho'), 2)}, p {_f(sd.get('p_value'))} ({sd.get('n_cells', '–')} cells)" if sd else "–"
    holding = f"{c['n_holds']}/{c['n_tests']} (raw {c['n_holds_raw']})"
    return (
        f"| {name} | {s['n_networks']} ({left}) | {s['n_kept']} in {g['n_cells']} cells | "
        f"{_range(g['optimal_acc'])} | {_range(g['suboptimal_acc'])} | "
        f"{_f(c['within_optimal'])} / {_f(c['within_suboptimal'])} | {_f(c.get('p_value'))} / "
        f"{_f(c.get('p_holm'))} | {_own_verdict(c, s['alpha'])} / {holm} | {cell} | {seed} | {holding} |"
    )


def main(root: str) -> None:
    print(
        "| zoo | networks (diverged / exploded / not learned) | analysed | optimal acc | suboptimal acc "
        "| W1 within opt / sub | p / p Holm | verdict (p / Holm) | cell-level p | seed dispersion | tests holding (Holm) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in sorted(Path(root).iterdir()):
        f = d / "analysis" / "summary.json"
        if f.exists():
            print(row(d.name, json.loads(f.read_text())))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/findings")
