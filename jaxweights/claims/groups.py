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

from jaxweights.weights import compute

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
    """Accuracy of guessing uniformly among `num_classes` classes: 1 / num_classes.

    Args:
      num_classes: number of classes.

    Returns:
      The chance accuracy, a fraction in (0, 1].

    Raises:
      ClaimError: `num_classes` is below 1.
    """
    if int(num_classes) < 1:
        raise ClaimError(f"num_classes: {num_classes!r} must be >= 1")
    return 1.0 / int(num_classes)


def nonfinite_params(params: Mapping[str, Any], n: int | None = None) -> np.ndarray:
    """Networks with any non-finite (NaN or infinite) parameter.

    Args:
      params: stacked parameters (nested or '/'-flat dict), networks axis N first.
      n: number of networks, used only when `params` has no leaf.

    Returns:
      (N,) bool mask, True for a network with a non-finite parameter (length `n`, or 0, when
      `params` has no leaf).
    """
    bad = None
    for w in compute.flatten(params).values():
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
    """The columns of a per-network table that define a hyperparameter cell (see `hyperparameter_cells`).

    Args:
      table: a per-network table (e.g. the last epoch's metrics).

    Returns:
      Its column names not in `NOT_HYPERPARAMETERS`, in table order.
    """
    return [c for c in table.columns if c not in NOT_HYPERPARAMETERS]


def hyperparameter_cells(table: pd.DataFrame) -> np.ndarray:
    """The hyperparameter cell of every row: one id per distinct combination of the hyperparameter columns.

    Hyperparameter columns are all columns except `NOT_HYPERPARAMETERS` (network, seed, metrics and
    health flags); a static `group` or `zoo` column counts, since it names a static choice. Networks of
    one cell differ only by seed; a missing value is a value of its own.

    Args:
      table: a per-network table, one row per network.

    Returns:
      (N,) int64 cell ids, numbered 0.. in order of first appearance; all 0 when the table has no
      hyperparameter column.
    """
    cols = hyperparameter_columns(table)
    if not cols:
        return np.zeros(len(table), np.int64)
    codes, _ = pd.MultiIndex.from_frame(table[cols].astype(object).where(table[cols].notna(), "<nan>")).factorize()
    return np.asarray(codes, np.int64)


def diverged_mask(acc_N, diverged_N=None, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """Networks in state "diverged" (`network_states`): flagged, non-finite accuracy or weights.

    Args:
      acc_N: (N,) test accuracy per network.
      diverged_N: the run's (N,) `diverged` flags (optional; NaN reads as False).
      params: stacked parameters (optional); a network with any non-finite weight is diverged.

    Returns:
      (N,) bool mask, True for a diverged network.
    """
    return network_states(acc_N, diverged_N=diverged_N, params=params) == "diverged"


def accuracy_bins(acc_N, bins: int | Sequence[float] = 4, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Bins networks by accuracy, as in the complex-network study (La Malfa et al. 2021).

    Args:
      acc_N: test accuracy per network.
      bins: a number of equal-count bins (edges at accuracy quantiles of the kept networks), or
        explicit increasing edges (networks outside them get bin -1).
      exclude: boolean mask of networks to leave out (bin -1).

    Returns:
      (bin_N, edges): int bin index per network (-1 = excluded/outside) and the bin edges.
    """
    acc_N = np.asarray(acc_N, np.float64)
    ex = np.zeros(acc_N.shape[0], bool) if exclude is None else np.asarray(exclude, bool)
    kept = acc_N[~ex]
    if np.ndim(bins) == 0:
        if int(bins) < 1 or len(kept) < int(bins):
            raise ClaimError(f"bins: {bins!r} must be between 1 and the number of kept networks ({len(kept)})")
        edges = np.unique(np.quantile(kept, np.linspace(0, 1, int(bins) + 1)))
    else:
        edges = np.asarray(bins, np.float64)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ClaimError(f"bins: {bins!r} must be an int or increasing edges")
    b = np.clip(np.searchsorted(edges, acc_N, side="right") - 1, 0, len(edges) - 2)
    inside = (acc_N >= edges[0]) & (acc_N <= edges[-1]) & ~ex
    return np.where(inside, b, -1), edges


# Runs whose metrics.csv has no `exploded` column (older runs, imported weights) are judged by
# training's loss rule (test loss above EXPLODED_LOSS_FACTOR · ln(classes), i.e. ten times a uniform
# guess's loss) and, since they do not record their initialisation (training compares max |w| with
# 100 × the network's initial max |w|), by an absolute weight bound far above any initialisation.
EXPLODED_LOSS_FACTOR = 10.0


EXPLODED_MAX_ABS_WEIGHT = 1e4


def exploded_fallback(last: pd.DataFrame, params, num_classes: int = 10) -> np.ndarray:
    """The `exploded` flag of every network, also for runs whose metrics lack the column.

    With the run's `exploded` column, its values (missing = False). Without it, a network exploded
    when its test loss exceeds `EXPLODED_LOSS_FACTOR` · ln(num_classes) (ten times a uniform guess's
    loss) or its largest |weight| exceeds `EXPLODED_MAX_ABS_WEIGHT` (1e4), taken from a
    `max_abs_weight` column when present, else from `params` (a non-finite weight counts as infinite).

    Args:
      last: the last epoch's metrics, one row per network.
      params: stacked parameters, networks axis N first (used when `last` has neither `exploded`
        nor `max_abs_weight`).
      num_classes: classes of the task.

    Returns:
      (N,) bool flags.
    """
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
    for w in compute.flatten(params).values():
        w = np.abs(np.asarray(w, np.float64).reshape(len(last), -1))
        m = np.where(np.isfinite(w), w, np.inf).max(1, initial=0)
        top = m if top is None else np.maximum(top, m)
    return top


# the keyword options of `network_groups` that say which networks are analysed and how they are split
GROUPING_DEFAULTS = {
    "quantile": 0.25,
    "threshold": None,
    "min_accuracy": None,
    "include_exploded": False,
    "include_not_learned": False,
    "num_classes": 10,
    "chance_margin": 0.05,
}


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

    Args:
      last: the last epoch's metrics, one row per network.
      params: stacked parameters (networks axis first).
      quantile, threshold, seed: the split (`split_groups`).
      min_accuracy, include_exploded, include_not_learned: who is analysed.
      num_classes, chance_margin: the not-learned rule (`network_states`).

    Returns:
      DataFrame: network, seed and hyperparameter columns, test_acc, test_loss, max_abs_weight, cell,
      state, analysed (bool), why (empty for analysed networks), label (OPTIMAL ... EXCLUDED), group.
    """
    last = last.sort_values("network").reset_index(drop=True)
    acc = last.test_acc.to_numpy(np.float64)
    top = _max_abs_weight(last, params)
    state = network_states(
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
    out["cell"] = hyperparameter_cells(last)
    out["state"] = state
    chance = chance_accuracy(num_classes)
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
    labels = split_groups(acc, quantile=quantile, threshold=threshold, exclude=excluded, seed=seed)
    out["label"] = labels
    out["group"] = [st if ex else GROUP_NAMES[int(v)] for v, ex, st in zip(labels, excluded, out.state)]
    return out
