"""Weight statistics of a population of N networks: one jitted program over all groups, tables, ``stats.csv``.

Every statistic of ``stats.py`` is vmapped over the networks axis; all groups (leaves, layers, the whole
network) are reduced by one ``jax.tree.map`` inside one ``jax.jit``, so there is one compile per tree
structure and no Python loop over networks or layers. Distribution statistics receive a group's weights
flattened and sorted ascending (sorted once, by numpy on CPU).

Groups are formed by ``units.py``, shared histogram edges by ``binning.py``.

Undefined values (NaN with ``undefined = True``, listed in ``df.attrs["undefined"]``, logged once,
never raised) follow the rule stated in ``stats.py``.

References:
  Zheng et al., "Weight statistics of optimal and suboptimal networks", arXiv 2408.11720.
  Unterthiner et al., "Predicting neural network accuracy from weights", arXiv 2002.11448.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils

from jaxweights.io import atomic
from jaxweights.models.paths import flatten, is_kernel
from jaxweights.train import sharding
from jaxweights.weights.binning import histogram, shared_edges
from jaxweights.weights.stats import NEAR_ZERO, SUMMARY, as_matrix, resolve_statistics
from jaxweights.weights.units import (
    finite_rows,
    groups,
    non_finite_networks,
    normalise_per,
    sort_rows,
    warn_non_finite,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- the program


@functools.lru_cache(maxsize=128)
def _program(specs: tuple, bins: int) -> Callable:
    """Builds the jitted whole-tree reduction for one choice of statistics."""
    vec = [(n, s.fn) for n, s in specs if s.kind == "vector"]
    mat = [(n, s.fn) for n, s in specs if s.kind == "matrix"]
    want_hist = any(s.kind == "histogram" for _, s in specs)

    def per_group(s_ND):
        out = {n: jax.vmap(fn)(s_ND) for n, fn in vec}
        if want_hist:
            out["histogram"] = jax.vmap(histogram, (0, None))(s_ND, shared_edges(s_ND, bins))
        return out

    def per_kernel(k_N):
        m_NxRxC = jax.vmap(as_matrix)(k_N)
        return {n: jax.vmap(fn)(m_NxRxC) for n, fn in mat}

    @jax.jit
    def program(sorted_groups, kernels):
        return jax.tree.map(per_group, sorted_groups), jax.tree.map(per_kernel, kernels)

    return program


def statistics_arrays(
    params, *, statistics=None, bins: int = 32, near_zero: float = NEAR_ZERO, per="leaf", mesh=None
) -> dict[str, dict[str, np.ndarray]]:
    """Computes statistics as arrays: ``{group: {statistic: (N,) or (N, k)}}``.

    Same arguments as :func:`compute_statistics`; use this when you want arrays, not a table.

    Args:
      params: parameters, networks axis first (nested or '/'-flat dict).
      statistics: names, callables or ``{name: fn}`` (default: all registered).
      bins: histogram bins.
      near_zero: threshold of ``near_zero``.
      per: "leaf", "layer", "network" or a tuple of them.
      mesh: optional 1-D ``"networks"`` mesh to shard over.

    Returns:
      ``{group: {statistic: (N,) or (N, k) numpy array}}``; NaN for networks with non-finite weights.
    """
    specs = resolve_statistics(statistics, near_zero)
    flat = flatten(params)
    per = normalise_per(per)
    sorted_groups = {k: sort_rows(v) for k, v in groups(flat, per).items()}
    with_mat = "leaf" in per and any(s.kind == "matrix" for _, s in specs)
    kernels = {k: jnp.asarray(v) for k, v in flat.items() if with_mat and is_kernel(k, v)}
    n_nets, names = next(iter(flat.values())).shape[0], list(sorted_groups)
    finite = {g: finite_rows(sorted_groups[g]) for g in names}  # on the host, before sharding
    if mesh is not None:  # same program, its networks axis split over the devices
        sorted_groups, kernels = sharding.shard_networks((sorted_groups, kernels), mesh)
    by_group, by_kernel = _program(specs, int(bins))(sorted_groups, kernels)
    if mesh is not None and jax.process_count() > 1:
        by_group, by_kernel = multihost_utils.process_allgather((by_group, by_kernel), tiled=True)
    order, host = [n for n, _ in specs], {n: s.host for n, s in specs if s.host is not None}
    out = {}
    for g in names:  # the input order (tree maps return dicts with sorted keys)
        merged = {**by_group[g], **by_kernel.get(g, {})}
        ok = finite[g]
        out[g] = {}
        for name in (n for n in order if n in merged):
            v = np.asarray(merged[name])[:n_nets]
            v = host[name](v.astype(np.float64)) if name in host else v
            # a network with non-finite weights in this group has no defined statistic here
            out[g][name] = v if ok.all() else np.where(ok.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.nan)
    return out


def compute_statistics(
    params, *, statistics=None, bins: int = 32, near_zero: float = NEAR_ZERO, per="leaf", mesh=None
) -> pd.DataFrame:
    """Computes weight statistics of every network as a tidy table.

    All groups are reduced in one jitted program, vmapped over the networks axis; with
    ``mesh`` that axis is split over the mesh's devices (:func:`jaxweights.train.sharding.shard_networks`).

    Args:
      params: parameters, networks axis first (nested or '/'-flat dict).
      statistics: names of registered statistics, callables ``fn(s_D)``, or a dict
        ``{name: fn}``; default all registered ones (moments, quantiles, norms, RMS,
        ``near_zero``, ``histogram``, and on kernel leaves ``spectral_norm`` and
        ``stable_rank``).
      bins: number of shared-edge histogram bins (rows ``hist_0 ... hist_{bins-1}``,
        bin masses summing to 1; edges from :func:`histograms`).
      near_zero: absolute threshold for ``near_zero``: fraction of weights with ``|w| < near_zero``.
      per: "leaf", "layer", "network" or a tuple of them.
      mesh: optional 1-D ``"networks"`` mesh (``train.networks_mesh()``) to shard over.

    Returns:
      DataFrame with columns ``network, layer, statistic, value, undefined``. ``layer``
      holds the leaf path, layer path or ``"__all__"``. Undefined values are NaN with
      ``undefined=True``, also listed in ``df.attrs["undefined"]`` and logged once. A network with
      a NaN or infinite weight in a group gets NaN for every statistic of that group (listed in
      ``df.attrs["non_finite"]`` as ``{group: [networks]}``); other networks' values never depend
      on it. Moments and norms are computed on ``w / max|w|`` and rescaled, so exploded networks
      (|w| up to ~1e37) get finite values; ``var`` is squared in float64 on the host.
    """
    arrays = statistics_arrays(params, statistics=statistics, bins=bins, near_zero=near_zero, per=per, mesh=mesh)
    labels = {name: spec.labels for name, spec in resolve_statistics(statistics, near_zero)}
    labels["histogram"] = None
    frames, undefined = [], []
    for layer, stats in arrays.items():
        for name, v in stats.items():
            n, scalar = v.shape[0], v.ndim == 1
            v = np.asarray(v, np.float64).reshape(n, -1)
            k, lab = v.shape[1], labels.get(name)
            if name == "histogram":
                names = [f"hist_{i}" for i in range(k)]
            elif lab is not None and len(lab) == k:
                names = list(lab)
            else:
                names = [name] if scalar else [f"{name}_{i}" for i in range(k)]
            bad = ~np.isfinite(v)
            for j in np.flatnonzero(bad.any(0)):
                undefined.append((layer, names[j], int(bad[:, j].sum())))
            frames.append(
                pd.DataFrame(
                    {
                        "network": np.repeat(np.arange(n), k),
                        "layer": layer,
                        "statistic": np.tile(np.asarray(names, object), n),
                        "value": np.where(bad, np.nan, v).ravel(),
                        "undefined": bad.ravel(),
                    }
                )
            )
    df = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["network", "layer", "statistic", "value", "undefined"])
    )
    bad = non_finite_networks(params, per)
    warn_non_finite("statistics", bad)
    rest = [u for u in undefined if u[0] not in bad]  # groups without non-finite weights
    if rest:
        log.warning(
            "%d statistic(s) undefined (zero variance or all-zero kernel), reported as NaN, "
            "e.g. %r in layer %r (%d network(s))",
            len(rest),
            rest[0][1],
            rest[0][0],
            rest[0][2],
        )
    df.attrs["undefined"] = undefined
    df.attrs["non_finite"] = bad
    return df


def write(directory: str, df: pd.DataFrame, filename: str = "stats.csv") -> str:
    """Writes a statistics table to ``directory/stats.csv`` atomically.

    Args:
      directory: output directory.
      df: the table of :func:`compute_statistics`.
      filename: file name.

    Returns:
      The written path.
    """
    path = os.path.join(directory, filename)
    atomic.atomic_write(path, lambda f: df.to_csv(f, index=False), mode="w")
    return path


def statistic_vectors(
    params, *, statistics: Iterable = SUMMARY, per="leaf", near_zero: float = NEAR_ZERO
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per-group statistic vectors (Unterthiner et al. 2020, arXiv 2002.11448): scalars and vector entries flattened.

    Args:
      params: parameters, networks axis first.
      statistics: statistic names (default ``stats.SUMMARY``).
      per: "leaf", "layer", "network" or a tuple of them.
      near_zero: threshold of ``near_zero``.

    Returns:
      ``{group: (column names, x_NxS float64)}``.
    """
    arrays = statistics_arrays(params, statistics=tuple(statistics), per=per, near_zero=near_zero)
    out = {}
    for layer, stats in arrays.items():
        names, cols = [], []
        for name, v in stats.items():
            v = np.asarray(v, np.float64).reshape(v.shape[0], -1)
            names += [name] if v.shape[1] == 1 else [f"{name}_{i}" for i in range(v.shape[1])]
            cols.append(v)
        out[layer] = (names, np.concatenate(cols, axis=1))
    return out
