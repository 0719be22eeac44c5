"""Weight statistics of one network, as pure JAX kernels, and the registry of statistics by name.

The kernels are written for one network's weights; ``compute.py`` vmaps them over the networks axis
and reduces every group in one jitted program. Parameters are a pytree whose leaves carry the networks axis first (``kernel`` of
shape ``(N, din, dout)`` or ``(N, kh, kw, cin, cout)``). Every statistic is written
for one network's weights and ``jax.vmap``-ed over the networks axis; all groups
(leaves, layers, the whole network) are reduced by one ``jax.tree.map`` inside one
``jax.jit``, so there is one compile per tree structure and no Python loop over
networks or layers. Distribution statistics ("vector" kind) receive a group's weights
flattened and sorted ascending, ``s_D`` (sorted once, by numpy on CPU), so quantiles and
histograms cost no extra sort; layout statistics ("matrix" kind: spectral norm, stable
rank) receive each kernel leaf as a matrix ``(fan_in, out)``.

Undefined values: a statistic that is undefined for a group (skewness or kurtosis
when the variance is zero by scipy's criterion ``m2 <= (eps * mean)**2``, the stable
rank of an all-zero kernel, anything non-finite) is reported as ``value = NaN`` with
``undefined = True`` in the DataFrame, is listed in ``df.attrs["undefined"]`` as
``(layer, statistic, n_networks)`` and is logged as a warning. It never raises.

References:
  Zheng et al., "Weight statistics of optimal and suboptimal networks", arXiv 2408.11720.
  Unterthiner et al., "Predicting neural network accuracy from weights", arXiv 2002.11448.
  Joanes & Gill (1998), "Comparing measures of sample skewness and kurtosis" (biased g1, g2, as scipy).
  Hyndman & Fan (1996), "Sample quantiles in statistical packages" (type 7, numpy's "linear").
  Yoshida & Miyato (2017), "Spectral norm regularization", arXiv 1705.10941.
  Rudelson & Vershynin (2007), "Sampling from large matrices" (stable rank).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ALL = "__all__"
QUANTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)
NEAR_ZERO = 1e-3


def as_matrix(w: jax.Array) -> jax.Array:
    """One network's kernel as a 2-D matrix ``(fan_in, out)`` (conv: ``(kh*kw*cin, cout)``).

    Args:
      w: one network's kernel, ``(din, dout)`` or ``(kh, kw, cin, cout)``.

    Returns:
      The kernel reshaped to ``(fan_in, out)``.
    """
    return w.reshape(-1, w.shape[-1])


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
    """Arithmetic mean (of ``w / max|w|``, rescaled: no overflow in the sum; Unterthiner et al. 2020).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The mean, a scalar.
    """
    m, u = _scaled(w_D)
    return m * jnp.mean(u)


def var(w_D):
    """Variance, ddof 0 (two-pass, scaled). Exceeds float32 above |w| ~ 1e19: the registry squares ``std`` on the host.

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The variance, a scalar.
    """
    _, m2, _, m = _moments(w_D)
    return (m * m) * m2


def std(w_D):
    """Standard deviation, ddof 0 (two-pass on ``w / max|w|``, rescaled; Unterthiner et al. 2020).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The standard deviation, a scalar.
    """
    _, m2, _, m = _moments(w_D)
    return m * jnp.sqrt(m2)


def skewness(w_D):
    """Biased skewness g1 ``m3 / m2**1.5`` (Joanes & Gill 1998; scipy.stats.skew default); NaN if variance is zero.

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The skewness, a scalar (NaN if the variance is zero).
    """
    mu, m2, d, _ = _moments(w_D)
    return jnp.where(_zero_var(mu, m2), jnp.nan, jnp.mean(d**3) / m2**1.5)


def kurtosis(w_D):
    """Biased excess kurtosis g2 ``m4 / m2**2 - 3`` (Joanes & Gill 1998; scipy default); NaN if variance is zero.

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The excess kurtosis, a scalar (NaN if the variance is zero).
    """
    mu, m2, d, _ = _moments(w_D)
    return jnp.where(_zero_var(mu, m2), jnp.nan, jnp.mean(d**4) / m2**2 - 3.0)


def quantiles(s_D):
    """Percentiles {0, 1, 5, 25, 50, 75, 95, 99, 100} of sorted weights (Hyndman & Fan 1996 type 7, numpy's "linear").

    Args:
      s_D: one network's weights sorted ascending, (D,).

    Returns:
      (9,) percentiles in the order of ``QUANTILES``.
    """
    pos = jnp.asarray(QUANTILES, s_D.dtype) / 100 * (s_D.shape[0] - 1)
    lo = jnp.floor(pos).astype(jnp.int32)
    t = pos - lo
    a, b = s_D[lo], s_D[jnp.minimum(lo + 1, s_D.shape[0] - 1)]
    return jnp.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)  # numpy's _lerp


def l1(w_D):
    """L1 norm ``sum |w|`` (scaled sum; Unterthiner et al. 2020).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The L1 norm, a scalar.
    """
    m, u = _scaled(w_D)
    return m * jnp.sum(jnp.abs(u))


def l2(w_D):
    """L2 (Frobenius) norm, ``max|w| * ||w / max|w|||`` (no overflow; Unterthiner et al. 2020).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The L2 norm, a scalar.
    """
    m, u = _scaled(w_D)
    return m * jnp.sqrt(jnp.sum(u * u))


def max_abs(w_D):
    """Largest absolute weight (L-infinity norm).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      max |w|, a scalar.
    """
    return jnp.max(jnp.abs(w_D))


def rms(w_D):
    """Root mean square, ``max|w| * rms(w / max|w|)`` (no overflow).

    Args:
      w_D: one network's weights, (D,) (any order).

    Returns:
      The root mean square, a scalar.
    """
    m, u = _scaled(w_D)
    return m * jnp.sqrt(jnp.mean(u * u))


@functools.cache
def near_zero_fraction(threshold: float = NEAR_ZERO) -> Callable:
    """Statistic factory: fraction of weights with ``|w| < threshold`` (Zheng et al. 2024, arXiv 2408.11720).

    Args:
      threshold: absolute threshold.

    Returns:
      ``near_zero(w_D) -> scalar`` (cached per threshold, so the jitted program is reused).
    """

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

    Computed on ``W / max|W|`` and rescaled, so exploded kernels do not overflow (Yoshida & Miyato 2017,
    arXiv 1705.10941).

    Args:
      w_RxC: one network's kernel as a matrix (``as_matrix``).

    Returns:
      Scalar.
    """
    m, u = _scaled(w_RxC)
    return m * jnp.sqrt(_top_singular_sq(u))


def stable_rank(w_RxC):
    """Stable rank ``||W||_F^2 / sigma_max^2`` (Rudelson & Vershynin 2007), scale-free; NaN for W = 0.

    Args:
      w_RxC: one network's kernel as a matrix (``as_matrix``).

    Returns:
      Scalar.
    """
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

    Raises:
      ValueError: for an unknown kind, or an existing name without ``overwrite``.
    """
    if kind not in ("vector", "matrix"):
        raise ValueError(f"kind must be 'vector' or 'matrix', got {kind!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"statistic {name!r} already registered (pass overwrite=True)")
    _REGISTRY[name] = Statistic(fn, kind, tuple(labels) if labels else None)


def registered_statistics() -> tuple[str, ...]:
    """Names of all registered statistics.

    Returns:
      The names, built-ins first, in registration order.
    """
    return tuple(_REGISTRY)


def resolve_statistics(statistics, near_zero) -> tuple[tuple[str, Statistic], ...]:
    """``((name, Statistic), ...)`` for names, callables or a ``{name: fn}`` dict (None: all registered).

    Args:
      statistics: None, a name, a callable, a sequence of them or a ``{name: fn}`` dict.
      near_zero: threshold of the ``near_zero`` statistic.

    Returns:
      The resolved statistics, in the order given.

    Raises:
      KeyError: for a name that is not registered.
    """
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
