"""`train_and_evaluate(config, workdir)`: a config in, a run directory out.

The linear driver behind `jaxweights train`: load the data once onto the device, build the
vmapped functions of each static group, then loop over epochs (the only Python loop), writing
metrics, checkpoints and, at the end, the final parameters. A workdir that holds a partial run
of the same config is resumed from its last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import models, rundir, train

log = logging.getLogger("jaxweights")

METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc", "diverged"]


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (e.g. it holds a different config)."""


# ============================== data ==============================

def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """Loads the config's dataset (sources logged), keeping `max_train`/`max_test` examples."""
    return data_lib.load(config.dataset, data_dir=config.data_dir or None,
                         max_train=config.max_train or None, max_test=config.max_test or None)


# ============================== setup ==============================

def make_setup(config: ml_collections.ConfigDict, ds: data_lib.Dataset) -> train.Setup:
    """The static `train.Setup` of a config (model, optimizer family, schedule, batch size)."""
    image_shape = tuple(ds.x_train.shape[1:])
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    try:
        model = models.make_model(config.model.name, num_classes=ds.num_classes, image_shape=image_shape,
                                  init=config.model.get("init", "fan_in"), dtype=dtype,
                                  **config_lib.model_kwargs(config))
    except (ValueError, TypeError) as e:
        raise config_lib.ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None
    if config.batch_size > ds.x_train.shape[0]:
        raise config_lib.ConfigError(
            f"config.batch_size: {config.batch_size} is larger than the {ds.x_train.shape[0]} training examples")
    steps_per_epoch = ds.x_train.shape[0] // config.batch_size
    mean, std = data_lib.normalization(ds.name)
    return train.Setup(
        model=model, optimizer=config.optimizer, momentum=float(config.momentum), schedule=config.schedule,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
        total_steps=steps_per_epoch * config.num_epochs, batch_size=config.batch_size,
        num_classes=ds.num_classes, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        root_seed=int(config.seed), compute_dtype=jnp.bfloat16 if dtype else jnp.float32)


# ============================== one group ==============================

def _metrics_rows(grid: pd.DataFrame, epoch: int, m: dict[str, np.ndarray]) -> pd.DataFrame:
    df = grid.copy()
    df.insert(len(df.columns), "epoch", epoch)
    for k in METRIC_COLUMNS:
        df[k] = m[k]
    return df


def _check_or_claim(workdir: Path, cfg: dict[str, Any], overwrite: bool) -> bool:
    """Returns True when `workdir` holds a run of this same config to resume."""
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return False
    if overwrite:
        for name in ("checkpoints", "groups", "metrics.csv", "params.npz", "hparams.csv", "config.json"):
            p = workdir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return False
    diffs = rundir.config_differences(rundir.read_config(saved_path), cfg)
    if diffs:
        raise RunError(f"{workdir}: holds a run of a different config ({'; '.join(diffs)}); "
                       "use another --workdir or --overwrite")
    return True


def train_group(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False,
                progress: bool = True, dataset: data_lib.Dataset | None = None) -> pd.DataFrame:
    """Trains one compiled group (one static choice) and writes its run directory.

    Args:
      config: a validated config without `groups`.
      workdir: the run directory; created if missing, resumed if it holds this config's partial run.
      overwrite: discard what `workdir` holds instead of resuming or refusing.
      progress: show a progress bar.
      dataset: an already-loaded dataset (skips loading).

    Returns:
      The metrics table (also written to `workdir/metrics.csv`).
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    cfg = config.to_dict()
    resume = _check_or_claim(workdir, cfg, overwrite)
    ds = dataset if dataset is not None else load_dataset(config)
    setup = make_setup(config, ds)
    grid = config_lib.hyperparameter_grid(config)
    hp = train.hyper_from_grid(grid)
    image_shape = tuple(ds.x_train.shape[1:])
    fns = train.make_zoo_fns(setup, image_shape, min(config.eval_batch_size, ds.x_test.shape[0]))

    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(workdir / "config.json", cfg)
    rundir.write_csv(workdir / "hparams.csv", grid)
    x_train, y_train = jax.device_put(ds.x_train), jax.device_put(ds.y_train.astype(np.int32))
    xt, yt, mt = train.pad_split(ds.x_test, ds.y_test.astype(np.int32), min(config.eval_batch_size, ds.x_test.shape[0]))
    x_test, y_test, m_test = jax.device_put(xt), jax.device_put(yt), jax.device_put(mt)

    ckpt = rundir.Checkpoints(workdir, keep=config.keep_checkpoints)
    state = fns.init(hp)
    start, frames = 0, []
    if resume and ckpt.latest_epoch() is not None:
        start = ckpt.latest_epoch()
        state = ckpt.restore(start, state)
        if start > 0 and (workdir / "metrics.csv").exists():
            old = pd.read_csv(workdir / "metrics.csv")
            # Metrics are float32 on device; keep them float32 so rewritten rows read the same.
            old = old.astype({k: np.float32 for k in METRIC_COLUMNS if k != "diverged"})
            frames.append(old[old.epoch <= start])
        log.info("%s: resuming after epoch %d", workdir, start)
    elif start == 0:
        ckpt.save(0, state)

    n_nets, steps = len(grid), ds.x_train.shape[0] // config.batch_size
    log.info("%s: %d networks × %d steps/epoch × %d epochs (%s on %s)", workdir, n_nets, steps,
             config.num_epochs, config.model.name, config.dataset)
    bar = _progress(config.num_epochs, start, progress, str(config.model.name))
    for epoch in range(start + 1, config.num_epochs + 1):
        t0 = time.perf_counter()
        state, train_m = fns.train_epoch(state, hp, jnp.int32(epoch), x_train, y_train)
        test_m = fns.evaluate(state.params, x_test, y_test, m_test)
        m = {k: np.asarray(v) for k, v in {**train_m, **test_m}.items()}
        m["diverged"] = np.asarray(state.diverged)
        dt = time.perf_counter() - t0
        frames.append(_metrics_rows(grid, epoch, m))
        rundir.write_csv(workdir / "metrics.csv", pd.concat(frames, ignore_index=True))
        if epoch % config.checkpoint_every == 0 or epoch == config.num_epochs:
            ckpt.save(epoch, state)
        ok = ~m["diverged"]
        best = float(np.max(m["test_acc"][ok])) if ok.any() else float("nan")
        bar.update(1)
        bar.set_postfix_str(f"nets={n_nets} nets·steps/s={n_nets * steps / dt:,.0f} best_acc={best:.4f} "
                            f"diverged={int(m['diverged'].sum())}")
        log.info("epoch %d/%d: %.1fs, %.0f networks·steps/s, best test acc %.4f, %d diverged",
                 epoch, config.num_epochs, dt, n_nets * steps / dt, best, int(m["diverged"].sum()))
    bar.close()
    ckpt.close()
    rundir.write_params(workdir / "params.npz", state.params)
    return pd.read_csv(workdir / "metrics.csv")


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="epoch")


# ============================== the zoo ==============================

def group_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) per static group: one entry named "" when the config has no `groups`."""
    groups = list(config.get("groups", ()) or ())
    if not groups:
        return [("", config)]
    out = []
    for k, overrides in enumerate(groups):
        if not isinstance(overrides, dict) or not overrides:
            raise config_lib.ConfigError(f"config.groups[{k}]: expected a non-empty dict of overrides, got {overrides!r}")
        out.append((f"{k:02d}", config_lib.apply_overrides(config, dict(overrides))))
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False,
                       progress: bool = True) -> pd.DataFrame:
    """Trains the zoo a config describes and writes its run directory.

    Static groups (`config.groups`) are compiled and trained one after another, each into
    `workdir/groups/<NN>/`; their metrics are combined in `workdir/metrics.csv` with a `group`
    column and one column per overridden key.

    Returns:
      The (combined) metrics table.
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    groups = group_configs(config)
    if len(groups) == 1 and groups[0][0] == "":
        return train_group(config, workdir, overwrite=overwrite, progress=progress)
    for _, g in groups:
        config_lib.validate(g)
    cfg = config.to_dict()
    _check_or_claim(workdir, cfg, overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(workdir / "config.json", cfg)
    cache: dict[tuple, data_lib.Dataset] = {}
    frames, offset = [], 0
    for (name, g), overrides in zip(groups, config.groups):
        key = (g.dataset, g.data_dir, g.max_train, g.max_test)
        if key not in cache:
            cache[key] = load_dataset(g)
        df = train_group(g, workdir / "groups" / name, overwrite=overwrite, progress=progress, dataset=cache[key])
        df.insert(0, "group", name)
        for k, v in dict(overrides).items():
            df[k] = str(v)
        n_nets = int(df["network"].nunique())
        df["network"] += offset
        offset += n_nets
        frames.append(df)
        rundir.write_csv(workdir / "metrics.csv", pd.concat(frames, ignore_index=True))
    return pd.concat(frames, ignore_index=True)
