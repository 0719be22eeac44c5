"""Predicting accuracy from weight statistics (Unterthiner et al. 2020, arXiv 2002.11448).

Features are the per-layer mean, variance and quantiles {0, 25, 50, 75, 100} of kernels and biases; a ridge
regressor (`sklearn.linear_model.RidgeCV`) and gradient boosting are scored by R² and Kendall τ on held-out
hyperparameter cells (`sklearn.model_selection.GroupKFold`), beside a hyperparameters-only baseline on the same folds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from jaxweights.claims.groups import ClaimError, hyperparameter_columns
from jaxweights.claims.rank_correlations import kendall_tau
from jaxweights.weights import compute, stats

FEATURE_QUANTILES = (0, 25, 50, 75, 100)


def weight_features(params) -> tuple[list[str], np.ndarray]:
    """Unterthiner et al. (2020) features: per leaf mean, variance and quantiles {0,25,50,75,100}.

    Returns:
      (names, X_NxF) with names like ``"Dense_0/kernel:q25"``.

    Args:
      params: stacked parameters (networks axis first).

    Returns:
      (names, (N, F) features): per leaf mean, variance and quantiles {0, 25, 50, 75, 100}
      (Unterthiner et al. 2020, arXiv 2002.11448).
    """
    arrays = compute.statistics_arrays(params, statistics=("mean", "var", "quantiles"), per="leaf")
    qi = [stats.QUANTILES.index(q) for q in FEATURE_QUANTILES]
    names, cols = [], []
    for leaf, a in arrays.items():
        names += [f"{leaf}:mean", f"{leaf}:var"] + [f"{leaf}:q{q}" for q in FEATURE_QUANTILES]
        cols += [a["mean"].reshape(-1, 1), a["var"].reshape(-1, 1), np.asarray(a["quantiles"])[:, qi]]
    return names, np.concatenate(cols, 1).astype(np.float64)


def hyperparameter_features(hparams: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The numeric dynamic hyperparameters that vary in the zoo (log10 of the positive scale ones).

    Args:
      hparams: one row per network (``hparams.csv`` or the last epoch of ``metrics.csv``); identifiers,
        metrics and health flags (`groups.NOT_HYPERPARAMETERS`, e.g. test_acc, max_abs_weight) are
        ignored, so nothing measured on the trained network leaks into the baseline.

    Returns:
      (names, x_NxF): the F numeric, non-boolean hyperparameter columns with more than one value, and
      their (N, F) float64 values (log10 for learning_rate, init_scale and weight_decay when all
      positive); ``([], (N, 0))`` when none varies.
    """
    cols = [
        c
        for c in hyperparameter_columns(hparams)
        if pd.api.types.is_numeric_dtype(hparams[c])
        and not pd.api.types.is_bool_dtype(hparams[c])
        and hparams[c].nunique() > 1
    ]
    out = []
    for c in cols:
        v = hparams[c].to_numpy(np.float64)
        out.append(np.log10(v) if (v > 0).all() and c in ("learning_rate", "init_scale", "weight_decay") else v)
    if not out:
        return [], np.zeros((len(hparams), 0))
    return cols, np.stack(out, 1)


RIDGE_ALPHAS = tuple(10.0 ** np.arange(-3, 4))


def cell_folds(groups_N, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) fold index per network, whole groups (hyperparameter cells) per fold.

    scikit-learn's ``GroupKFold(shuffle=True)``: no group is in two folds, so a held-out network's
    cell never appears among the training networks. With a single group (a seeds-only zoo) there is
    no cell to leak and each network is its own group.

    Args:
      groups_N: group (hyperparameter cell) per network.
      folds: number of folds (at most the number of groups).
      seed: seed of the assignment of groups to folds.

    Returns:
      (N,) fold index per network; all networks of a group share a fold.
    """
    from sklearn.model_selection import GroupKFold

    groups_N = np.asarray(groups_N)
    if len(np.unique(groups_N)) < 2:
        groups_N = np.arange(len(groups_N))
    k = min(int(folds), len(np.unique(groups_N)))
    if k < 2:
        raise ClaimError(f"folds: {folds!r} must be >= 2 (and the zoo needs >= 2 networks)")
    fold_N = np.empty(len(groups_N), np.int64)
    for f, (_, test) in enumerate(GroupKFold(k, shuffle=True, random_state=seed).split(groups_N, groups=groups_N)):
        fold_N[test] = f
    return fold_N


def predict_accuracy(
    features: Mapping[str, tuple[list[str], np.ndarray]], acc_N, *, groups_N=None, folds: int = 5, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicts test accuracy of held-out hyperparameter cells from each feature set.

    Folds come from `cell_folds(groups_N)`: pass the hyperparameter cells (`groups.hyperparameter_cells`)
    so that seeds of one cell are never on both sides; otherwise the score measures memorised cells.
    Every feature set (weights and the hyperparameters-only baseline) is scored on the same folds.
    Models: "ridge" (scikit-learn's ``RidgeCV`` on standardised features, alpha in `RIDGE_ALPHAS` by
    efficient leave-one-out on the training fold; predictions clipped to the training targets' range)
    and "gradient_boosting" (``GradientBoostingRegressor``). Non-finite feature columns are dropped.
    Scores on the out-of-fold predictions: R² (``sklearn.metrics.r2_score``) and Kendall's tau.

    Args:
      features: ``{name: (names, X_NxF)}``, e.g. ``{"weights": weight_features(p), "hyperparameters": ...}``.
      acc_N: accuracy of the kept networks (rows of every X).
      groups_N: cell id per network (default: every network its own group, i.e. plain k-fold).
      folds: number of folds (at most the number of groups).
      seed: fold assignment and boosting seed.

    Returns:
      (scores, predictions): scores has columns features, model, r2, kendall_tau, n_features, n_folds;
      predictions has row, fold, accuracy and one column per features × model.
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(acc_N, np.float64)
    n = len(y)
    if n < 4:
        raise ClaimError(f"predict_accuracy: needs at least 4 networks, got {n}")
    fold_N = cell_folds(np.arange(n) if groups_N is None else groups_N, folds, seed)
    k = int(fold_N.max()) + 1
    rows, preds = [], {"row": np.arange(n), "fold": fold_N, "accuracy": y}
    for fname, (_names, x) in features.items():
        x = np.asarray(x, np.float64)
        x = x[:, np.isfinite(x).all(0)]  # e.g. a variance that overflowed float32 in a blown-up network
        if x.shape[1] == 0:
            continue
        for model in ("ridge", "gradient_boosting"):
            yhat = np.empty(n)
            for f in range(k):
                test, train = fold_N == f, fold_N != f
                if model == "ridge":  # clipped to the training targets' range: a blown-up network's
                    # extreme features must not extrapolate to accuracies of 1e6
                    r = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x[train], y[train])
                    yhat[test] = np.clip(r.predict(x[test]), y[train].min(), y[train].max())
                else:
                    gb = GradientBoostingRegressor(
                        n_estimators=200, max_depth=2, learning_rate=0.05, subsample=1.0, random_state=seed
                    )
                    yhat[test] = gb.fit(x[train], y[train]).predict(x[test])
            preds[f"{fname}:{model}"] = yhat
            rows.append(
                {
                    "features": fname,
                    "model": model,
                    "r2": float(r2_score(y, yhat)),
                    "kendall_tau": kendall_tau(y, yhat),
                    "n_features": x.shape[1],
                    "n_folds": k,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(preds)
