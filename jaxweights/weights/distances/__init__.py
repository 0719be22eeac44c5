"""Distances between the weights of N networks: one N x N matrix per group, computed in blocks.

``pairwise(params, metric)`` is the entry point (``matrices.py``); the per-pair kernels (W1, KS, energy,
Jensen-Shannon, symmetric KL of KDEs) are in ``kernels.py``, the blocked and sharded engines in
``engine.py``, the exact all-pairs KS in ``ks.py``, the quantile sketches in ``sketches.py``, the metrics on
a group in ``metrics.py`` and ``vectors.py``, the names in ``registry.py`` and the output in ``io.py``.
"""

from jaxweights.weights.distances.io import write
from jaxweights.weights.distances.kernels import (
    energy_1d,
    energy_sorted,
    jensenshannon,
    kde_logdensity,
    ks_1d,
    ks_sorted,
    symmetric_kl_log,
    wasserstein_1d,
)
from jaxweights.weights.distances.ks import ks_exact
from jaxweights.weights.distances.matrices import compute, pairwise
from jaxweights.weights.distances.registry import BUILTIN, Distance, register_distance, registered_distances
from jaxweights.weights.distances.sketches import cell_means
from jaxweights.weights.units import finite_networks

__all__ = [
    "BUILTIN",
    "Distance",
    "cell_means",
    "compute",
    "energy_1d",
    "energy_sorted",
    "finite_networks",
    "jensenshannon",
    "kde_logdensity",
    "ks_1d",
    "ks_exact",
    "ks_sorted",
    "pairwise",
    "register_distance",
    "registered_distances",
    "symmetric_kl_log",
    "wasserstein_1d",
    "write",
]
