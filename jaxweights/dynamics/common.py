"""What every dynamics module shares: the error class, the input layer's name, the chunk size, network masks."""

from __future__ import annotations

import jax
import numpy as np

Array = jax.Array
INPUT = "input"  # the name of the standardised images among a network's representations


class DynamicsError(ValueError):
    """A run directory the dynamics cannot be computed from (no snapshots, unknown layer...)."""


def default_chunk() -> int:
    """Networks vmapped at once by `jax.lax.map(..., batch_size=chunk)` when none is given.

    1 on CPU, where batched matmuls and `top_k` over a networks axis ran 2-5× slower than one
    network at a time (benchmarks/dynamics_throughput.py); 64 on accelerators.

    Returns:
      The chunk size for the default backend.
    """
    return 1 if jax.default_backend() == "cpu" else 64


def network_masks(num_networks: int, optimal_N=None, exclude_N=None) -> tuple[np.ndarray, np.ndarray]:
    """Checked boolean `(optimal_N, exclude_N)` of a zoo of `num_networks`; an excluded network is never optimal.

    The dynamics never decide which networks are optimal: the caller passes the labels (the one
    definition is `jaxweights.groups`).

    Args:
      num_networks: N, the zoo's size.
      optimal_N: boolean `(N,)`; None: every network not excluded.
      exclude_N: boolean `(N,)`; None: none excluded.

    Returns:
      `(optimal_N & ~exclude_N, exclude_N)`.

    Raises:
      DynamicsError: a mask that is not boolean of shape `(N,)`.
    """
    out = []
    for name, m, default in (("optimal_N", optimal_N, True), ("exclude_N", exclude_N, False)):
        m = np.full(num_networks, default) if m is None else np.asarray(m)
        if m.shape != (num_networks,) or m.dtype != bool:
            raise DynamicsError(
                f"{name}: a boolean mask of the {num_networks} networks is needed, got dtype {m.dtype}, shape {m.shape}"
            )
        out.append(m)
    return out[0] & ~out[1], out[1]
