"""Errors of the analysis pipelines, and the check of the requested distance metrics."""

from __future__ import annotations

from collections.abc import Sequence

from jaxweights.weights import distances


class AnalysisError(ValueError):
    """A request the analysis cannot serve (unknown metric, folder without a trained zoo)."""


def check_metrics(metrics: Sequence[str]) -> None:
    """Checks that every requested distance metric is built in or registered.

    Args:
      metrics: metric names (the ``--metrics`` option).

    Raises:
      AnalysisError: naming the first unknown metric and the known ones.
    """
    known = set(distances.registered_distances()) | set(distances.BUILTIN)
    for m in metrics:
        if m not in known:
            raise AnalysisError(f"--metrics: unknown distance {m!r}; known: {', '.join(sorted(known))}")
