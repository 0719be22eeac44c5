"""The entry point of the distances: ``pairwise`` (one N x N matrix per group, in blocks) and ``compute``.

Metrics of ``pairwise(params, metric)`` (each equal to scipy on the same weights):
  * "wasserstein": W1 (``scipy.stats.wasserstein_distance``). Equal sizes: ``mean|s_i - s_j|`` of
    sorted weights. Unequal: W1 = int_0^1 |Q_u - Q_v| dp; both step quantile functions are constant
    between consecutive points of the merged grid {k/n} U {l/m} (exact integers in units 1/(nm)).
  * "ks": KS statistic (``scipy.stats.ks_2samp(u, v).statistic``).
  * "energy": sqrt(2 int (F_u - F_v)^2) (``scipy.stats.energy_distance``); O(D log D) per pair.
  * "jensenshannon": base 2, on histograms of ``bins`` bins over the core networks' range
    (``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
  * "kde_kl": ``KL(p||q) + KL(q||p)`` (nats) of Gaussian KDEs on ``grid`` (1000) points spanning the
    core networks' range, Scott's bandwidth ``std(ddof=1) * D**(-1/5)`` as
    ``scipy.stats.gaussian_kde``, values normalised to sum 1 as ``scipy.stats.entropy``. Kept in log
    space: finite where scipy's densities underflow to 0 and it returns inf.
  * "euclidean" / "cosine": between statistic vectors (``statistics``) z-scored with the core
    networks' mean and sd (ddof 0; constant columns -> 0; columns undefined in a core network
    dropped with a warning), ``scipy.spatial.distance.cdist`` in float64.
    ``per="network"`` gives ``"__all__"``, the concatenation of every leaf's vector.

Memory: only blocks of B = ``block_size`` networks on or above the diagonal are computed (then
mirrored). Per group of D weights the extra memory is one sorted copy (N x D, sorted by numpy
on CPU), a chunked copy for W1 or int32 bin counts for KS (N D / 4 bytes), and the float64 result
(8 N^2 bytes); per block O(B^2) for W1 (D streamed in chunks of 4096), histograms, KDE and
statistic vectors, O(B^2 D / 1024) for KS and O(B D) for energy and custom "sorted" distances.
Nothing is O(N^2 D).

Exact KS: ``ks.py``; quantile sketches (``sketch=Q``) with per-pair error bounds: ``sketches.py``.

Bad networks: a network with a NaN or infinite weight anywhere gets NaN rows and columns. Shared
quantities (histogram edges, KDE grid, KS sketch edges, z-scoring) come from the *core* networks
(``histograms.core_networks``: finite, ``max|w|`` within ``histograms.OUTLIER_FACTOR`` of the median), so no
other network changes a core network's distances; a pair with an exploded (finite, non-core)
network uses the pair's own range for histograms and KDEs.

References: Villani (2003), Topics in Optimal Transportation, W1 via quantile functions; Kolmogorov
(1933) and Smirnov (1948), the two-sample KS statistic; Szekely
& Rizzo (2013), Energy statistics; Lin (1991), Jensen-Shannon divergence; La Malfa et al. (2021),
arXiv 2110.02628 (symmetric KL of KDEs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxweights.weights.distances.engine import pairs
from jaxweights.weights.distances.kernels import jensenshannon
from jaxweights.weights.distances.metrics import energy, hist_metric, kde_kl, ks, w1
from jaxweights.weights.distances.registry import _REGISTRY, BUILTIN, Distance, registered_distances
from jaxweights.weights.distances.vectors import statistic_pairwise
from jaxweights.weights.stats import SUMMARY
from jaxweights.weights.units import finite_networks, groups, non_finite_networks, sort_rows, warn_non_finite

log = logging.getLogger(__name__)

_SAMPLE = {"wasserstein": w1, "ks": ks, "energy": energy}


def _clean(x, net_ok):
    """Rows of networks with non-finite weights are replaced by a finite row (result set to NaN later)."""
    ok = np.asarray(jnp.all(jnp.isfinite(x), axis=1)) & net_ok
    if not ok.all():
        x = jnp.where(jnp.asarray(ok)[:, None], x, x[int(np.argmax(ok))] if ok.any() else 0)
    return x, ok


def pairwise(
    params,
    metric: str | Callable,
    *,
    other=None,
    per="leaf",
    layers=None,
    block_size: int = 16,
    sketch: int | None = None,
    with_error: bool = False,
    bins: int = 32,
    grid: int = 1000,
    statistics=SUMMARY,
    kind: str = "sorted",
    mesh=None,
):
    """N x N distances between the networks' weights, one matrix per group.

    Args:
      params: parameters, networks axis first (nested or '/'-flat dict).
      metric: a built-in or registered name (see module docstring), or a callable
        ``fn(a_sorted, b_sorted)`` / ``fn(p, q)`` (with ``kind``); assumed symmetric
        (only i <= j is computed within a population).
      other: optional second population (any architecture): returns N x M matrices
        between same-named groups (or ``layers={name: other_name}``); sizes may differ.
      per: "leaf", "layer", "network" or a tuple (keys: leaf path, layer path, ``"__all__"``).
      layers: restrict to these group names (a dict maps params' names to other's names).
      block_size: networks per block; the working set grows with its square.
      sketch: number of quantile cells for the approximate "wasserstein" / "ks" modes.
      with_error: also return per-pair error bounds (zero for exact results).
      bins: histogram bins for "jensenshannon" and histogram-kind distances.
      grid: KDE grid size for "kde_kl".
      statistics: statistics for "euclidean" / "cosine".
      kind: "sorted" or "histogram", for a callable ``metric``.
      mesh: optional 1-D ``"networks"`` mesh (``train.networks_mesh()``): the rows of each N x M
        matrix are split over its devices and every device holds all columns (``engine.pairs_sharded``).
        Every metric, ``other``, ``sketch`` and ``with_error`` work; the numbers equal the
        one-device ones except within-population ``ks`` with ``sketch``, which then uses the
        cell-end quantiles of the cross-population sketch (error at most 1/sketch).

    Returns:
      ``{group: dist_NxN}`` float64 numpy arrays (``(dist, err)`` dicts if ``with_error``).
      A network with a NaN or infinite weight anywhere gets NaN rows and columns in every group
      (one warning per call names them) and never changes other networks' values: shared
      ranges and standardisations come from the core networks only (``histograms.core_networks``).
    """
    if callable(metric):
        name, spec = getattr(metric, "__name__", "custom"), Distance(metric, kind)
    else:
        name, spec = metric, _REGISTRY.get(metric)
        if spec is None and name not in BUILTIN:
            raise KeyError(f"unknown distance {name!r}; known: {registered_distances()}")
    warn_non_finite(f"{name} distances", non_finite_networks(params, "network"))
    if other is not None:
        warn_non_finite(f"{name} distances (other population)", non_finite_networks(other, "network"))
    net_a = finite_networks(params)
    net_b = net_a if other is None else finite_networks(other)
    if name in ("euclidean", "cosine") and spec is None:
        out = statistic_pairwise(params, other, name, per, layers, statistics, block_size)
        return (out, {k: np.zeros_like(v) for k, v in out.items()}) if with_error else out
    ga = groups(params, per)
    gb = ga if other is None else groups(other, per)
    matched = (
        layers.items()
        if isinstance(layers, Mapping)
        else [(k, k) for k in ga if (layers is None or k in layers) and k in gb]
    )
    dists, errs = {}, {}
    for ka, kb in matched:
        x, okx = _clean(ga[ka], net_a)
        y, oky = (None, okx) if other is None else _clean(gb[kb], net_b)
        b = max(1, min(block_size, max(x.shape[0], 0 if y is None else y.shape[0])))
        err = None
        if spec is not None and spec.kind == "sorted":
            d = pairs(spec.fn, sort_rows(x), None if y is None else sort_rows(y), b, rows=True, mesh=mesh)
        elif spec is not None:
            d = hist_metric(spec.fn, x, y, okx, oky, b, bins, mesh)
        elif name in _SAMPLE:
            d, err = _SAMPLE[name](x, y, b, sketch, with_error, okx, mesh)
        elif name == "jensenshannon":
            d = hist_metric(jensenshannon, x, y, okx, oky, b, bins, mesh)
        else:
            d = kde_kl(x, y, okx, oky, b, grid, mesh)
        d = np.where(okx[:, None] & oky[None, :], d, np.nan)
        dists[ka], errs[ka] = d, np.zeros_like(d) if err is None else np.asarray(err, np.float64)
    return (dists, errs) if with_error else dists


def compute(
    params, metrics=("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean", "cosine"), **kwargs
) -> dict[str, dict[str, np.ndarray]]:
    """Runs :func:`pairwise` for several metrics.

    Args:
      params: parameters, networks axis first.
      metrics: metric names or callables.
      **kwargs: options of :func:`pairwise`.

    Returns:
      ``{metric: {group: dist_NxN}}``.
    """
    return {m if isinstance(m, str) else m.__name__: pairwise(params, m, **kwargs) for m in metrics}
