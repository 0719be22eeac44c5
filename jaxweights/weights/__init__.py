"""The weights stage: statistics, node strength and distances of a population of N networks.

* ``stats.py``: the statistic kernels of one network and their registry (``register_statistic``).
* ``units.py``: the units a statistic is computed over (leaf, layer, network) and their finite networks.
* ``binning.py``: shared histogram edges over a population (outlier-robust core range) and histograms.
* ``compute.py``: the one jitted program over all units (``compute_statistics``, ``statistics_arrays``,
  ``statistic_vectors``) and ``stats.csv``.
* ``strength.py``: node strength and layer fluctuation (La Malfa et al. 2021, arXiv 2110.02628).
* ``distances/``: N x N distances between networks (``distances.pairwise``).
"""

from jaxweights.weights import distances
from jaxweights.weights.binning import OUTLIER_FACTOR, core_networks, core_range, histogram, histograms, shared_edges
from jaxweights.weights.compute import compute_statistics, statistic_vectors, statistics_arrays
from jaxweights.weights.stats import (
    ALL,
    NEAR_ZERO,
    QUANTILES,
    SUMMARY,
    Statistic,
    register_statistic,
    registered_statistics,
)
from jaxweights.weights.strength import INPUT, chain, conv_position_strength, layer_fluctuation, node_strength
from jaxweights.weights.units import (
    finite_networks,
    group_members,
    group_names,
    groups,
    non_finite_networks,
    sort_rows,
    warn_non_finite,
)

__all__ = [
    "ALL",
    "INPUT",
    "NEAR_ZERO",
    "OUTLIER_FACTOR",
    "QUANTILES",
    "SUMMARY",
    "Statistic",
    "chain",
    "compute_statistics",
    "conv_position_strength",
    "core_networks",
    "core_range",
    "distances",
    "finite_networks",
    "group_members",
    "group_names",
    "groups",
    "histogram",
    "histograms",
    "layer_fluctuation",
    "node_strength",
    "non_finite_networks",
    "register_statistic",
    "registered_statistics",
    "shared_edges",
    "sort_rows",
    "statistic_vectors",
    "statistics_arrays",
    "warn_non_finite",
]
