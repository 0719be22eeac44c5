"""Claims along depth: per-layer results of several zoos on one normalised depth axis, and their shared pattern."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxweights.claims.rank_correlations import spearman
from jaxweights.models import paths
from jaxweights.weights import stats


def depth_profiles(
    claim_tables: Mapping[str, pd.DataFrame], metric: str, layer_orders: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """Per-layer claim results of several zoos on a shared, per-depth-normalised layer axis.

    Args:
      claim_tables: ``{zoo: claim_table(...)}`` (e.g. MLP, CNN and ViT zoos on one dataset).
      metric: the distance metric to compare.
      layer_orders: optional ``{zoo: layers in execution order}`` (``paths.layer_order(params)``);
        default the order of the table's rows (the params' order). Depth is the position in
        that order among the table's layers, never a sort of the names.

    Returns:
      DataFrame: zoo, layer, depth (0 = input side, 1 = output layer), ratio, p_greater, verdict.
    """
    rows = []
    for zoo, t in claim_tables.items():
        t = t[(t.metric == metric) & (t.layer != stats.ALL)]
        order = (
            list(t.layer)
            if layer_orders is None or zoo not in layer_orders
            else [l for l in layer_orders[zoo] if l in set(t.layer)]
            + [l for l in t.layer if l not in set(layer_orders[zoo])]
        )
        depth = paths.layer_depths(order)
        for r in t.itertuples():
            rows.append(
                {
                    "zoo": zoo,
                    "layer": r.layer,
                    "depth": depth[r.layer],
                    "ratio": r.ratio,
                    "p_greater": r.p_greater,
                    "verdict": r.verdict,
                }
            )
    return pd.DataFrame(rows, columns=["zoo", "layer", "depth", "ratio", "p_greater", "verdict"])


def same_pattern(whole_network_verdicts: Mapping[str, str], profiles: pd.DataFrame) -> dict[str, Any]:
    """Whether several zoos show the same pattern: the same whole-network verdict and the same depth trend.

    The depth trend of a zoo is the Spearman correlation of its per-layer distance ratio
    (within suboptimal / within optimal) with normalised depth, over its layers with a finite ratio.

    Args:
      whole_network_verdicts: ``{zoo: verdict}`` of each zoo's whole-network test.
      profiles: per-layer rows with columns zoo, depth, ratio (as `depth_profiles` returns).

    Returns:
      ``{"same_verdict": bool, "verdicts": {zoo: verdict}, "depth_trend": {zoo: rho}, "same_trend": bool}``:
      same_verdict is True when every zoo has the same verdict; rho is NaN for a zoo with fewer than 3
      layers of finite ratio; same_trend is True when the finite trends all have one sign and there are
      at least two zoos.
    """
    trend = {}
    for zoo, g in profiles.groupby("zoo"):
        ok = np.isfinite(g.ratio.to_numpy(np.float64))
        trend[zoo] = spearman(g.depth.to_numpy()[ok], g.ratio.to_numpy()[ok])[0] if ok.sum() >= 3 else float("nan")
    signs = {np.sign(v) for v in trend.values() if np.isfinite(v)}
    return {
        "same_verdict": len(set(whole_network_verdicts.values())) == 1,
        "verdicts": dict(whole_network_verdicts),
        "depth_trend": trend,
        "same_trend": len(signs) == 1 and len(trend) > 1,
    }
