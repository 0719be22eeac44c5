"""`train_and_evaluate(config, workdir)`: a config in, a run directory out.

The linear driver behind `jaxweights train`: load the data once onto the device, build the
vmapped functions of each static group, then loop over epochs (the only Python loop), writing
metrics, checkpoints and, at the end, the final parameters. A workdir that holds a partial run
of the same config is resumed from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import pandas as pd

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import models, train
from jaxweights.io import atomic, rundir
from jaxweights.io.lock import workdir_lock
from jaxweights.pipelines import resume as resume_lib
from jaxweights.pipelines import train_chunk

log = logging.getLogger("jaxweights")


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (e.g. it holds a different config)."""


# ============================== data ==============================


def _record_model(cfg: dict[str, Any], model: Any) -> dict[str, Any]:
    """The config dict as written to config.json, naming a user's own module when there is one."""
    if model is not None:
        cfg["model"] = {
            "name": "custom",
            "module": f"{type(model).__module__}.{type(model).__qualname__}",
            "repr": repr(model),
        }
    return cfg


def _check_or_claim(workdir: Path, cfg: dict[str, Any], overwrite: bool) -> bool:
    """Returns True when `workdir` holds a run of this same config to resume."""
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return False
    if overwrite:
        if jax.process_index() == 0:  # one process deletes; the others wait for it
            for name in ("checkpoints", "groups", "chunks", "metrics.csv", "params.npz", "hparams.csv", "config.json"):
                p = workdir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        train.sync("claimed " + str(workdir))
        return False
    diffs = rundir.config_differences(rundir.read_config(saved_path), cfg)
    if diffs:
        raise RunError(
            f"{workdir}: holds a run of a different config ({'; '.join(diffs)}); use another --workdir or --overwrite"
        )
    return True


def train_group(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    dataset: data_lib.Dataset | Callable[[], data_lib.Dataset] | None = None,
    model: Any = None,
) -> pd.DataFrame:
    """Trains one compiled group (one static choice) and writes its run directory.

    The networks axis is sharded over a `train.networks_mesh` of `config.num_devices` devices
    (all of them by default, on every host). A zoo larger than the memory plan allows
    (`train.plan_memory`) is split into equal chunks trained one after another, each into
    `workdir/chunks/<KK>/`, then combined into the top-level `metrics.csv` and `params.npz`.
    Each device's share of a chunk is padded to a multiple of `vmap_chunk`, so every network
    trains in the same program whatever the devices, the chunks or the other networks.

    Args:
      config: a validated config without `groups`.
      workdir: the run directory; created if missing, resumed if it holds this config's partial run.
      overwrite: discard what `workdir` holds instead of resuming or refusing.
      progress: show a progress bar.
      dataset: an already-loaded dataset (skips loading), or a function returning one (called
        only when the group trains: a finished group is checked without its data).
      model: a Flax linen module of your own instead of `config.model` (see `train_and_evaluate`).

    Returns:
      The metrics table (also written to `workdir/metrics.csv`); its `attrs["complete"]` is True
      when the run had already finished and was only checked (nothing trained).

    Raises:
      WorkdirLockedError: another process works in `workdir` (see `jaxweights.io.lock`).
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    train.init_distributed(config)  # before the lock: it asks which process this is
    with workdir_lock(workdir, "train"):  # before `_check_or_claim` deletes anything
        return _train_group(config, workdir, overwrite, progress, dataset, model)


def _train_group(config, workdir: Path, overwrite, progress, dataset, model) -> pd.DataFrame:
    """`train_group` once the workdir is locked."""
    cfg = _record_model(config.to_dict(), model)
    main = jax.process_index() == 0
    resume = _check_or_claim(workdir, cfg, overwrite)
    grid = config_lib.hyperparameter_grid(config)
    if resume:
        done = _finished(config, workdir, grid, main)
        if done is not None:
            if main:
                atomic.write_json(workdir / "config.json", cfg, if_changed=True)
                atomic.write_csv(workdir / "hparams.csv", grid, if_changed=True)
            log.info("%s: complete (params.npz and metrics.csv match its checkpoints); nothing to train", workdir)
            done.attrs["complete"] = True
            return done
    ds = dataset() if callable(dataset) else dataset if dataset is not None else data_lib.load_dataset(config)
    setup = train.make_setup(config, ds, model)
    image_shape = tuple(ds.x_train.shape[1:])
    eval_batch = min(config.eval_batch_size, ds.x_test.shape[0])
    try:
        mesh = train.networks_mesh(int(config.num_devices))
    except ValueError as e:
        raise config_lib.ConfigError(f"config.{e}") from None
    xt, yt, mt = train.pad_split(ds.x_test, ds.y_test.astype(np.int32), eval_batch)
    host_data = (ds.x_train, ds.y_train.astype(np.int32), xt, yt, mt)
    plan = _memory_plan(
        config,
        setup,
        image_shape,
        eval_batch,
        len(grid),
        mesh,
        sum(a.nbytes for a in host_data),
        workdir if resume else None,
    )
    log.info("%s: %s", workdir, plan.describe())
    if plan.vmap_chunk != setup.vmap_chunk:  # config.chunk_size or the memory allow fewer at once
        log.warning(
            "%s: %d networks vmapped at once, not vmap_chunk=%d (a device holds no more at a time): the numbers "
            "differ in the last bits from a run that vmaps %d",
            workdir,
            plan.vmap_chunk,
            setup.vmap_chunk,
            setup.vmap_chunk,
        )
        setup = dataclasses.replace(setup, vmap_chunk=plan.vmap_chunk)

    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(workdir / "config.json", cfg, if_changed=True)
        atomic.write_csv(workdir / "hparams.csv", grid, if_changed=True)
    data = train.shard(host_data, mesh, networks_axis=False)  # every device holds the data
    fns = train.make_zoo_fns(setup, image_shape, eval_batch, mesh)
    order = models.param_order(setup.model, image_shape)  # params.npz keeps the model's execution order
    n_nets, steps = len(grid), ds.x_train.shape[0] // config.batch_size
    log.info(
        "%s: %d networks × %d steps/epoch × %d epochs (%s on %s, %d device(s), %d process(es))",
        workdir,
        n_nets,
        steps,
        config.num_epochs,
        config.model.name,
        config.dataset,
        mesh.size,
        jax.process_count(),
    )
    if plan.num_chunks == 1:
        train_chunk.train_chunk(
            config, workdir, grid, fns, data, mesh, plan.chunk_size, resume, progress, setup.num_classes, order
        )
        return pd.read_csv(workdir / "metrics.csv")

    if main:
        atomic.write_json(workdir / "chunks" / "plan.json", plan._asdict(), if_changed=True)
    head = _header(grid)
    frames = []
    for k in range(plan.num_chunks):
        rows = grid.iloc[k * plan.chunk_size : (k + 1) * plan.chunk_size]
        cdir = workdir / "chunks" / f"{k:02d}"
        log.info(
            "%s: chunk %d/%d, networks %d-%d",
            workdir,
            k + 1,
            plan.num_chunks,
            rows.network.iloc[0],
            rows.network.iloc[-1],
        )
        done = resume_lib.finished_chunk(cdir, head, train_chunk.float32_metrics, config.num_epochs) if resume else None
        if done is not None:  # finished before an interruption, and checked
            frames.append(done)
            continue
        frames.append(
            train_chunk.train_chunk(
                config, cdir, rows, fns, data, mesh, plan.chunk_size, resume, progress, setup.num_classes, order
            )
        )
    _combine_chunks(workdir, frames, plan.num_chunks, main)
    return pd.read_csv(workdir / "metrics.csv")


def _header(grid: pd.DataFrame) -> str:
    """The `metrics.csv` header of a group's (or chunk's) table."""
    return resume_lib.header([*grid.columns, "epoch", *train_chunk.METRIC_COLUMNS])


def _combine_chunks(workdir: Path, frames: list[pd.DataFrame], num_chunks: int, main: bool) -> None:
    """Writes the combined `metrics.csv` and `params.npz` of a chunked group, unless they already hold the chunks'."""
    metrics = pd.concat(frames).sort_values(["epoch", "network"], kind="stable").reset_index(drop=True)
    parts = [workdir / "chunks" / f"{k:02d}" / "params.npz" for k in range(num_chunks)]
    if main:
        out = workdir / "metrics.csv"
        existed = out.exists()
        if atomic.write_csv(out, metrics, if_changed=True) and existed:
            log.warning("%s: did not match its chunks' tables; rebuilt from them", out)
        out = workdir / "params.npz"
        bad = resume_lib.combined_mismatch(parts, out)
        if bad:
            if bad != "missing":
                log.warning("%s: %s; rebuilt from its chunks' params.npz", out, bad)
            train_chunk.concat_params(parts, out)
    train.sync("combined " + str(workdir))


def _finished(config: ml_collections.ConfigDict, workdir: Path, grid: pd.DataFrame, main: bool) -> pd.DataFrame | None:
    """The metrics table of a group that finished training, checked against its checkpoints; None if not finished.

    Every chunk must be finished (`resume.finished_chunk`); derived files that do not match (a
    chunk's or the combined `metrics.csv`, the combined `params.npz`) are rebuilt without
    loading data or training, intact ones are left untouched.
    """
    head, parse = _header(grid), train_chunk.float32_metrics
    plan_path = workdir / "chunks" / "plan.json"
    if not plan_path.exists():
        done = resume_lib.finished_chunk(workdir, head, parse, config.num_epochs)
        return None if done is None else pd.read_csv(workdir / "metrics.csv")
    try:
        plan = train.MemoryPlan(**rundir.read_config(plan_path))
    except (OSError, ValueError, TypeError):
        return None
    frames = []
    for k in range(plan.num_chunks):
        done = resume_lib.finished_chunk(workdir / "chunks" / f"{k:02d}", head, parse, config.num_epochs)
        if done is None:
            return None
        frames.append(done)
    _combine_chunks(workdir, frames, plan.num_chunks, main)
    return pd.read_csv(workdir / "metrics.csv")


def _memory_plan(config, setup, image_shape, eval_batch, n, mesh, data_bytes, resume_dir) -> train.MemoryPlan:
    """The chunk plan of a group: the saved one when resuming a chunked run, else a new one."""
    saved = resume_dir / "chunks" / "plan.json" if resume_dir is not None else None
    if saved is not None and saved.exists():
        return train.MemoryPlan(**rundir.read_config(saved))
    state_bytes, step_bytes = train.network_memory(setup, image_shape, eval_batch)
    limit = config.memory_limit_mb
    budget = int(limit * 2**20) if limit else int(0.9 * train.device_memory_bytes())
    try:
        return train.plan_memory(
            n, mesh.size, state_bytes, step_bytes, data_bytes, budget, int(config.chunk_size), setup.vmap_chunk
        )
    except ValueError as e:
        raise config_lib.ConfigError(f"config.memory_limit_mb: {e}") from None


def group_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) per static group: one entry named "" when the config has no `groups`.

    Args:
      config: a validated config.

    Returns:
      [(group name "00", "01", ..., its config with the group's overrides)].
    """
    groups = list(config.get("groups", ()) or ())
    if not groups:
        return [("", config)]
    out = []
    for k, overrides in enumerate(groups):
        if not isinstance(overrides, dict) or not overrides:
            raise config_lib.ConfigError(
                f"config.groups[{k}]: expected a non-empty dict of overrides, got {overrides!r}"
            )
        out.append((f"{k:02d}", config_lib.apply_overrides(config, dict(overrides))))
    return out


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    model: Any = None,
) -> pd.DataFrame:
    """Trains the zoo a config describes and writes its run directory.

    Static groups (`config.groups`) are compiled and trained one after another, each into
    `workdir/groups/<NN>/`; their metrics are combined in `workdir/metrics.csv` with a `group`
    column and one column per overridden key; network ids continue across groups.

    Bring your own model: `model=` takes any `flax.linen.Module` mapping a batch of images
    `(B, H, W, C)` (standardised floats) to logits `(B, num_classes)`; it replaces `config.model`
    and trains with the same vmapped program, grid, checkpoints and run directory. Leaves named
    `kernel` are multiplied by each network's init scale; `config.json` records the module
    (`model.name = "custom"`, its class and repr) so a resumed run must use the same one.

    Args:
      config: the training config (validated here).
      workdir: the run directory; created if missing, resumed if it holds this config's partial run.
      overwrite: discard what `workdir` holds instead of resuming or refusing.
      progress: show a progress bar.
      model: a Flax linen module of your own instead of `config.model`.

    Returns:
      The (combined) metrics table, one row per network and epoch.

    Raises:
      WorkdirLockedError: another process works in `workdir` (see `jaxweights.io.lock`).
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    groups = group_configs(config)
    for _, g in groups:
        config_lib.validate(g)
    train.init_distributed(config)  # before the lock: it asks which process this is
    with workdir_lock(workdir, "train"):  # before `_check_or_claim` deletes anything
        return _train_groups(config, groups, workdir, overwrite, progress, model)


def _train_groups(config, groups, workdir: Path, overwrite, progress, model) -> pd.DataFrame:
    """`train_and_evaluate` once the workdir is locked."""
    if len(groups) == 1 and groups[0][0] == "":
        return train_group(config, workdir, overwrite=overwrite, progress=progress, model=model)
    main = jax.process_index() == 0
    cfg = _record_model(config.to_dict(), model)
    _check_or_claim(workdir, cfg, overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic.write_json(workdir / "config.json", cfg, if_changed=True)
    cache: dict[tuple, data_lib.Dataset] = {}
    frames, offset = [], 0
    for (name, g), overrides in zip(groups, config.groups):
        key = (g.dataset, g.data_dir, g.max_train, g.max_test)

        def load(g=g, key=key):  # only when the group trains (a finished group is only checked)
            if key not in cache:
                cache[key] = data_lib.load_dataset(g)
            return cache[key]

        df = train_group(
            g, workdir / "groups" / name, overwrite=overwrite, progress=progress, dataset=load, model=model
        )
        df.insert(0, "group", name)
        for k, v in dict(overrides).items():
            df[k] = str(v)
        n_nets = int(df["network"].nunique())
        df["network"] += offset
        offset += n_nets
        frames.append(df)
        complete = all(f.attrs.get("complete", False) for f in frames)
        if main and (not complete or len(frames) == len(groups)):  # derived from the groups' tables
            out = workdir / "metrics.csv"
            existed = out.exists()
            if atomic.write_csv(out, pd.concat(frames, ignore_index=True), if_changed=True) and complete and existed:
                log.warning("%s: did not match its groups' tables; rebuilt from them", out)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["complete"] = complete
    return out
