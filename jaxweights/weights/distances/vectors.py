"""Euclidean and cosine distances between standardised statistic vectors of the networks.

Each network of a group is described by its statistics (``compute.statistic_vectors``: moments, quantiles,
norms, as in Unterthiner et al. 2020, arXiv 2002.11448), z-scored with the core networks' mean and sd
(ddof 0; constant columns -> 0; columns undefined in a core network dropped with a warning), and compared
with ``scipy.spatial.distance.cdist`` in float64. ``"__all__"`` concatenates every leaf's vector.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import scipy.spatial.distance

from jaxweights.weights.binning import core_networks
from jaxweights.weights.compute import statistic_vectors
from jaxweights.weights.stats import ALL
from jaxweights.weights.units import finite_networks, group_names, groups, normalise_per

log = logging.getLogger(__name__)


def _group_core(params, per, net_ok):
    """``{group: (ok_N, core_N)}``: finite networks (``net_ok``) and core networks (``histograms.core_networks``)."""
    out = {}
    for k, w_ND in groups(params, per).items():
        w = np.asarray(w_ND)
        ok = np.isfinite(w).all(1) & net_ok
        lo, hi = np.where(ok, w.min(1), 0), np.where(ok, w.max(1), 0)
        out[k] = ok, np.asarray(core_networks(jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(ok)))
    return out


def statistic_pairwise(params, other, metric, per, layers, statistics, b):
    """``{group: dist}`` of ``metric`` ("euclidean" or "cosine") between z-scored statistic vectors.

    Args:
      params: parameters, networks axis first.
      other: optional second population (or None).
      metric: "euclidean" or "cosine" (``scipy.spatial.distance.cdist``).
      per: "leaf", "layer", "network" or a tuple of them.
      layers: optional group names to keep.
      statistics: statistics of each vector (``stats.SUMMARY`` by default in :func:`pairwise`).
      b: block size (unused: cdist on the host).

    Returns:
      ``{group: (N, M) float64}``; non-finite networks get NaN rows and columns.
    """
    per = normalise_per(per)
    want = tuple(p for p in per if p != "network")
    base = tuple(set(want) | ({"leaf"} if "network" in per else set()))
    va = statistic_vectors(params, statistics=statistics, per=base)
    vb = va if other is None else statistic_vectors(other, statistics=statistics, per=base)
    ca = _group_core(params, base, finite_networks(params))
    cb = ca if other is None else _group_core(other, base, finite_networks(other))
    z, dropped = {}, []
    for key, (names, xa) in va.items():
        if key not in vb:
            continue
        n = len(xa)
        both = xa if other is None else np.concatenate([xa, vb[key][1]])
        core = ca[key][1] if other is None else np.concatenate([ca[key][1], cb[key][1]])
        # columns, mean and sd from the core networks only (finite, not exploded), so that
        # non-finite or exploded networks never move the healthy networks' standardised vectors
        keep = np.isfinite(both[core]).all(0)
        dropped += [(key, name) for name, good in zip(names, keep) if not good]
        both, ref = both[:, keep], both[core][:, keep]
        mu, sd = (ref.mean(0), ref.std(0)) if len(ref) else (np.zeros(both.shape[1]), np.zeros(both.shape[1]))
        both = np.where(sd > 0, (both - mu) / np.where(sd > 0, sd, 1), 0.0)
        ok = ca[key][0] if other is None else np.concatenate([ca[key][0], cb[key][0]])
        both[~(np.isfinite(both).all(1) & ok)] = np.nan  # non-finite network or undefined kept column
        z[key] = (both[:n], both[n:])
    if dropped:
        log.warning(
            "%s distance: %d statistic column(s) undefined in a core network and dropped, e.g. %r of layer %r",
            metric,
            len(dropped),
            dropped[0][1],
            dropped[0][0],
        )
    keys = [k for k in group_names(params, want) if k in z] if want else []
    if "network" in per:  # whole-network vector: every leaf's standardised statistics
        leaves = [k for k in group_names(params, "leaf") if k in z]
        z[ALL] = tuple(np.concatenate([z[k][i] for k in leaves], 1) for i in (0, 1))
        keys.append(ALL)
    if layers is not None:
        keys = [k for k in keys if k in layers]
    out = {}
    for k in keys:  # float64 on the host: z-scores of exploded networks (~1e60) overflow float32
        xa, xb = z[k]
        xb = xa if other is None else xb
        oka, okb = np.isfinite(xa).all(1), np.isfinite(xb).all(1)
        d = np.full((len(xa), len(xb)), np.nan)
        if oka.any() and okb.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                d[np.ix_(oka, okb)] = scipy.spatial.distance.cdist(xa[oka], xb[okb], metric)
        if other is None:
            np.fill_diagonal(d, np.where(oka, 0.0, np.nan) if metric == "euclidean" else np.diag(d))
        out[k] = d
    return out
