"""The headline test under the other reasonable groupings (quantile, not-learned and exploded networks in or out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from jaxweights.claims.groups import OPTIMAL, SUBOPTIMAL, ClaimError, network_groups
from jaxweights.claims.multiplicity import two_sided, verdict
from jaxweights.claims.permutation import cell_permutation_test, group_distances, permutation_test
from jaxweights.claims.undefined import quiet_undefined
from jaxweights.weights import compute, distances, stats

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
    the cell-level one (whole hyperparameter cells exchangeable, `cell_permutation_test`), the
    verdicts at `alpha` (each row is one pre-specified test: no multiplicity adjustment), or why that
    grouping cannot be tested.

    Distances are the whole-network ones over every non-diverged network, computed once; each row
    uses the rows and columns of its networks (exact for distances of two networks alone:
    Wasserstein, KS, energy; the histogram, KDE and statistic-vector metrics keep the ranges and
    z-scoring of the pool's core networks).

    Args:
      params: stacked parameters (networks axis first).
      last: the last epoch's metrics, one row per network.
      keep_N: the networks analysed under the grouping in force.
      metric: the headline distance metric.
      choice: the grouping options in force (`network_groups`'s).
      n_permutations, alpha, block_size: test and distance options.

    Returns:
      One dict per grouping (the rows of sensitivity.csv).
    """
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
    flat = {k: np.asarray(v)[pool] for k, v in compute.flatten(params).items()}
    with quiet_undefined():
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
                except ClaimError as e:
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
                gd = group_distances(d, lab)
                pt = permutation_test(d, lab, n_permutations=n_permutations, seed=seed)
                p = float(two_sided(pt.p_greater, pt.p_less))
                row.update(
                    n_optimal=int((lab == OPTIMAL).sum()),
                    n_suboptimal=int((lab == SUBOPTIMAL).sum()),
                    within_optimal=gd["within_optimal"],
                    within_suboptimal=gd["within_suboptimal"],
                    ratio=gd["ratio"],
                    p_value=p,
                    verdict=verdict(p, np.sign(pt.p_less - pt.p_greater), alpha),
                )
                try:
                    cp = cell_permutation_test(
                        d, acc[a], g.cell.to_numpy()[a], quantile=q, n_permutations=n_permutations, seed=seed
                    )
                    pc = float(two_sided(cp.p_greater, cp.p_less))
                    row.update(p_cell=pc, verdict_cell=verdict(pc, np.sign(cp.p_less - cp.p_greater), alpha))
                except ClaimError as e:
                    row.update(verdict_cell=f"not testable: {e}")
                rows.append(row)
    return rows
