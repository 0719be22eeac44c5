"""Claims about a zoo: which networks are optimal, and are they more alike than suboptimal ones?

The central claim (Zheng et al. 2024, arXiv 2408.11720): successful networks are similar to other successful
networks in their converged weight statistics and distributions, while poor networks vary.

    groups.py        network states and the one definition of optimal / suboptimal (`split_groups`, `network_groups`)
    permutation.py   within / across distances, permutation tests (networks or cells exchangeable), bootstrap
    multiplicity.py  Holm (1979) and Benjamini-Hochberg (1995) adjusted p-values, verdicts
    tables.py        the claim tables of every (metric, layer), the dispersion of every statistic
    rank_correlations.py  Spearman and Kendall correlations with accuracy
    prediction.py    accuracy from weight statistics (Unterthiner et al. 2020, arXiv 2002.11448)
    divergence.py    accuracy bins compared by KDE divergence (La Malfa et al. 2021, arXiv 2110.02628)
    depth.py         per-layer results of several zoos along depth
    undefined.py     undefined statistics: why, and one log line
    robustness.py    the headline test under other groupings
    summary.py       `claim_summary`: all of it on one zoo, as numbers and tables
"""

from __future__ import annotations

from jaxweights.claims.depth import (
    depth_profiles,
    same_pattern,
)
from jaxweights.claims.divergence import (
    GRID_CHUNK,
    bin_divergence,
    bucket,
    kde_grid_logdens,
    kde_logdensities,
    pad_samples,
)
from jaxweights.claims.groups import (
    EXCLUDED,
    EXPLODED_LOSS_FACTOR,
    EXPLODED_MAX_ABS_WEIGHT,
    GROUP_NAMES,
    GROUPING_DEFAULTS,
    MIDDLE,
    NOT_HYPERPARAMETERS,
    OPTIMAL,
    STATES,
    SUBOPTIMAL,
    ClaimError,
    accuracy_bins,
    chance_accuracy,
    diverged_mask,
    exploded_fallback,
    hyperparameter_cells,
    hyperparameter_columns,
    network_groups,
    network_states,
    nonfinite_params,
    split_groups,
)
from jaxweights.claims.multiplicity import (
    adjust_table,
    benjamini_hochberg,
    holm,
    two_sided,
    verdict,
)
from jaxweights.claims.permutation import (
    CellPermutationResult,
    PermutationResult,
    SeedDispersion,
    bootstrap_ci,
    cell_permutation_test,
    cell_summary,
    group_distances,
    permutation_test,
    seed_dispersion,
)
from jaxweights.claims.prediction import (
    FEATURE_QUANTILES,
    RIDGE_ALPHAS,
    cell_folds,
    hyperparameter_features,
    predict_accuracy,
    weight_features,
)
from jaxweights.claims.rank_correlations import (
    correlations,
    kendall_tau,
    spearman,
)
from jaxweights.claims.robustness import (
    SENSITIVITY_QUANTILES,
    sensitivity,
)
from jaxweights.claims.summary import (
    CLAIM_LEVELS,
    DEFAULT_METRICS,
    ClaimContext,
    claim_inputs,
    claim_summary,
    headline_verdicts,
    records,
)
from jaxweights.claims.tables import (
    CELL_COLUMNS,
    HEADLINE_COLUMNS,
    SEED_COLUMNS,
    cell_claim_table,
    claim_table,
    dispersion,
    seed_dispersion_table,
    verdict_counts,
    wide_statistics,
    with_grid_tests,
)
from jaxweights.claims.undefined import (
    DropUndefined,
    quiet_undefined,
    undefined_reasons,
    undefined_summary,
    warn_undefined,
)
from jaxweights.models.paths import layer_depths  # depth of a layer in execution order, as the claims use it

__all__ = [
    "GROUPING_DEFAULTS",
    "CELL_COLUMNS",
    "CLAIM_LEVELS",
    "CellPermutationResult",
    "ClaimContext",
    "ClaimError",
    "DEFAULT_METRICS",
    "DropUndefined",
    "EXCLUDED",
    "EXPLODED_LOSS_FACTOR",
    "EXPLODED_MAX_ABS_WEIGHT",
    "FEATURE_QUANTILES",
    "GRID_CHUNK",
    "GROUP_NAMES",
    "HEADLINE_COLUMNS",
    "MIDDLE",
    "NOT_HYPERPARAMETERS",
    "OPTIMAL",
    "PermutationResult",
    "RIDGE_ALPHAS",
    "SEED_COLUMNS",
    "SENSITIVITY_QUANTILES",
    "STATES",
    "SUBOPTIMAL",
    "SeedDispersion",
    "accuracy_bins",
    "adjust_table",
    "benjamini_hochberg",
    "bin_divergence",
    "bootstrap_ci",
    "bucket",
    "cell_claim_table",
    "cell_folds",
    "cell_permutation_test",
    "cell_summary",
    "chance_accuracy",
    "claim_inputs",
    "claim_summary",
    "claim_table",
    "correlations",
    "depth_profiles",
    "dispersion",
    "diverged_mask",
    "exploded_fallback",
    "group_distances",
    "headline_verdicts",
    "holm",
    "hyperparameter_cells",
    "hyperparameter_columns",
    "hyperparameter_features",
    "kde_grid_logdens",
    "kde_logdensities",
    "kendall_tau",
    "layer_depths",
    "network_groups",
    "network_states",
    "nonfinite_params",
    "pad_samples",
    "permutation_test",
    "predict_accuracy",
    "quiet_undefined",
    "records",
    "same_pattern",
    "seed_dispersion",
    "seed_dispersion_table",
    "sensitivity",
    "spearman",
    "split_groups",
    "two_sided",
    "undefined_reasons",
    "undefined_summary",
    "warn_undefined",
    "verdict",
    "verdict_counts",
    "weight_features",
    "wide_statistics",
    "with_grid_tests",
]
