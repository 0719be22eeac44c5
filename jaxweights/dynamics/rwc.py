"""Relative weight change of every kernel layer between snapshots (Agrawal et al. 2020, arXiv 2011.06735).

Two definitions, kept apart:

* `rwc_l1_ratio` = ||w_t − w_{t−1}||₁ / ||w_{t−1}||₁ (the paper's formula);
* `rwc_mean_elementwise` = mean over kernel elements of |w_t − w_{t−1}| / |w_{t−1}| (their reference
  code). Elements with w_{t−1} = 0 have no relative change and are left out of the mean (the count
  left out is reported as `zero_weights`); a kernel that is all zero, like an all-zero kernel for
  `rwc_l1_ratio`, gives NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import train as train_lib
from jaxweights.dynamics.common import Array, DynamicsError
from jaxweights.dynamics.run_inputs import run_config
from jaxweights.dynamics.snapshots import kernel_layers
from jaxweights.io.checkpoints import Checkpoints
from jaxweights.models import paths


def rwc_l1_ratio(w_prev: Array, w: Array) -> Array:
    """Relative weight change ||w − w_prev||₁ / ||w_prev||₁ of one layer (Agrawal et al. 2020, eq. 1).

    Args:
      w_prev: weights at the previous snapshot (any shape).
      w: weights at the current snapshot (same shape).

    Returns:
      A scalar; NaN when `w_prev` is all zero.
    """
    num = jnp.abs(w - w_prev).sum()
    den = jnp.abs(w_prev).sum()
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def rwc_mean_elementwise(w_prev: Array, w: Array) -> tuple[Array, Array]:
    """Mean element-wise relative change mean(|w − w_prev| / |w_prev|) (Agrawal et al. 2020's code).

    Elements with `w_prev == 0` have no relative change and are left out of the mean.

    Args:
      w_prev: weights at the previous snapshot.
      w: weights at the current snapshot.

    Returns:
      `(value, zero_weights)`: the mean over the elements with `w_prev != 0` (NaN if there is
      none) and how many elements were left out.
    """
    nz = w_prev != 0
    ratio = jnp.abs(w - w_prev) / jnp.where(nz, jnp.abs(w_prev), 1.0)
    count = nz.sum()
    value = jnp.where(count > 0, jnp.where(nz, ratio, 0.0).sum() / jnp.maximum(count, 1), jnp.nan)
    return value, w_prev.size - count


@jax.jit
def _rwc_program(kernels_ExN):
    def per_leaf(w):  # (E, N, ...)
        one = lambda a, b: (rwc_l1_ratio(a, b), *rwc_mean_elementwise(a, b))
        return jax.vmap(jax.vmap(one))(w[:-1], w[1:])  # over epoch pairs, then networks

    return jax.tree.map(per_leaf, kernels_ExN)


def relative_weight_change(
    snapshots: Sequence[Mapping[str, Any]], epochs: Sequence[int] | None = None, layers: Sequence[str] | None = None
) -> pd.DataFrame:
    """Relative weight change of every kernel layer of every network between consecutive snapshots.

    Both definitions of Agrawal et al. 2020 (arXiv 2011.06735): `rwc_l1_ratio` and `rwc_mean_elementwise`.

    Args:
      snapshots: per-epoch flat parameters `[{path: (N, ...)}]`, oldest first (`load_snapshots`).
      epochs: the epoch of each snapshot (default 0, 1, ...).
      layers: kernel layers to report (default all, in the snapshots' execution order).

    Returns:
      Tidy DataFrame `network, layer, depth, epoch, rwc_l1_ratio, rwc_mean_elementwise,
      zero_weights`; `epoch` is the later snapshot of each pair (so epoch 1 compares with the
      initialisation).

    Raises:
      DynamicsError: fewer than two snapshots.
    """
    epochs = list(range(len(snapshots))) if epochs is None else list(epochs)
    if len(snapshots) < 2:
        raise DynamicsError("relative weight change needs at least two snapshots")
    layers = list(layers) if layers is not None else kernel_layers(snapshots[0])
    kernels = {l: jnp.asarray(np.stack([np.asarray(s[f"{l}/kernel"]) for s in snapshots])) for l in layers}
    out = jax.device_get(_rwc_program(kernels))
    frames = []
    for depth, l in enumerate(layers):
        l1, me, zeros = out[l]  # (E-1, N)
        e_, n_ = l1.shape
        frames.append(
            pd.DataFrame(
                {
                    "network": np.tile(np.arange(n_), e_),
                    "layer": l,
                    "depth": depth,
                    "epoch": np.repeat(np.asarray(epochs[1:]), n_),
                    "rwc_l1_ratio": l1.ravel().astype(np.float64),
                    "rwc_mean_elementwise": me.ravel().astype(np.float64),
                    "zero_weights": zeros.ravel().astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def rwc_every_k_steps(
    run_dir: str | Path, every: int, *, epochs: Sequence[int] | None = None, data_dir: str | None = None
) -> pd.DataFrame:
    """Relative weight change `rwc_l1_ratio` every `every` steps, replayed from a run's checkpoints.

    Agrawal et al. 2020 (arXiv 2011.06735), finer than per epoch. Each requested epoch is retrained
    from the checkpoint before it with the run's own config, seeds and data order (so the trajectory
    is the run's), with the kernels of the last k-step boundary carried inside the epoch's `lax.scan`
    (`train.train_epoch(..., rwc_every=k)`): no per-step snapshot is stored. With `every` = steps per
    epoch it equals the per-epoch `rwc_l1_ratio` of `relative_weight_change`.

    Args:
      run_dir: a run directory with the checkpoint of the epoch before each requested epoch.
      every: k, steps between the compared weights (boundaries at steps k, 2k, ... of an epoch).
      epochs: epochs to replay (default all with a checkpoint before them).
      data_dir: data folder (default: the run's config).

    Returns:
      Tidy DataFrame `network, layer, epoch, step, rwc_l1_ratio` (`step` counted within the epoch).

    Raises:
      DynamicsError: `every` not a positive integer, or a missing checkpoint.
    """

    run_dir = Path(run_dir)
    if not isinstance(every, int) or every <= 0:
        raise DynamicsError(f"every: must be a positive number of steps, got {every!r}")
    config = run_config(run_dir)
    if data_dir:
        with config.unlocked():
            config.data_dir = str(data_dir)
    ds = data_lib.load_dataset(config)
    setup = train_lib.make_setup(config, ds)
    hp = train_lib.hyper_from_grid(config_lib.hyperparameter_grid(config))
    image_shape = tuple(ds.x_train.shape[1:])
    like = jax.jit(jax.vmap(lambda h: train_lib.init_network(setup, h, image_shape)))(hp)
    fn = jax.jit(
        jax.vmap(
            lambda st, h, e, x, y: train_lib.train_epoch(setup, st, h, e, x, y, rwc_every=every),
            in_axes=(0, 0, None, None, None),
        )
    )
    x_train, y_train = jax.device_put(ds.x_train), jax.device_put(ds.y_train.astype(np.int32))
    ckpt = Checkpoints(run_dir)  # the whole train state (optimizer included), to continue training
    try:
        have = set(ckpt.epochs())
        if epochs is None:
            epochs = [e + 1 for e in sorted(have) if e + 1 <= config.num_epochs]
        frames = []
        for e in epochs:
            if e - 1 not in have:
                raise DynamicsError(
                    f"epochs: no checkpoint of epoch {e - 1} in {run_dir / 'checkpoints'} to replay epoch {e} from"
                )
            state = ckpt.restore(e - 1, like)
            _, m = fn(state, hp, jnp.int32(e), x_train, y_train)
            for path, v in m["rwc_l1_ratio"].items():  # (N, steps)
                v = np.asarray(v)
                steps = np.arange(every - 1, v.shape[1], every)  # the k-step boundaries
                frames.append(
                    pd.DataFrame(
                        {
                            "network": np.repeat(np.arange(v.shape[0]), len(steps)),
                            "layer": paths.layer_of(path),
                            "epoch": e,
                            "step": np.tile(steps + 1, v.shape[0]),
                            "rwc_l1_ratio": v[:, steps].ravel().astype(np.float64),
                        }
                    )
                )
    finally:
        ckpt.close()
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["network", "layer", "epoch", "step", "rwc_l1_ratio"])
    )
