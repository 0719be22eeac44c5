"""Network states and the one definition of optimal / suboptimal networks.

Every analysis that speaks of "optimal" networks (claims, dynamics, the report) takes its labels
from `split_groups`; every analysis that leaves networks out takes the reason from `network_states`.

States, in order of precedence (a network gets the first that applies):

  * ``diverged``: flagged by training, or a non-finite accuracy, or any non-finite parameter;
  * ``exploded``: flagged by training (weights or loss blew up while staying finite);
  * ``not_learned``: test accuracy below chance (1 / classes) + `chance_margin`: the network did not
    learn the task; it is a group of its own, not the bottom of the "suboptimal" group;
  * ``ok``.

Groups: the top `quantile` of the analysed networks by accuracy is optimal, the bottom `quantile`
suboptimal (or a threshold). A zoo is a designed experiment whose grid order is meaningful, so
exact ties at a cut are broken by a seeded random order, never by network index.

Hyperparameter cells: networks that differ only by seed share a cell (`hyperparameter_cells`);
grid-respecting tests and grouped cross-validation use cells as their unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxweights import stats

OPTIMAL, MIDDLE, SUBOPTIMAL, EXCLUDED = 1, 0, -1, -2
GROUP_NAMES = {OPTIMAL: "optimal", MIDDLE: "middle", SUBOPTIMAL: "suboptimal", EXCLUDED: "excluded"}
STATES = ("ok", "diverged", "exploded", "not_learned")

# Columns of a per-network table that are not hyperparameters: identifiers, per-epoch metrics and
# training-health flags. Everything else (dynamic hyperparameters, a static `group` or `zoo`) is.
NOT_HYPERPARAMETERS = (
    "network",
    "seed",
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "diverged",
    "exploded",
    "max_abs_weight",
    "state",
)


class ClaimError(ValueError):
    """Grouping options or inputs the analysis cannot use (names the option and value)."""


def chance_accuracy(num_classes: int) -> float:
    """Accuracy of guessing uniformly among `num_classes` classes: 1 / num_classes."""
    if int(num_classes) < 1:
        raise ClaimError(f"num_classes: {num_classes!r} must be >= 1")
    return 1.0 / int(num_classes)


def nonfinite_params(params: Mapping[str, Any], n: int | None = None) -> np.ndarray:
    """Boolean (N,) mask: networks with any non-finite parameter (stacked params, networks axis first)."""
    bad = None
    for w in stats.flatten(params).values():
        w = np.asarray(w)
        b = ~np.isfinite(w.reshape(w.shape[0], -1)).all(1)
        bad = b if bad is None else bad | b
    if bad is None:
        return np.zeros(0 if n is None else n, bool)
    return bad


def network_states(
    acc_N,
    *,
    diverged_N=None,
    exploded_N=None,
    params: Mapping[str, Any] | None = None,
    num_classes: int = 10,
    chance_margin: float = 0.05,
) -> np.ndarray:
    """The state of every network: "diverged" > "exploded" > "not_learned" > "ok" (first that applies).

    Args:
      acc_N: test accuracy per network.
      diverged_N, exploded_N: the run's `diverged` / `exploded` flags (optional; older runs lack
        `exploded`).
      params: stacked parameters (optional); a network with any non-finite weight is diverged.
      num_classes: classes of the task (chance = 1 / num_classes).
      chance_margin: a network whose accuracy is below chance + margin did not learn.

    Returns:
      (N,) array of strings from `STATES`.
    """
    acc_N = np.asarray(acc_N, np.float64)
    n = acc_N.shape[0]
    if not chance_margin >= 0:
        raise ClaimError(f"chance_margin: {chance_margin!r} must be >= 0")
    chance = chance_accuracy(num_classes)
    # a missing flag (NaN: a run written before the column existed) reads as False
    flag = lambda f: np.zeros(n, bool) if f is None else np.nan_to_num(np.asarray(f, np.float64).reshape(n)) != 0
    div = ~np.isfinite(acc_N) | flag(diverged_N)
    if params is not None:
        div |= nonfinite_params(params, n)
    exp = flag(exploded_N) & ~div
    with np.errstate(invalid="ignore"):
        nl = (acc_N < chance + chance_margin) & ~div & ~exp
    out = np.full(n, "ok", dtype=object)
    out[nl], out[exp], out[div] = "not_learned", "exploded", "diverged"
    return out.astype(str)


def split_groups(
    acc_N,
    *,
    quantile: float | None = 0.25,
    threshold: float | Sequence[float] | None = None,
    exclude=None,
    seed: int = 0,
) -> np.ndarray:
    """Labels networks optimal / middle / suboptimal by test accuracy.

    Args:
      acc_N: test accuracy per network.
      quantile: with no threshold, the top `quantile` fraction of the non-excluded networks (by rank,
        round(quantile * n), at least 2, at most n // 2) is optimal and the bottom fraction suboptimal;
        0 < quantile <= 0.5. Networks with exactly equal accuracy at a cut are ordered by a random
        permutation drawn from `seed`, so which of them is in the group does not follow grid order.
      threshold: a number t (optimal: acc >= t, suboptimal: acc < t) or a pair (lo, hi)
        (suboptimal: acc < lo, optimal: acc >= hi, middle in between). Overrides `quantile`.
      exclude: boolean (N,) mask of networks to leave out (label EXCLUDED), e.g.
        ``network_states(...) != "ok"``.
      seed: seed of the tie-breaking order.

    Returns:
      int (N,) labels: OPTIMAL, MIDDLE, SUBOPTIMAL or EXCLUDED.

    Raises:
      ClaimError: if an option is out of range or a group would hold fewer than 2 networks.
    """
    acc_N = np.asarray(acc_N, np.float64)
    n = acc_N.shape[0]
    ex = np.zeros(n, bool) if exclude is None else np.asarray(exclude, bool).reshape(n)
    ex = ex | ~np.isfinite(acc_N)
    labels = np.full(n, MIDDLE, np.int64)
    labels[ex] = EXCLUDED
    ok = np.flatnonzero(~ex)
    if threshold is not None:
        lo, hi = (threshold, threshold) if np.ndim(threshold) == 0 else tuple(threshold)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise ClaimError(f"threshold: {threshold!r} must be a number or a pair lo <= hi")
        labels[ok[acc_N[ok] >= hi]] = OPTIMAL
        labels[ok[acc_N[ok] < lo]] = SUBOPTIMAL
        what = f"threshold: {threshold!r}"
    else:
        if quantile is None or not 0 < quantile <= 0.5:
            raise ClaimError(f"quantile: {quantile!r} must be in (0, 0.5]")
        # at most half each: at quantile 0.5 and an odd count the median network is in neither group
        k = min(max(2, int(round(quantile * len(ok)))), len(ok) // 2)
        if k < 2:
            raise ClaimError(f"quantile: {quantile} needs at least 4 analysed networks; the zoo has {len(ok)}")
        tiebreak = np.random.default_rng(seed).permutation(len(ok))
        order = ok[np.lexsort((tiebreak, acc_N[ok]))]  # by accuracy, ties in random order
        labels[order[:k]] = SUBOPTIMAL
        labels[order[-k:]] = OPTIMAL
        what = f"quantile: {quantile!r}"
    for g in (OPTIMAL, SUBOPTIMAL):
        if (labels == g).sum() < 2:
            raise ClaimError(f"{what} leaves {(labels == g).sum()} {GROUP_NAMES[g]} network(s); each group needs >= 2")
    return labels


def hyperparameter_columns(table: pd.DataFrame) -> list[str]:
    """The columns of a per-network table that define a hyperparameter cell (see `hyperparameter_cells`)."""
    return [c for c in table.columns if c not in NOT_HYPERPARAMETERS]


def hyperparameter_cells(table: pd.DataFrame) -> np.ndarray:
    """(N,) int cell id per row: one id per distinct combination of the hyperparameter columns.

    Hyperparameter columns are all columns except `NOT_HYPERPARAMETERS` (network, seed, metrics and
    health flags); a static `group` or `zoo` column counts, since it names a static choice. Networks of
    one cell differ only by seed. Ids are numbered 0.. in order of first appearance; a table with no
    hyperparameter column is one cell.
    """
    cols = hyperparameter_columns(table)
    if not cols:
        return np.zeros(len(table), np.int64)
    codes, _ = pd.MultiIndex.from_frame(table[cols].astype(object).where(table[cols].notna(), "<nan>")).factorize()
    return np.asarray(codes, np.int64)
