"""The grouping of a run directory's networks: its task's classes, its last epoch and the grouping options checked."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxweights import data as data_lib
from jaxweights.claims import ClaimError, network_groups
from jaxweights.io import rundir
from jaxweights.weights import compute

log = logging.getLogger("jaxweights")


GROUPING_OPTIONS = (
    "quantile",
    "threshold",
    "min_accuracy",
    "include_exploded",
    "include_not_learned",
    "chance_margin",
    "seed",
)  # `network_groups` options among `analyze_workdir`'s


def _last_epoch(rd: Path) -> pd.DataFrame:
    m = pd.read_csv(rd / "metrics.csv")
    return rundir.last_epoch(m).sort_values("network").reset_index(drop=True)


def num_classes(rd: Path, params=None) -> int:
    """Classes of a run's task: its dataset's (config.json), else the last kernel's outputs, else 10.

    Args:
      rd: run directory.
      params: its stacked parameters (optional).

    Returns:
      The number of classes.
    """
    try:
        ds = rundir.read_config(rd / "config.json").get("dataset")
        if ds in data_lib.SPECS:
            return data_lib.SPECS[ds].num_classes
    except (OSError, ValueError):
        pass
    if params is not None:
        ks = [v for k, v in compute.flatten(params).items() if k.endswith("kernel")]
        if ks:
            return int(np.shape(ks[-1])[-1])
    return 10


def run_groups(rd: Path, params, options: Mapping[str, Any]) -> pd.DataFrame:
    """`network_groups` of run directory `rd` with the grouping options among `options`.

    Args:
      rd: run directory (metrics.csv, config.json).
      params: its stacked parameters.
      options: analysis options; those in `GROUPING_OPTIONS` are used.

    Returns:
      The `network_groups` table.
    """
    return network_groups(
        _last_epoch(rd),
        params,
        num_classes=num_classes(rd, params),
        **{k: options[k] for k in GROUPING_OPTIONS if k in options},
    )


def check_grouping(runs, options) -> dict:
    """The grouping options, checked on every run; refuses impossible groupings (one line naming the option).

    When leaving out the networks that did not learn leaves too few networks to group (a small zoo
    half at chance), they are included instead (`include_not_learned`), with a warning and a
    `grouping_note` the report shows: a study of the networks that are there beats none. Runs
    without metrics.csv are skipped.

    Args:
      runs: ``(name, run directory)`` pairs.
      options: analysis options; those in `GROUPING_OPTIONS` are used.

    Returns:
      `options`, with ``include_not_learned=True`` and a `grouping_note` when that was needed.

    Raises:
      ClaimError: a run cannot be grouped even with the networks that did not learn included (or
        `include_not_learned` was already set).
    """
    for _, rd in runs:
        if not (rd / "metrics.csv").exists():
            continue
        params = rundir.load_params(rd / "params.npz")
        try:
            run_groups(rd, params, options)
        except ClaimError as e:
            if options.get("include_not_learned"):
                raise
            try:
                run_groups(rd, params, {**options, "include_not_learned": True})
            except ClaimError:
                raise e from None
            note = f"networks that did not learn are included: leaving them out, the grouping fails ({e})"
            log.warning("%s: %s", rd, note)
            options = {**options, "include_not_learned": True, "grouping_note": note}
    return options
