"""One chunk of a group's networks trained epoch by epoch: metrics rows, checkpoints, the final parameters.

Padded networks (copies of the last real one) make each device's share a multiple of `vmap_chunk`
(`train.pad_networks`); they are sliced off before anything is written (`unpad`) and added again
on resume (`restore`).
"""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from jaxweights import train
from jaxweights.io import atomic, checkpoints, digests, metrics_record, rundir
from jaxweights.pipelines import resume as resume_lib

log = logging.getLogger("jaxweights")

METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc", "diverged", "exploded", "max_abs_weight"]
BOOL_METRICS = ("diverged", "exploded")


def float32_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Saved metrics read back as the float32 the device wrote (rewritten rows then read the same);
    columns an older run directory lacks stay missing.

    Args:
      df: a metrics table read from `metrics.csv`.

    Returns:
      The table with its float metric columns as float32.
    """
    return df.astype({c: np.float32 for c in METRIC_COLUMNS if c not in BOOL_METRICS and c in df})


def _metrics_rows(grid: pd.DataFrame, epoch: int, m: dict[str, np.ndarray]) -> pd.DataFrame:
    df = grid.copy()
    df.insert(len(df.columns), "epoch", epoch)
    for k in METRIC_COLUMNS:
        df[k] = m[k]
    return df


def train_chunk(
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

    Args:
      config: the group's config.
      workdir: the chunk's run directory.
      grid: the chunk's rows of the hyperparameter grid.
      fns: the group's compiled functions (`train.make_zoo_fns`).
      data: (x_train, y_train, x_test, y_test, test mask) on the mesh.
      mesh: the networks mesh.
      n_pad: networks the compiled program takes (`MemoryPlan.chunk_size`: a multiple of the mesh
        size × the vmap width).
      resume: continue from the last checkpoint in `workdir`.
      progress: show a progress bar.
      num_classes: classes of the task.
      order: parameter paths in execution order for `params.npz`.

    Returns:
      The chunk's metrics table.

    Raises:
      CheckpointError: resuming, and no checkpoint is intact.
      OSError: the disk refused a write (the message names the file or checkpoint).
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
    # metrics.csv is derived: the header, then each epoch's rows as kept in the record beside the checkpoints
    head = resume_lib.header([*grid.columns, "epoch", *METRIC_COLUMNS])
    record = ckpt.directory / metrics_record.RECORD
    start, rows, digest = 0, [], None
    if resume and ckpt.latest_epoch() is not None:
        like = state
        start, state, rows, digest = resume_lib.resume_point(
            ckpt, workdir, head, float32_metrics, lambda e: restore(ckpt, e, like, n, mesh)
        )
        log.info("%s: resuming after epoch %d", workdir, start)
    else:
        if main:  # a record left without any checkpoint (deleted) describes nothing any more
            record.unlink(missing_ok=True)
        ckpt.save(0, unpad(state, n, mesh))
    shas = [digests.sha256_text(r) for r in rows]  # of each epoch's rows, in the next checkpoint's digest

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
        rows.append(resume_lib.rows_text(_metrics_rows(grid, epoch, m)))
        shas.append(digests.sha256_text(rows[-1]))
        if main:  # the record first: metrics.csv is derived from it
            metrics_record.append(record, epoch, rows[-1])
            atomic.atomic_write_bytes(workdir / "metrics.csv", metrics_record.table(head, rows).encode())
        if epoch % config.checkpoint_every == 0 or epoch == config.num_epochs:
            ckpt.save(epoch, unpad(state, n, mesh), metrics=shas)
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
    # a finished chunk resumed keeps an intact params.npz as it is
    done = start == config.num_epochs and digest is not None
    bad = resume_lib.params_mismatch(workdir / "params.npz", digest) if done else "missing"
    if bad is not None:
        if bad != "missing" and main:
            log.warning("%s: %s; written again from checkpoint epoch %d", workdir / "params.npz", bad, start)
        params = jax.tree.map(lambda x: np.asarray(x)[:n], train.to_host(state.params))
        if main:
            rundir.write_params(workdir / "params.npz", params, order=order)  # members in execution order
    train.sync("trained " + str(workdir))
    return resume_lib.table(metrics_record.table(head, rows), float32_metrics)


def unpad(state: Any, n: int, mesh) -> Any:
    """The first n networks of a padded state, for a checkpoint of n networks.

    n a multiple of the devices: sharded like the state. Otherwise (uneven shards cannot be
    sharded) gathered to host memory on one process, never a whole copy per device; only a
    multi-host job falls back to a replicated copy on every device.

    Args:
      state: the padded state on the mesh.
      n: the real networks.
      mesh: the networks mesh.

    Returns:
      The state of the first n networks.
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


def restore(ckpt: checkpoints.Checkpoints, epoch: int, like: Any, n: int, mesh) -> Any:
    """Restores a checkpoint of n networks onto the mesh, padded again like `like` (see `unpad`).

    Args:
      ckpt: the chunk's checkpoints.
      epoch: the epoch to restore.
      like: the padded state (structure, shapes and dtypes).
      n: networks in the checkpoint.
      mesh: the networks mesh.

    Returns:
      The padded `TrainState` on the mesh.
    """
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


def concat_params(paths: list[Path], out: Path) -> None:
    """Concatenates the `params.npz` of chunks along the networks axis, one chunk's leaf in memory at a time.

    Each leaf is streamed into the zip as one `.npy` (the header of the whole array, then the
    chunks' rows), so a zoo larger than memory still gets one `params.npz` that `np.load` reads.
    Members keep the chunks' order (the model's execution order) and are dated 1980-01-01 like
    `atomic.npz_bytes`, so equal runs give equal files.

    Args:
      paths: the chunks' `params.npz`, in order.
      out: the combined file to write.
    """
    files = []

    def read(i: int, k: str | None = None):
        """Chunk i's open file (k None) or its member k; a damaged chunk file is one line naming it."""
        try:
            return np.load(paths[i], allow_pickle=False) if k is None else files[i][k]
        except rundir.NPZ_ERRORS as e:
            hint = "run the same command again to rebuild it from the chunk's checkpoints"
            raise rundir.unreadable(paths[i], e, hint) from None

    try:
        for i in range(len(paths)):
            files.append(read(i))

        def write(f):
            with zipfile.ZipFile(f, "w", allowZip64=True) as zf:
                for k in files[0].files:
                    first = read(0, k)
                    header = np.lib.format.header_data_from_array_1_0(first)
                    header["shape"] = (sum(read(i, k).shape[0] for i in range(len(files))), *first.shape[1:])
                    info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    with zf.open(info, "w", force_zip64=True) as g:
                        np.lib.format.write_array_header_2_0(g, header)
                        for i in range(len(files)):
                            g.write(np.ascontiguousarray(read(i, k), first.dtype).tobytes())

        atomic.atomic_write(out, write)
    finally:
        for z in files:
            z.close()


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="epoch")
