"""What the dynamics read from a run besides its snapshots: its config, its model and the probe images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import train as train_lib
from jaxweights.dynamics.common import DynamicsError
from jaxweights.io import rundir


def run_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    """The config of a run directory: `config.json` over `config.default_config()`.

    Top-level fields added to the defaults after the run was trained keep their default value;
    sections (`model`) are taken whole from the run, since their fields depend on the model.

    Args:
      run_dir: a `jaxweights train` run directory.

    Returns:
      The run's config.
    """

    def value(v):
        if isinstance(v, dict):
            return ml_collections.ConfigDict({k: value(x) for k, x in v.items()})
        return tuple(value(x) for x in v) if isinstance(v, list) else v

    c = config_lib.default_config()
    with c.unlocked():
        for k, v in rundir.read_config(Path(run_dir) / "config.json").items():
            c[k] = value(v)
    return c


def probe_data(
    run_dir: str | Path, probe_size: int = 500, data_dir: str | None = None, model: Any = None, seed: int = 0
):
    """The model and standardised probe data of a run.

    The probe set is a seeded class-stratified draw of `probe_size` images from the whole test split
    (classes in proportion to their frequency, each present class at least once); the held-out set
    for probe accuracy a second such draw of `probe_size` (fewer if the split is smaller) from the
    remaining test images. Never the first images: a split stored grouped by class would give
    one-class sets.

    Args:
      run_dir: a `jaxweights train` run directory.
      probe_size: probe images.
      data_dir: data folder (default: the run's config).
      model: the Flax module of a run trained with your own module
        (`train_and_evaluate(..., model=...)`); other runs rebuild theirs from the config.
      seed: of the two draws.

    Returns:
      `(setup, x_probe, y_probe, x_eval, y_eval)`.

    Raises:
      DynamicsError: a custom-module run without `model`, or too few test images.
    """

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if config.model.get("name") == "custom" and model is None:
        raise DynamicsError(
            f"{run_dir}: trained with your own module {config.model.get('module', '')}; pass it as "
            "model= (write_dynamics, analyze_workdir) to capture its representations"
        )
    with config.unlocked():
        if data_dir:
            config.data_dir = str(data_dir)
        config.max_test = 0  # the whole test split: the probe and held-out sets are drawn from it below
    ds = data_lib.load_dataset(config)
    setup = train_lib.make_setup(config, ds, model)
    n = ds.x_test.shape[0]
    if n < probe_size + 10:
        raise DynamicsError(f"probe_size: {probe_size} needs more than the {n} test images")
    y = np.asarray(ds.y_test)
    probe = data_lib.stratified_indices(y, probe_size, seed=seed)
    rest = np.setdiff1d(np.arange(n), probe)
    held = rest[data_lib.stratified_indices(y[rest], min(probe_size, len(rest)), seed=seed + 1)]
    xp = train_lib.normalize(setup, jnp.asarray(ds.x_test[probe]))
    xe = train_lib.normalize(setup, jnp.asarray(ds.x_test[held]))
    return setup, xp, jnp.asarray(y[probe], jnp.int32), xe, jnp.asarray(y[held], jnp.int32)
