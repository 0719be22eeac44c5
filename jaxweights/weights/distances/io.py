"""Writing distance matrices to the run directory: ``distances/<metric>.npz``, one array per group."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxweights.io import atomic


def write(directory: str, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Writes ``directory/distances/<metric>.npz`` (keys: group paths) atomically.

    Args:
      directory: output directory (created if needed).
      results: ``{metric: {group: dist_NxN}}`` as returned by :func:`compute`.

    Returns:
      The written paths.
    """
    paths = []
    for metric, mats in results.items():
        path = os.path.join(directory, "distances", f"{metric}.npz")
        arrays = {k: np.asarray(v) for k, v in mats.items()}
        atomic.atomic_write(path, lambda f: np.savez(f, **arrays))
        paths.append(path)
    return paths
