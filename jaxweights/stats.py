"""Weight statistics of a population of N networks, as jitted tree reductions.

Parameters are a pytree whose leaves carry the networks axis first (``kernel`` of
shape ``(N, din, dout)`` or ``(N, kh, kw, cin, cout)``). Every statistic is written
for one network's weights and ``jax.vmap``-ed over the networks axis; all groups
(leaves, layers, the whole network) are reduced by one ``jax.tree.map`` inside one
``jax.jit``, so there is one compile per tree structure and no Python loop over
networks or layers. Distribution statistics ("vector" kind) receive a group's weights
flattened and sorted ascending, ``s_D`` (sorted once, by numpy on CPU), so quantiles and
histograms cost no extra sort; layout statistics ("matrix" kind: spectral norm, stable
rank) receive each kernel leaf as a matrix ``(fan_in, out)``.

Groups:
  * ``"leaf"``: one parameter, keyed by its path (``"Dense_0/kernel"``).
  * ``"layer"``: every parameter of one module, keyed by the module path (``"Dense_0"``).
  * ``"network"``: every parameter of the network, keyed ``"__all__"``.

Undefined values: a statistic that is undefined for a group (skewness or kurtosis
when the variance is zero by scipy's criterion ``m2 <= (eps * mean)**2``, the stable
rank of an all-zero kernel, anything non-finite) is reported as ``value = NaN`` with
``undefined = True`` in the DataFrame, is listed in ``df.attrs["undefined"]`` as
``(layer, statistic, n_networks)`` and is logged as a warning. It never raises.

References:
  Zheng et al., "Weight statistics of optimal and suboptimal networks", arXiv 2408.11720.
  Unterthiner et al., "Predicting neural network accuracy from weights", arXiv 2002.11448.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights import rundir

log = logging.getLogger(__name__)

ALL = "__all__"
QUANTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)
NEAR_ZERO = 1e-3


# ---------------------------------------------------------------------------- paths


def flatten(params: Mapping[str, Any], order: Sequence[str] | None = None) -> dict[str, jax.Array]:
    """Flattens a (possibly nested) parameter dict to ``{"a/b/kernel": array}``, keeping its order.

    Accepts nested dicts / FrozenDicts (a Flax ``params`` collection), a dict with a
    single top-level ``"params"`` key (unwrapped), or an already-flat dict with
    '/'-joined keys (returned as is, e.g. the contents of ``params.npz``).

    Layer order is the dict's insertion order, never a sort of the names: ``model.init``
    creates parameters in execution order (``models.param_order``) and ``params.npz``
    written with ``rundir.write_params(..., order=...)`` keeps it. JAX tree operations
    (``jax.tree.map``, ``vmap`` outputs) sort dict keys; pass ``order`` to restore it.

    Args:
      params: pytree of arrays, networks axis first.
      order: optional leaf paths in execution order; listed paths come first in that
        order, the others follow in the dict's order.

    Returns:
      Dict from '/'-joined path to array.
    """
    if hasattr(params, "unfreeze"):
        params = params.unfreeze()
    params = dict(params)
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = dict(params["params"])
    out = {}

    def visit(prefix, node):
        if isinstance(node, Mapping):
            for k, v in node.items():
                visit(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    visit("", params)
    if order is not None:
        out = {**{k: out[k] for k in order if k in out}, **out}
    return out


def layer_order(params_or_paths) -> list[str]:
    """Layers (module paths) in the order their first leaf appears (execution order; no sorting).

    Args:
      params_or_paths: parameters (nested or flat dict) or a sequence of leaf paths.
    """
    paths = list(flatten(params_or_paths)) if isinstance(params_or_paths, Mapping) else list(params_or_paths)
    return list(dict.fromkeys(layer_of(p) for p in paths))


def layer_depths(layers: Sequence[str]) -> dict[str, float]:
    """Position in [0, 1] of each layer in the given (execution) order: first 0, last 1.

    Repeated names keep their first position. ``i / (n - 1)`` for the i-th of n layers (a single
    layer is 0). Names are never sorted: pass them in the order the model runs them
    (:func:`layer_order`).
    """
    order = list(dict.fromkeys(layers))
    n = len(order)
    return {name: (i / (n - 1) if n > 1 else 0.0) for i, name in enumerate(order)}


def layer_of(path: str) -> str:
    """Module path of a leaf path: ``"Dense_0/kernel" -> "Dense_0"``."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def is_kernel(path: str, x: Any) -> bool:
    """True for a stacked kernel leaf: named ``kernel`` with >= 2 dims per network."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(x) >= 3


def as_matrix(w: jax.Array) -> jax.Array:
    """One network's kernel as a 2-D matrix ``(fan_in, out)`` (conv: ``(kh*kw*cin, cout)``)."""
    return w.reshape(-1, w.shape[-1])


_jsort = jax.jit(lambda x: jnp.sort(x, axis=-1))


def sort_rows(x_ND) -> jax.Array:
    """Sorts each network's weights ascending (NaN last).

    On CPU this uses numpy's SIMD sort, ~50x faster than XLA:CPU's sort (measured on
    2 cores: 64 x 100k float32 in 22 ms vs 1.1 s); elsewhere ``jnp.sort`` on device.
    """
    if isinstance(x_ND, np.ndarray) or all(d.platform == "cpu" for d in x_ND.devices()):
        return jnp.asarray(np.sort(np.asarray(x_ND), axis=-1))
    return _jsort(x_ND)


def _normalise_per(per) -> tuple[str, ...]:
    per = (per,) if isinstance(per, str) else tuple(per)
    bad = set(per) - {"leaf", "layer", "network"}
    if bad:
        raise ValueError(f"per must be among 'leaf', 'layer', 'network'; got {sorted(bad)}")
    return per


def _concat(ws):
    if len(ws) == 1:
        return ws[0]
    return np.concatenate(ws, 1) if all(isinstance(w, np.ndarray) for w in ws) else jnp.concatenate(ws, 1)


def group_members(params: Mapping[str, Any], per="leaf") -> dict[str, list[str]]:
    """Group name -> the leaf paths it pools, in order: leaves, then layers, then ``"__all__"``.

    Args:
      params: parameters (nested or flat dict); only the keys are used.
      per: "leaf", "layer", "network" or a tuple of them.
    """
    keys, per = list(flatten(params)), _normalise_per(per)
    out = {k: [k] for k in keys} if "leaf" in per else {}
    if "layer" in per:
        layers: dict[str, list[str]] = {}
        for k in keys:
            layers.setdefault(layer_of(k), []).append(k)
        out.update(layers)  # leaves in the params' (execution) order
    if "network" in per:
        out[ALL] = keys
    return out


def group_names(params: Mapping[str, Any], per="leaf") -> list[str]:
    """Names of the groups :func:`groups` returns, in order."""
    return list(group_members(params, per))


def groups(params: Mapping[str, Any], per="leaf") -> dict[str, jax.Array]:
    """Groups the weights of every network into ``{name: w_NxD}`` flat vectors.

    Args:
      params: parameters, networks axis first (nested or flat dict).
      per: "leaf", "layer", "network" or a tuple of them.

    Returns:
      Dict from group name (leaf path, layer path or ``"__all__"``) to an ``(N, D)`` array;
      pooled groups concatenate their leaves in the params' order (numpy in, numpy out).
    """
    flat = flatten(params)
    flat_ND = {k: v.reshape(v.shape[0], -1) for k, v in flat.items()}
    return {name: _concat([flat_ND[k] for k in ks]) for name, ks in group_members(flat, per).items()}


# ----------------------------------------------------------------------- statistics


def _scaled(w):
    """``(m, w / m)`` with ``m = max|w|`` (1 when zero or non-finite): squares of ``w / m`` cannot overflow.

    Weights of exploded networks (|w| ~ 1e24) overflow float32 when squared (1e48); every
    second-and-higher moment is computed on ``w / m`` and rescaled (Higham 2002, sec. 4.2).
    """
    m = jnp.max(jnp.abs(w))
    m = jnp.where(jnp.isfinite(m) & (m > 0), m, jnp.ones_like(m))
    return m, w / m


def _moments(w):
    """(mean, m2, deviations) of the scaled weights ``w / m`` and the scale ``m``."""
    m, u = _scaled(w)
    mu = jnp.mean(u)
    d = u - mu
    return mu, jnp.mean(d * d), d, m


def _zero_var(mean, m2):
    # scipy.stats.skew/kurtosis: variance counts as zero when m2 <= (eps * mean)**2 (scale-free).
    return m2 <= (jnp.finfo(m2.dtype).eps * mean) ** 2


def mean(w_D):
    """Arithmetic mean (of ``w / max|w|``, rescaled: no overflow in the sum)."""
    m, u = _scaled(w_D)
    return m * jnp.mean(u)


def var(w_D):
    """Variance, ddof 0 (two-pass, scaled). Exceeds float32 above |w| ~ 1e19: see ``_VAR_FROM_STD``."""
    _, m2, _, m = _moments(w_D)
    return (m * m) * m2


def std(w_D):
    """Standard deviation, ddof 0 (two-pass on ``w / max|w|``, rescaled)."""
    _, m2, _, m = _moments(w_D)
    return m * jnp.sqrt(m2)


def skewness(w_D):
    """Biased skewness ``m3 / m2**1.5`` (scipy.stats.skew default); NaN if variance is zero."""
    mu, m2, d, _ = _moments(w_D)
    return jnp.where(_zero_var(mu, m2), jnp.nan, jnp.mean(d**3) / m2**1.5)


def kurtosis(w_D):
    """Biased excess kurtosis ``m4 / m2**2 - 3`` (scipy.stats.kurtosis default); NaN if variance is zero."""
    mu, m2, d, _ = _moments(w_D)
    return jnp.where(_zero_var(mu, m2), jnp.nan, jnp.mean(d**4) / m2**2 - 3.0)


def quantiles(s_D):
    """Percentiles {0, 1, 5, 25, 50, 75, 95, 99, 100} of sorted weights, numpy's "linear" method."""
    pos = jnp.asarray(QUANTILES, s_D.dtype) / 100 * (s_D.shape[0] - 1)
    lo = jnp.floor(pos).astype(jnp.int32)
    t = pos - lo
    a, b = s_D[lo], s_D[jnp.minimum(lo + 1, s_D.shape[0] - 1)]
    return jnp.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)  # numpy's _lerp


def l1(w_D):
    """L1 norm (scaled sum)."""
    m, u = _scaled(w_D)
    return m * jnp.sum(jnp.abs(u))


def l2(w_D):
    """L2 (Frobenius) norm, ``max|w| * ||w / max|w|||`` (no overflow)."""
    m, u = _scaled(w_D)
    return m * jnp.sqrt(jnp.sum(u * u))


def max_abs(w_D):
    """Largest absolute weight (L-infinity norm)."""
    return jnp.max(jnp.abs(w_D))


def rms(w_D):
    """Root mean square, ``max|w| * rms(w / max|w|)`` (no overflow)."""
    m, u = _scaled(w_D)
    return m * jnp.sqrt(jnp.mean(u * u))


@functools.cache
def near_zero_fraction(threshold: float = NEAR_ZERO) -> Callable:
    """Statistic factory: fraction of weights with ``|w| < threshold`` (absolute threshold)."""

    def near_zero(w_D):
        return jnp.mean((jnp.abs(w_D) < threshold).astype(w_D.dtype))

    return near_zero


def _top_singular_sq(w_RxC, squarings: int = 24):
    """sigma_max^2 as the top eigenvalue of the Gram matrix, with matmuls only.

    Repeated squaring gives G^(2^k) ~ lambda_1^p v v^T; the Rayleigh quotient of its largest
    column is within ~eps * lambda_1 of lambda_1 once (1 - eps)^(2^(k+1)) is negligible
    (k = 24: eps ~ 1e-6). Pure JAX on purpose: a LAPACK eigvalsh custom call inside the same
    XLA:CPU program as the other reductions was seen to hang on a 2-core machine.
    """
    hi = jax.lax.Precision.HIGHEST
    g = (
        jnp.matmul(w_RxC.T, w_RxC, precision=hi)
        if w_RxC.shape[0] >= w_RxC.shape[1]
        else jnp.matmul(w_RxC, w_RxC.T, precision=hi)
    )
    tiny = jnp.finfo(g.dtype).tiny

    def square(a, _):
        a = jnp.matmul(a, a, precision=hi)
        return a / jnp.maximum(jnp.trace(a), tiny), None

    a, _ = jax.lax.scan(square, g / jnp.maximum(jnp.trace(g), tiny), None, length=squarings)
    v = a[:, jnp.argmax(jnp.sum(a * a, 0))]
    return jnp.maximum(v @ jnp.matmul(g, v, precision=hi) / jnp.maximum(v @ v, tiny), 0.0)


def spectral_norm(w_RxC):
    """Largest singular value of a kernel matrix (conv kernels reshaped to (kh*kw*cin, cout)).

    Computed on ``W / max|W|`` and rescaled, so exploded kernels do not overflow.
    """
    m, u = _scaled(w_RxC)
    return m * jnp.sqrt(_top_singular_sq(u))


def stable_rank(w_RxC):
    """Stable rank ``||W||_F^2 / sigma_max^2`` (Rudelson & Vershynin 2007), scale-free; NaN for W = 0."""
    _, u = _scaled(w_RxC)
    s2 = _top_singular_sq(u)
    return jnp.where(s2 > 0, jnp.sum(u * u) / jnp.where(s2 > 0, s2, 1.0), jnp.nan)


class Statistic(NamedTuple):
    """A registered statistic: ``fn(s_D)`` of sorted weights ("vector") or ``fn(w_RxC)`` ("matrix").

    ``host``: optional float64 numpy function applied to the device result (``var`` is computed
    as ``std`` on device and squared in float64, because var of |w| ~ 1e20 exceeds float32).
    """

    fn: Callable
    kind: str = "vector"
    labels: tuple[str, ...] | None = None
    host: Callable | None = None


_REGISTRY: dict[str, Statistic] = {
    "mean": Statistic(mean),
    "std": Statistic(std),
    "var": Statistic(std, host=np.square),
    "skewness": Statistic(skewness),
    "kurtosis": Statistic(kurtosis),
    "quantiles": Statistic(quantiles, labels=tuple(f"q{q}" for q in QUANTILES)),
    "l1": Statistic(l1),
    "l2": Statistic(l2),
    "max_abs": Statistic(max_abs),
    "rms": Statistic(rms),
    "near_zero": Statistic(None),  # built per call from `near_zero=`
    "spectral_norm": Statistic(spectral_norm, kind="matrix"),
    "stable_rank": Statistic(stable_rank, kind="matrix"),
    "histogram": Statistic(None, kind="histogram"),
}
SUMMARY = ("mean", "std", "var", "skewness", "kurtosis", "quantiles", "l1", "l2", "max_abs", "rms", "near_zero")


def register_statistic(
    name: str, fn: Callable, *, kind: str = "vector", labels: Sequence[str] | None = None, overwrite: bool = False
) -> None:
    """Registers a statistic by name so ``compute_statistics`` can use it.

    Args:
      name: statistic name (the ``statistic`` column; vectors become ``name_0, name_1...``
        unless ``labels`` are given).
      fn: pure JAX function of one network's weights returning a scalar or small vector:
        ``fn(s_D)`` of the group's weights sorted ascending for kind "vector" (every group;
        ordinary order-free statistics such as ``jnp.median`` work unchanged) or
        ``fn(w_RxC)`` of a kernel matrix for kind "matrix" (kernel leaves only). It is
        vmapped over networks and jitted with the built-ins.
      kind: "vector" or "matrix".
      labels: optional names for the entries of a vector-valued statistic.
      overwrite: allow replacing an existing name.
    """
    if kind not in ("vector", "matrix"):
        raise ValueError(f"kind must be 'vector' or 'matrix', got {kind!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"statistic {name!r} already registered (pass overwrite=True)")
    _REGISTRY[name] = Statistic(fn, kind, tuple(labels) if labels else None)


def registered_statistics() -> tuple[str, ...]:
    """Names of all registered statistics."""
    return tuple(_REGISTRY)


def _resolve(statistics, near_zero) -> tuple[tuple[str, Statistic], ...]:
    if statistics is None:
        statistics = tuple(_REGISTRY)
    elif isinstance(statistics, str) or callable(statistics):
        statistics = (statistics,)
    items = (
        statistics.items()
        if isinstance(statistics, Mapping)
        else [(s, None) if isinstance(s, str) else (getattr(s, "__name__", "custom"), s) for s in statistics]
    )
    out = []
    for name, fn in items:
        if fn is None:
            if name not in _REGISTRY:
                raise KeyError(f"unknown statistic {name!r}; registered: {sorted(_REGISTRY)}")
            spec = _REGISTRY[name]
            if name == "near_zero":
                spec = Statistic(near_zero_fraction(float(near_zero)))
        else:
            spec = fn if isinstance(fn, Statistic) else Statistic(fn)
        out.append((name, spec))
    return tuple(out)


# ----------------------------------------------------------------------- histograms


OUTLIER_FACTOR = 1e3


def core_networks(lo_N, hi_N, ok_N):
    """Networks that set shared ranges: finite, with ``max|w| <= OUTLIER_FACTOR * median max|w|``.

    The median is over the finite networks (``ok_N``). Networks with non-finite weights never
    count, and exploded but finite ones (|w| ~ 1e24 among |w| ~ 1) are left out as well, so a
    shared range (histogram edges, KDE grid) is the same with or without them. When the median
    is 0 every finite network counts. Jittable; ``lo_N``/``hi_N`` are per-network min and max.
    """
    amax = jnp.maximum(jnp.abs(lo_N), jnp.abs(hi_N))
    med = jnp.nanmedian(jnp.where(ok_N, amax, jnp.nan))
    return ok_N & ((amax <= OUTLIER_FACTOR * med) | ~(med > 0))


def core_range(lo_N, hi_N, ok_N):
    """``(lo, hi, core_N)``: the range of the :func:`core_networks` (``(0, 0)`` when there are none)."""
    core = core_networks(lo_N, hi_N, ok_N)
    lo = jnp.min(jnp.where(core, lo_N, jnp.inf))
    hi = jnp.max(jnp.where(core, hi_N, -jnp.inf))
    return jnp.where(core.any(), lo, 0.0), jnp.where(core.any(), hi, 0.0), core


def range_edges(lo, hi, bins: int, dtype=jnp.float32):
    """Equal-width edges over ``[lo, hi]`` (numpy's rule: a flat range becomes ``lo - 0.5, hi + 0.5``)."""
    flat = lo == hi
    lo, hi = jnp.where(flat, lo - 0.5, lo).astype(dtype), jnp.where(flat, hi + 0.5, hi).astype(dtype)
    edges = lo + (hi - lo) * jnp.arange(bins + 1, dtype=dtype) / bins
    return edges.at[-1].set(hi)


def shared_edges(s_ND: jax.Array, bins: int) -> jax.Array:
    """Equal-width bin edges over the range of the core networks of sorted rows (:func:`core_range`).

    Rows with non-finite weights and exploded rows (:data:`OUTLIER_FACTOR`) do not move the
    edges, so healthy networks' histograms do not depend on them.
    """
    ok = jnp.isfinite(s_ND[:, 0]) & jnp.isfinite(s_ND[:, -1])  # sorted: -inf first, inf/NaN last
    lo, hi, _ = core_range(s_ND[:, 0], s_ND[:, -1], ok)
    return range_edges(lo, hi, bins, s_ND.dtype)


def finite_rows(s_ND) -> np.ndarray:
    """(N,) True where a row of sorted weights is all finite (NaN and inf sort to the ends)."""
    s = np.asarray(s_ND)
    return np.isfinite(s[:, 0]) & np.isfinite(s[:, -1])


def histogram(s_D: jax.Array, edges_B1: jax.Array) -> jax.Array:
    """Normalised histogram (bin masses summing to 1) of one network's sorted weights.

    Bins are half-open ``[e_k, e_k+1)`` except the last, closed, as ``numpy.histogram``.
    """
    cum = jnp.searchsorted(s_D, edges_B1, side="left", method="scan")
    cum = cum.at[-1].set(jnp.searchsorted(s_D, edges_B1[-1], side="right").astype(cum.dtype))
    counts = jnp.diff(cum).astype(s_D.dtype)
    return counts / jnp.maximum(jnp.sum(counts), 1)


@functools.partial(jax.jit, static_argnames=("bins",))
def _histograms(g: dict, bins: int):
    def one(w_ND):
        edges = shared_edges(w_ND, bins)
        return edges, jax.vmap(histogram, (0, None))(w_ND, edges)

    return jax.tree.map(one, g)


def histograms(params: Mapping[str, Any], bins: int = 32, *, per="leaf") -> dict:
    """Normalised histograms of every network on edges shared by all networks of a group.

    Args:
      params: parameters, networks axis first.
      bins: number of equal-width bins spanning the group's range over its core networks
        (finite, not exploded: :func:`core_networks`). An exploded network's histogram counts
        only its weights inside that range (all zeros if none); non-finite networks get NaN.
      per: "leaf", "layer", "network" or a tuple.

    Returns:
      ``{group: (edges_B1, hist_NxB)}``; each row of ``hist_NxB`` sums to 1.
    """
    sorted_groups = {k: sort_rows(v) for k, v in groups(params, per).items()}
    out = _histograms(sorted_groups, bins)
    return {
        k: (np.asarray(e), np.where(finite_rows(sorted_groups[k])[:, None], np.asarray(h), np.nan))
        for k, (e, h) in out.items()
    }


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


def shard_networks(tree, mesh):
    """Pads the networks axis of every leaf to a multiple of the mesh size and splits it over `mesh`.

    Padding rows are copies of the last network, so reductions across networks (the shared
    histogram edges) are unchanged; slice results back to the first N rows.

    Args:
      tree: pytree of arrays, networks axis first.
      mesh: a 1-D mesh whose axis is named ``"networks"`` (``train.networks_mesh``).

    Returns:
      The padded tree as arrays sharded over the mesh.
    """
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    sharding = jax.sharding.NamedSharding(mesh, spec)

    def one(x):
        x = np.asarray(x)
        pad = -x.shape[0] % mesh.size
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def statistics_arrays(
    params, *, statistics=None, bins: int = 32, near_zero: float = NEAR_ZERO, per="leaf", mesh=None
) -> dict[str, dict[str, np.ndarray]]:
    """Computes statistics as arrays: ``{group: {statistic: (N,) or (N, k)}}``.

    Same arguments as :func:`compute_statistics`; use this when you want arrays, not a table.
    """
    specs = _resolve(statistics, near_zero)
    flat = flatten(params)
    per = _normalise_per(per)
    sorted_groups = {k: sort_rows(v) for k, v in groups(flat, per).items()}
    with_mat = "leaf" in per and any(s.kind == "matrix" for _, s in specs)
    kernels = {k: jnp.asarray(v) for k, v in flat.items() if with_mat and is_kernel(k, v)}
    n_nets, names = next(iter(flat.values())).shape[0], list(sorted_groups)
    finite = {g: finite_rows(sorted_groups[g]) for g in names}  # on the host, before sharding
    if mesh is not None:  # same program, its networks axis split over the devices
        sorted_groups, kernels = shard_networks((sorted_groups, kernels), mesh)
    by_group, by_kernel = _program(specs, int(bins))(sorted_groups, kernels)
    if mesh is not None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

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


def non_finite_networks(params, per="leaf") -> dict[str, list[int]]:
    """``{group: [networks with a NaN or infinite weight in it]}`` for the groups that have any."""
    out = {}
    for k, w_ND in groups(params, per).items():
        bad = np.flatnonzero(~np.isfinite(np.asarray(w_ND)).all(1))
        if len(bad):
            out[k] = bad.tolist()
    return out


def warn_non_finite(what: str, bad: Mapping[str, Sequence[int]]) -> None:
    """One warning naming the networks with non-finite weights (and in how many groups)."""
    nets = sorted({int(i) for v in bad.values() for i in v})
    if nets:
        log.warning(
            "%s: network(s) %s have NaN or infinite weights (in %d group(s), e.g. %r); "
            "their values are NaN and they do not affect other networks",
            what,
            nets,
            len(bad),
            next(iter(bad)),
        )


def compute_statistics(
    params, *, statistics=None, bins: int = 32, near_zero: float = NEAR_ZERO, per="leaf", mesh=None
) -> pd.DataFrame:
    """Computes weight statistics of every network as a tidy table.

    All groups are reduced in one jitted program, vmapped over the networks axis; with
    ``mesh`` that axis is split over the mesh's devices (:func:`shard_networks`).

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
    labels = {name: spec.labels for name, spec in _resolve(statistics, near_zero)}
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
    """Writes a statistics table to ``directory/stats.csv`` atomically; returns the path."""
    path = os.path.join(directory, filename)
    rundir.atomic_write(path, lambda f: df.to_csv(f, index=False), mode="w")
    return path


def statistic_vectors(
    params, *, statistics: Iterable = SUMMARY, per="leaf", near_zero: float = NEAR_ZERO
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per-group statistic vectors ``{group: (names, x_NxS)}`` (scalars and vector entries flattened)."""
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
