"""The registry of distance names: the built-in metrics and user-registered ``fn(a, b)`` distances."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Distance(NamedTuple):
    """A registered distance: ``fn(a_sorted, b_sorted)`` ("sorted") or ``fn(p, q)`` ("histogram")."""

    fn: Callable
    kind: str


_REGISTRY: dict[str, Distance] = {}
BUILTIN = ("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean", "cosine")


def register_distance(name: str, fn: Callable, kind: str = "sorted", overwrite: bool = False) -> None:
    """Registers a distance by name for :func:`pairwise`.

    Args:
      name: metric name (also the ``distances/<name>.npz`` file name).
      fn: pure JAX function of two sorted weight vectors (kind "sorted") or two normalised
        histograms on shared edges (kind "histogram"), returning a scalar. It is vmapped over
        pairs of networks in blocks and jitted.
      kind: "sorted" or "histogram".
      overwrite: allow replacing an existing name.

    Raises:
      ValueError: for an unknown kind, or an existing name without ``overwrite``.
    """
    if kind not in ("sorted", "histogram"):
        raise ValueError(f"kind must be 'sorted' or 'histogram', got {kind!r}")
    if (name in _REGISTRY or name in BUILTIN) and not overwrite:
        raise ValueError(f"distance {name!r} already registered (pass overwrite=True)")
    _REGISTRY[name] = Distance(fn, kind)


def registered_distances() -> tuple[str, ...]:
    """Names of built-in and registered distances.

    Returns:
      ``BUILTIN`` followed by the names given to :func:`register_distance`.
    """
    return BUILTIN + tuple(_REGISTRY)
