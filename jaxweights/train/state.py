"""One network's state and static setup: `TrainState`, `Hyper` (a grid row), `Setup`, optimizer, initialisation.

Everything here is written for one network and `jax.vmap`-ed outside. A network is one row of
the hyperparameter grid: its seed and its dynamic hyperparameters (learning rate, init scale,
weight decay, label-noise fraction, train-data fraction) are traced values, so the whole grid
trains in one compiled program. PRNG keys are derived, never stored:

    net_key   = fold_in(PRNGKey(config.seed), seed)
    init      = fold_in(net_key, 0)
    data order= fold_in(fold_in(net_key, 1), epoch)   (see `epoch_indices`)
    subset    = fold_in(net_key, 2)       (which examples a train_fraction < 1 keeps)
    label noise = fold_in(fold_in(net_key, 3), example index)

so networks with the same seed start from the same weights (scaled by their init scale), see the
data in the same order and the same noisy labels: a grid compares like with like.

A network whose loss or parameters become non-finite is marked diverged at that step and its
parameters and optimizer state stay frozen at the last finite values; nothing it does reaches
another network, since vmapped networks share no arithmetic. A network whose weights or loss
blew up while staying finite is flagged exploded after each epoch (`exploded`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import models
from jaxweights.train.sharding import default_vmap_chunk

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    """State of one network (or, stacked, of N networks with the networks axis first)."""

    params: PyTree
    opt_state: PyTree
    diverged: Array  # bool scalar
    step: Array  # int32 scalar


class Hyper(NamedTuple):
    """Dynamic hyperparameters of one network (stacked: each field has shape (N,))."""

    seed: Array
    learning_rate: Array
    init_scale: Array
    weight_decay: Array
    label_noise: Array
    train_fraction: Array


def hyper_from_grid(grid) -> Hyper:
    """Stacked `Hyper` from a `config.hyperparameter_grid` DataFrame.

    Args:
      grid: one row per network with columns seed, learning_rate, init_scale, weight_decay,
        label_noise, train_fraction.

    Returns:
      A `Hyper` of (N,) numpy arrays (seed int32, the rest float32).
    """
    f32 = lambda c: jnp.asarray(grid[c].to_numpy(), jnp.float32)
    return Hyper(
        seed=jnp.asarray(grid["seed"].to_numpy(), jnp.int32),
        learning_rate=f32("learning_rate"),
        init_scale=f32("init_scale"),
        weight_decay=f32("weight_decay"),
        label_noise=f32("label_noise"),
        train_fraction=f32("train_fraction"),
    )


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static choices of one compiled group (everything that changes shapes or code)."""

    model: Any  # flax.linen.Module
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    batch_size: int = 128
    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    root_seed: int = 0
    compute_dtype: Any = jnp.float32
    vmap_chunk: int = 0  # networks vmapped at once; 0 = all, k = `lax.map` over chunks of k (see make_zoo_fns)


def make_optimizer(setup: Setup, hp: Hyper) -> optax.GradientTransformation:
    """The optimizer of one network, with its traced learning rate and weight decay.

    sgd / momentum / adam add L2 weight decay to the gradient (`optax.add_decayed_weights`
    before the update); adamw decouples it (Loshchilov & Hutter 2019).

    Args:
      setup: the static setup (optimizer family, momentum, schedule).
      hp: this network's hyperparameters (traced).

    Returns:
      An optax gradient transformation.
    """
    lr = hp.learning_rate
    if setup.schedule == "constant":
        rate: Any = lr
    else:
        if setup.schedule == "cosine":
            shape = optax.cosine_decay_schedule(1.0, setup.total_steps)
        else:
            warm = min(max(setup.warmup_steps, 1), setup.total_steps - 1)
            shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, setup.total_steps)
        rate = lambda count: lr * shape(count)
    if setup.optimizer == "adamw":
        return optax.adamw(rate, weight_decay=hp.weight_decay)
    base = {
        "sgd": lambda: optax.sgd(rate),
        "momentum": lambda: optax.sgd(rate, momentum=setup.momentum),
        "adam": lambda: optax.adam(rate),
    }[setup.optimizer]()
    return optax.chain(optax.add_decayed_weights(hp.weight_decay), base)


def _net_key(setup: Setup, hp: Hyper) -> Array:
    return jax.random.fold_in(jax.random.PRNGKey(setup.root_seed), hp.seed)


def normalize(setup: Setup, x_uint8: Array) -> Array:
    """uint8 images → per-channel standardised floats in the compute dtype.

    Args:
      setup: the static setup (per-channel mean and std, compute dtype).
      x_uint8: images (..., H, W, C), uint8.

    Returns:
      (x - mean) / std in `setup.compute_dtype`.
    """
    mean = jnp.asarray(setup.mean, jnp.float32)
    std = jnp.asarray(setup.std, jnp.float32)
    return ((x_uint8.astype(jnp.float32) - mean) / std).astype(setup.compute_dtype)


def init_network(setup: Setup, hp: Hyper, image_shape: tuple[int, ...]) -> TrainState:
    """Initial state of one network: parameters from its seed, kernels scaled by its init scale.

    Args:
      setup: the static setup.
      hp: this network's hyperparameters (seed, init scale, ...).
      image_shape: (H, W, C) of one image.

    Returns:
      The network's `TrainState` (step 0, not diverged).
    """
    key = jax.random.fold_in(_net_key(setup, hp), 0)
    params = setup.model.init(key, jnp.zeros((1, *image_shape), setup.compute_dtype))["params"]
    params = models.scale_kernels(params, hp.init_scale)
    tx = make_optimizer(setup, hp)
    return TrainState(params, tx.init(params), jnp.zeros((), bool), jnp.zeros((), jnp.int32))


def make_setup(config: ml_collections.ConfigDict, ds: data_lib.Dataset, model: Any = None) -> Setup:
    """The static `Setup` of a config (model, optimizer family, schedule, batch size).

    Args:
      config: a validated config.
      ds: the loaded dataset (its image shape, class count and training-set size).
      model: a Flax linen module of your own, used instead of `config.model`
        (see `jaxweights.pipelines.train.train_and_evaluate`).

    Returns:
      The setup shared by every network of the zoo.

    Raises:
      ConfigError: the model cannot be built from the config, or the batch is larger than the training set.
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
    return Setup(
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
        vmap_chunk=int(config.get("vmap_chunk", 0)) or default_vmap_chunk(),
    )
