"""Weight statistics, node strength and layer fluctuation of every snapshot: their trajectories over training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxweights.weights import compute, strength

log = logging.getLogger("jaxweights")


def statistics_over_epochs(
    snapshots: Sequence[Mapping[str, Any]],
    epochs: Sequence[int] | None = None,
    *,
    statistics=None,
    per=("leaf", "layer"),
    node_strength: bool = True,
) -> pd.DataFrame:
    """Every weight statistic, node-strength mean and layer fluctuation at every snapshot.

    Node strength and layer fluctuation follow La Malfa et al. 2021 (arXiv 2110.02628), as
    `jaxweights.strength` defines them. All snapshots are reduced in one call (epochs stacked on the
    networks axis), so histogram edges (`hist_*` rows) are shared by every network and every epoch.

    Args:
      snapshots: per-epoch flat parameters (see `load_snapshots`).
      epochs: the epoch of each snapshot (default 0, 1, ...).
      statistics: passed to `compute.compute_statistics` (default: all registered).
      per: groups of `compute.compute_statistics`.
      node_strength: add `node_strength_mean` and `layer_fluctuation` rows per layer; skipped with a
        log line for models whose layers do not form a chain.

    Returns:
      Tidy DataFrame `epoch, network, layer, statistic, value, undefined`.
    """
    epochs = list(range(len(snapshots))) if epochs is None else list(epochs)
    n_nets = next(iter(snapshots[0].values())).shape[0]
    # One call over E·N "networks" (epochs stacked on the networks axis): one compile, one
    # program; histogram edges are then shared across epochs too, so bins compare over time.
    flat = {k: np.concatenate([np.asarray(s[k]) for s in snapshots]) for k in snapshots[0]}
    df = compute.compute_statistics(flat, statistics=statistics, per=per)
    parts = [df]
    if node_strength:
        try:
            ns = strength.node_strength(flat)
        except ValueError as err:
            log.info("no node strength over epochs: %s", err)
        else:
            for name, v in ns.items():
                v = v.astype(np.float64)
                for stat, x in (("node_strength_mean", v.mean(1)), ("layer_fluctuation", v.std(1))):
                    parts.append(
                        pd.DataFrame(
                            {
                                "network": np.arange(len(x)),
                                "layer": name,
                                "statistic": stat,
                                "value": x,
                                "undefined": ~np.isfinite(x),
                            }
                        )
                    )
    df = pd.concat(parts, ignore_index=True)
    df.insert(0, "epoch", np.asarray(epochs)[df.network.to_numpy() // n_nets])
    df["network"] = df.network % n_nets
    return df.sort_values(["epoch", "network"], kind="stable").reset_index(drop=True)
