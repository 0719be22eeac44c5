"""`train_and_evaluate(config, workdir)`: a config in, a run directory out.

The linear driver behind `jaxweights train`: load the data once onto the device, build the
vmapped functions of each static group, then loop over epochs (the only Python loop), writing
metrics, checkpoints and, at the end, the final parameters. A workdir that holds a partial run
of the same config is resumed from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import models, train
from jaxweights.io import atomic, checkpoints, rundir

log = logging.getLogger("jaxweights")

METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc", "diverged", "exploded", "max_abs_weight"]
BOOL_METRICS = ("diverged", "exploded")


def _float32_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Saved metrics read back as the float32 the device wrote (rewritten rows then read the same);
    columns an older run directory lacks stay missing."""
    return df.astype({c: np.float32 for c in METRIC_COLUMNS if c not in BOOL_METRICS and c in df})


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (e.g. it holds a different config)."""


# ============================== data ==============================


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """Loads the config's dataset (sources logged), keeping `max_train`/`max_test` examples."""
    return data_lib.load(
        config.dataset,
        data_dir=config.data_dir or None,
        max_train=config.max_train or None,
        max_test=config.max_test or None,
    )


# ============================== setup ==============================


def make_setup(config: ml_collections.ConfigDict, ds: data_lib.Dataset, model: Any = None) -> train.Setup:
    """The static `train.Setup` of a config (model, optimizer family, schedule, batch size).

    `model`: a Flax linen module of your own, used instead of `config.model` (see `train_and_evaluate`).
    """
    image_shape = tuple(ds.x_train.shape[1:])
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    try:
        if model is None:
            model = models.make_model(
                config.model.name,
                num_classes=ds.num_classes,
                image_shape=image_shape,
                init=config.model.get("init", "fan_in"),
                dtype=dtype,
                **config_lib.model_kwargs(config),
            )
    except (ValueError, TypeError) as e:
        raise config_lib.ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None
    if config.batch_size > ds.x_train.shape[0]:
        raise config_lib.ConfigError(
            f"config.batch_size: {config.batch_size} is larger than the {ds.x_train.shape[0]} training examples"
        )
    steps_per_epoch = ds.x_train.shape[0] // config.batch_size
    mean, std = data_lib.normalization(ds.name)
    return train.Setup(
        model=model,
        optimizer=config.optimizer,
        momentum=float(config.momentum),
        schedule=config.schedule,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
        total_steps=steps_per_epoch * config.num_epochs,
        batch_size=config.batch_size,
        num_classes=ds.num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        root_seed=int(config.seed),
        compute_dtype=jnp.bfloat16 if dtype else jnp.float32,
        vmap_chunk=int(config.get("vmap_chunk", 0)) or train.default_vmap_chunk(),
    )


def _record_model(cfg: dict[str, Any], model: Any) -> dict[str, Any]:
    """The config dict as written to config.json, naming a user's own module when there is one."""
    if model is not None:
        cfg["model"] = {
            "name": "custom",
            "module": f"{type(model).__module__}.{type(model).__qualname__}",
            "repr": repr(model),
        }
    return cfg


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
        if jax.process_index() == 0:  # one process deletes; the others wait for it
            for name in ("checkpoints", "groups", "chunks", "metrics.csv", "params.npz", "hparams.csv", "config.json"):
                p = workdir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        _sync("claimed " + str(workdir))
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
    dataset: data_lib.Dataset | None = None,
    model: Any = None,
) -> pd.DataFrame:
    """Trains one compiled group (one static choice) and writes its run directory.

    The networks axis is sharded over a `train.networks_mesh` of `config.num_devices` devices
    (all of them by default, on every host). A zoo larger than the memory plan allows
    (`train.plan_memory`) is split into equal chunks trained one after another, each into
    `workdir/chunks/<KK>/`, then combined into the top-level `metrics.csv` and `params.npz`.

    Args:
      config: a validated config without `groups`.
      workdir: the run directory; created if missing, resumed if it holds this config's partial run.
      overwrite: discard what `workdir` holds instead of resuming or refusing.
      progress: show a progress bar.
      dataset: an already-loaded dataset (skips loading).
      model: a Flax linen module of your own instead of `config.model` (see `train_and_evaluate`).

    Returns:
      The metrics table (also written to `workdir/metrics.csv`).
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    init_distributed(config)
    cfg = _record_model(config.to_dict(), model)
    main = jax.process_index() == 0
    resume = _check_or_claim(workdir, cfg, overwrite)
    ds = dataset if dataset is not None else load_dataset(config)
    setup = make_setup(config, ds, model)
    grid = config_lib.hyperparameter_grid(config)
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

    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(workdir / "config.json", cfg)
        atomic.write_csv(workdir / "hparams.csv", grid)
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
        _train_chunk(
            config, workdir, grid, fns, data, mesh, plan.chunk_size, resume, progress, setup.num_classes, order
        )
        return pd.read_csv(workdir / "metrics.csv")

    if main:
        atomic.write_json(workdir / "chunks" / "plan.json", plan._asdict())
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
        if resume and (cdir / "params.npz").exists():  # finished before an interruption
            frames.append(_float32_metrics(pd.read_csv(cdir / "metrics.csv")))
            continue
        frames.append(
            _train_chunk(
                config, cdir, rows, fns, data, mesh, plan.chunk_size, resume, progress, setup.num_classes, order
            )
        )
    metrics = pd.concat(frames).sort_values(["epoch", "network"], kind="stable").reset_index(drop=True)
    if main:
        atomic.write_csv(workdir / "metrics.csv", metrics)
        _concat_params(
            [workdir / "chunks" / f"{k:02d}" / "params.npz" for k in range(plan.num_chunks)], workdir / "params.npz"
        )
    _sync("combined " + str(workdir))
    return pd.read_csv(workdir / "metrics.csv")


def _train_chunk(
    config: ml_collections.ConfigDict,
    workdir: Path,
    grid: pd.DataFrame,
    fns: train.ZooFns,
    data: tuple,
    mesh,
    n_pad: int,
    resume: bool,
    progress: bool,
    num_classes: int,
    order: list[str] | None = None,
) -> pd.DataFrame:
    """Trains the networks of `grid`, padded to `n_pad` (copies of the last one), into `workdir`.

    After each epoch a network is flagged `exploded` by `train.exploded` (the factors are
    `config.explode_loss_factor` and `config.explode_weight_factor`; see the README's "Run directory").

    Padded networks are exact copies of the last real one (same seed and hyperparameters), so
    they cost compute but never change a number; they are sliced off before anything is
    written: metrics, checkpoints and parameters hold `len(grid)` networks.
    """
    main = jax.process_index() == 0
    x_train, y_train, x_test, y_test, m_test = data
    n = len(grid)
    padded = pd.concat([grid, grid.iloc[[n - 1] * (n_pad - n)]], ignore_index=True)
    hp = train.shard(train.Hyper(*(np.asarray(f) for f in train.hyper_from_grid(padded))), mesh)
    ckpt = checkpoints.Checkpoints(workdir, keep=config.keep_checkpoints)
    # the yardstick of the exploded rule, from the (deterministic) initialisation: resumes get the same
    w_ref = np.asarray(train.to_host(fns.reference_weight(hp)))[:n]
    state = fns.init(hp)
    start, frames = 0, []
    if resume and ckpt.latest_epoch() is not None:
        start = ckpt.latest_epoch()
        state = _restore(ckpt, start, state, n, mesh)
        if start > 0 and (workdir / "metrics.csv").exists():
            old = _float32_metrics(pd.read_csv(workdir / "metrics.csv"))
            frames.append(old[old.epoch <= start])
        log.info("%s: resuming after epoch %d", workdir, start)
    elif start == 0:
        ckpt.save(0, _unpad(state, n, mesh))

    n_nets, steps = n_pad, x_train.shape[0] // config.batch_size
    bar = _progress(config.num_epochs, start, progress and main, str(config.model.name))
    for epoch in range(start + 1, config.num_epochs + 1):
        t0 = time.perf_counter()
        e = train.shard(np.int32(epoch), mesh, networks_axis=False)
        state, train_m = fns.train_epoch(state, hp, e, x_train, y_train)
        test_m = fns.evaluate(state.params, x_test, y_test, m_test)
        m = train.to_host({**train_m, **test_m, "diverged": state.diverged})
        m = {k: np.asarray(v)[:n] for k, v in m.items()}  # padding never reaches the outputs
        m["exploded"] = train.exploded(
            m["test_loss"],
            m["max_abs_weight"],
            w_ref,
            m["diverged"],
            num_classes,
            float(config.explode_loss_factor),
            float(config.explode_weight_factor),
        )
        dt = time.perf_counter() - t0
        frames.append(_metrics_rows(grid, epoch, m))
        if main:
            atomic.write_csv(workdir / "metrics.csv", pd.concat(frames, ignore_index=True))
        if epoch % config.checkpoint_every == 0 or epoch == config.num_epochs:
            ckpt.save(epoch, _unpad(state, n, mesh))
        ok = ~m["diverged"] & ~m["exploded"]
        best = float(np.max(m["test_acc"][ok])) if ok.any() else float("nan")
        bar.update(1)
        bar.set_postfix_str(
            f"nets={n} nets·steps/s={n_nets * steps / dt:,.0f} best_acc={best:.4f} "
            f"diverged={int(m['diverged'].sum())} exploded={int(m['exploded'].sum())}"
        )
        log.info(
            "epoch %d/%d: %.1fs, %.0f networks·steps/s, best test acc %.4f, %d diverged, %d exploded",
            epoch,
            config.num_epochs,
            dt,
            n_nets * steps / dt,
            best,
            int(m["diverged"].sum()),
            int(m["exploded"].sum()),
        )
    bar.close()
    ckpt.close()
    params = jax.tree.map(lambda x: np.asarray(x)[:n], train.to_host(state.params))
    if main:
        rundir.write_params(workdir / "params.npz", params, order=order)  # members in execution order
    _sync("trained " + str(workdir))
    return pd.concat(frames, ignore_index=True)


# ============================== devices, hosts, memory ==============================


def init_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins the processes of a multi-host job (`config.multihost`) with `jax.distributed.initialize`.

    On TPU pods, Slurm and Open MPI the coordinator, process count and process id are detected;
    elsewhere they come from `$JAX_COORDINATOR_ADDRESS`, `$JAX_NUM_PROCESSES` and
    `$JAX_PROCESS_ID`. Must run before anything touches a device; later calls do nothing.
    """
    if not config.get("multihost", False) or jax.distributed.is_initialized():
        return
    kw = {
        k: int(os.environ[v])
        for k, v in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
        if os.environ.get(v)
    }
    jax.distributed.initialize(**kw)
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _sync(name: str) -> None:
    """A barrier across processes (nothing on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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


def _unpad(state: Any, n: int, mesh) -> Any:
    """The first n networks of a padded state, for a checkpoint of n networks.

    n a multiple of the devices: sharded like the state. Otherwise (uneven shards cannot be
    sharded) gathered to host memory on one process, never a whole copy per device; only a
    multi-host job falls back to a replicated copy on every device.
    """
    if jax.tree.leaves(state)[0].shape[0] == n:
        return state
    if n % mesh.size == 0:
        net = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(train.NETWORKS))
        return jax.jit(lambda s: jax.tree.map(lambda x: x[:n], s), out_shardings=net)(state)
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[:n].copy(), state)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(lambda s: jax.tree.map(lambda x: x[:n], s), out_shardings=rep)(state)


def _restore(ckpt: checkpoints.Checkpoints, epoch: int, like: Any, n: int, mesh) -> Any:
    """Restores a checkpoint of n networks onto the mesh, padded again like `like` (see `_unpad`)."""
    n_pad = jax.tree.leaves(like)[0].shape[0]
    net = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(train.NETWORKS))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if n == n_pad or n % mesh.size == 0:
        sharding = net
    elif jax.process_count() == 1:
        sharding = None  # to host memory, padded there, then sharded
    else:
        sharding = rep
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, *x.shape[1:]), x.dtype, sharding=sharding), like)
    if sharding is None:
        abstract = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    state = ckpt.restore(epoch, abstract)
    state = train.TrainState(*state) if not isinstance(state, train.TrainState) else state
    if n == n_pad:
        return state
    if sharding is None:
        state = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], n_pad - n, 0)]), state)
        return train.shard(state, mesh)
    pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], n_pad - n, 0)])
    return jax.jit(lambda s: jax.tree.map(pad, s), out_shardings=net)(state)


def _concat_params(paths: list[Path], out: Path) -> None:
    """Concatenates the `params.npz` of chunks along the networks axis, one chunk's leaf in memory at a time.

    Each leaf is streamed into the zip as one `.npy` (the header of the whole array, then the
    chunks' rows), so a zoo larger than memory still gets one `params.npz` that `np.load` reads.
    Members keep the chunks' order (the model's execution order) and are dated 1980-01-01 like
    `atomic.npz_bytes`, so equal runs give equal files.
    """
    files = [np.load(p) for p in paths]
    try:

        def write(f):
            with zipfile.ZipFile(f, "w", allowZip64=True) as zf:
                for k in files[0].files:
                    first = files[0][k]
                    header = np.lib.format.header_data_from_array_1_0(first)
                    header["shape"] = (sum(z[k].shape[0] for z in files), *first.shape[1:])
                    info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    with zf.open(info, "w", force_zip64=True) as g:
                        np.lib.format.write_array_header_2_0(g, header)
                        for z in files:
                            g.write(np.ascontiguousarray(z[k], first.dtype).tobytes())

        atomic.atomic_write(out, write)
    finally:
        for z in files:
            z.close()


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
    column and one column per overridden key.

    Bring your own model: `model=` takes any `flax.linen.Module` mapping a batch of images
    `(B, H, W, C)` (standardised floats) to logits `(B, num_classes)`; it replaces `config.model`
    and trains with the same vmapped program, grid, checkpoints and run directory. Leaves named
    `kernel` are multiplied by each network's init scale; `config.json` records the module
    (`model.name = "custom"`, its class and repr) so a resumed run must use the same one.

    Returns:
      The (combined) metrics table.
    """
    workdir = Path(workdir)
    config_lib.validate(config)
    groups = group_configs(config)
    if len(groups) == 1 and groups[0][0] == "":
        return train_group(config, workdir, overwrite=overwrite, progress=progress, model=model)
    for _, g in groups:
        config_lib.validate(g)
    init_distributed(config)
    main = jax.process_index() == 0
    cfg = _record_model(config.to_dict(), model)
    _check_or_claim(workdir, cfg, overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic.write_json(workdir / "config.json", cfg)
    cache: dict[tuple, data_lib.Dataset] = {}
    frames, offset = [], 0
    for (name, g), overrides in zip(groups, config.groups):
        key = (g.dataset, g.data_dir, g.max_train, g.max_test)
        if key not in cache:
            cache[key] = load_dataset(g)
        df = train_group(
            g, workdir / "groups" / name, overwrite=overwrite, progress=progress, dataset=cache[key], model=model
        )
        df.insert(0, "group", name)
        for k, v in dict(overrides).items():
            df[k] = str(v)
        n_nets = int(df["network"].nunique())
        df["network"] += offset
        offset += n_nets
        frames.append(df)
        if main:
            atomic.write_csv(workdir / "metrics.csv", pd.concat(frames, ignore_index=True))
    return pd.concat(frames, ignore_index=True)
