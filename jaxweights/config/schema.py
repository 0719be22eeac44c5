"""Zoo configuration: defaults, validation and the hyperparameter grid.

Configs are Python files whose `get_config(arg=None)` returns an `ml_collections.ConfigDict`
built on `default_config()`. `validate` turns a ConfigDict into checked values with errors
that name the offending key; `hyperparameter_grid` expands the dynamic grid into one row per
network.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

# Dynamic hyperparameters: entries of the networks axis, traced values in the compiled program.
# config list field -> column name in the grid and in metrics.csv.
DYNAMIC = {
    "learning_rates": "learning_rate",
    "init_scales": "init_scale",
    "weight_decays": "weight_decay",
    "label_noises": "label_noise",
    "train_fractions": "train_fraction",
}
# The built-in models a config may name (`config.model.name`); `jaxweights.models.make_model` builds them.
MODELS = ("mlp", "cnn", "small_cnn_zoo", "vit")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


def config_arg(arg: str | None, allowed: Sequence[str] = ("quick",)) -> str | None:
    """The argument a config file got (`configs/NAME.py:ARG`), refused unless it is one it knows.

    Every shipped config's `get_config(arg)` passes its argument through here, so an unknown one
    (a typo such as `:quik`) stops the command instead of silently running the full config.

    Args:
      arg: what followed the colon (None or "" when nothing did).
      allowed: the arguments this config file knows.

    Returns:
      None for no argument, else `arg`.

    Raises:
      ConfigError: `arg` is not in `allowed` (one line naming it and the allowed ones).
    """
    if arg is None or arg == "":
        return None
    if arg not in allowed:
        names = ", ".join(f":{a}" for a in allowed)
        raise ConfigError(f"unknown config argument {arg!r}; allowed: {names} or none")
    return arg


def default_config() -> ml_collections.ConfigDict:
    """Every config field with its default; config files override what they need.

    Returns:
      A fresh `ConfigDict` of the defaults.
    """
    c = ml_collections.ConfigDict()
    c.dataset = "mnist"
    c.data_dir = ""  # "" = $JAXWEIGHTS_DATA_DIR, then system locations, then tfds.
    # 0 = the whole split; >0 keeps that many examples, a class-stratified draw with a fixed seed
    # (`data.stratified_indices`, seed `data.SUBSET_SEED`): every run and analysis sees the same subset.
    c.max_train = 0
    c.max_test = 0
    c.model = ml_collections.ConfigDict({"name": "mlp", "init": "fan_in", "hidden": (128, 64)})
    c.optimizer = "sgd"
    c.momentum = 0.9  # used by "momentum"
    c.schedule = "constant"
    c.warmup_epochs = 0.0
    c.batch_size = 128
    c.num_epochs = 5
    c.num_seeds = 2
    c.seed = 0  # root seed; network seeds are 0..num_seeds-1 folded into it.
    c.learning_rates = (0.01,)
    c.init_scales = (1.0,)
    c.weight_decays = (0.0,)
    c.label_noises = (0.0,)
    c.train_fractions = (1.0,)
    c.eval_batch_size = 1000
    # A network is flagged `exploded` after an epoch (not diverged, yet blown up) when its test loss
    # exceeds explode_loss_factor x ln(num_classes) (a uniform guess's loss) or its largest |w| exceeds
    # explode_weight_factor x its largest |w| at initialisation (at init scale 1 if that is larger).
    c.explode_loss_factor = 10.0
    c.explode_weight_factor = 100.0
    c.compute_dtype = "float32"
    c.checkpoint_every = 1  # epochs between orbax checkpoints of the stacked state.
    c.keep_checkpoints = 0  # 0 = keep every checkpoint (per-epoch snapshots for the dynamics).
    # Scaling out (see the README's "Scaling out" section).
    c.num_devices = 0  # devices the networks axis is sharded over; 0 = all devices of all hosts.
    c.multihost = False  # call jax.distributed.initialize() first (TPU pods, Slurm, several hosts).
    c.memory_limit_mb = 0.0  # usable memory per device in MiB for the chunk plan; 0 = the device's own.
    c.chunk_size = 0  # at most this many networks per chunk; 0 = as many as memory allows.
    c.vmap_chunk = 0  # networks vmapped at once inside the program (lax.map over chunks); 0 = 8 on CPU, all elsewhere.
    c.groups = ()  # static variants: a tuple of {"dotted.key": value} overrides, one compiled group each.
    return c


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model's own options from `config.model` (everything but `name` and `init`).

    Args:
      config: a zoo config.

    Returns:
      Option -> value, lists as tuples (for `models.make_model`).
    """
    kw = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "init")}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def closest(word: str, known: Iterable[str], n: int = 3) -> str:
    """A hint naming the known words closest to a mistyped one (`difflib.get_close_matches`).

    Args:
      word: the unknown key, option or name.
      known: the accepted ones.
      n: at most this many suggestions.

    Returns:
      "did you mean num_seeds?" (or "a or b?"), or "" when nothing is close.
    """
    near = difflib.get_close_matches(word, sorted(set(known)), n=n, cutoff=0.6)
    return f"did you mean {' or '.join(near)}?" if near else ""


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks a config, raising `ConfigError` naming the first bad key.

    Args:
      config: a zoo config.

    Raises:
      ConfigError: the first bad key, named as "config.KEY: ...".
    """
    unknown = sorted(set(config.keys()) - set(default_config().keys()))
    if unknown:
        known = sorted(default_config().keys())
        hint = closest(unknown[0], known)
        raise ConfigError(
            f"config.{unknown[0]}: not a config key{f' ({hint})' if hint else ''}; known keys are {', '.join(known)}"
        )
    for key in ("num_seeds", "num_epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
        v = config[key]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"config.{key}: must be a positive integer, got {v!r}")
    for key in ("max_train", "max_test", "keep_checkpoints", "num_devices", "chunk_size", "vmap_chunk"):
        if not isinstance(config[key], (int, np.integer)) or isinstance(config[key], bool) or config[key] < 0:
            raise ConfigError(f"config.{key}: must be an integer >= 0, got {config[key]!r}")
    mem = config.memory_limit_mb
    if isinstance(mem, bool) or not isinstance(mem, (int, float, np.integer, np.floating)) or not mem >= 0:
        raise ConfigError(
            f"config.memory_limit_mb: must be a number of MiB >= 0 (0 = the device's memory), got {mem!r}"
        )
    for key in ("explode_loss_factor", "explode_weight_factor"):
        v = config[key]
        if not _is_number(v) or not 1 < v < float("inf"):
            raise ConfigError(
                f"config.{key}: must be a finite number > 1 (a factor at or below 1 would flag "
                f"healthy networks), got {v!r}"
            )
    if not isinstance(config.multihost, (bool, np.bool_)):
        raise ConfigError(f"config.multihost: must be True or False, got {config.multihost!r}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"config.optimizer: unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"
        )
    if config.schedule not in SCHEDULES:
        raise ConfigError(
            f"config.schedule: unknown schedule {config.schedule!r}; expected one of {', '.join(SCHEDULES)}"
        )
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.compute_dtype: expected 'float32' or 'bfloat16', got {config.compute_dtype!r}")
    for key, _col in DYNAMIC.items():
        values = config[key]
        if isinstance(values, (int, float)):
            raise ConfigError(f"config.{key}: must be a list of values, got the single value {values!r}")
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"config.{key}: must be a tuple of numbers, got {values!r}")
        values = list(values)
        if not values:
            raise ConfigError(f"config.{key}: empty grid; give at least one value")
        if not all(_is_number(v) for v in values):
            raise ConfigError(f"config.{key}: must be a tuple of numbers, got {values!r}")
        arr = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"config.{key}: values must be finite, got {values}")
        if key in ("learning_rates", "init_scales") and np.any(arr <= 0):
            raise ConfigError(f"config.{key}: values must be > 0, got {values}")
        if key == "weight_decays" and np.any(arr < 0):
            raise ConfigError(f"config.{key}: values must be >= 0, got {values}")
        if key == "label_noises" and np.any((arr < 0) | (arr > 1)):
            raise ConfigError(f"config.{key}: values must lie in [0, 1], got {values}")
        if key == "train_fractions" and np.any((arr <= 0) | (arr > 1)):
            raise ConfigError(f"config.{key}: values must lie in (0, 1], got {values}")
    if "name" not in config.model:
        raise ConfigError("config.model.name: missing; expected one of " + ", ".join(MODELS))
    if not _is_number(config.momentum) or not 0 <= config.momentum < 1:
        raise ConfigError(f"config.momentum: must be a number in [0, 1), got {config.momentum!r}")
    if not _is_number(config.warmup_epochs) or not 0 <= config.warmup_epochs < float("inf"):
        raise ConfigError(f"config.warmup_epochs: must be a finite number >= 0, got {config.warmup_epochs!r}")
    if not isinstance(config.seed, (int, np.integer)) or isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"config.seed: must be an integer >= 0, got {config.seed!r}")
    if not isinstance(config.data_dir, str):
        raise ConfigError(f"config.data_dir: must be a path string ('' = the default places), got {config.data_dir!r}")
    if not isinstance(config.get("groups", ()), (list, tuple)):
        raise ConfigError(f"config.groups: must be a tuple of {{'dotted.key': value}} dicts, got {config.groups!r}")


def _is_number(v: Any) -> bool:
    """A real number (ints and floats, numpy's included), not a bool or a string."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def hyperparameter_grid(config: ml_collections.ConfigDict) -> pd.DataFrame:
    """One row per network: `network`, `seed` and one column per dynamic hyperparameter.

    The product runs over the dynamic lists in `DYNAMIC` order with the seed innermost, so
    networks `k*num_seeds ... (k+1)*num_seeds-1` share their hyperparameters.

    Args:
      config: a validated zoo config.

    Returns:
      DataFrame with columns network, seed and the `DYNAMIC` columns.
    """
    lists = [list(config[k]) for k in DYNAMIC] + [list(range(config.num_seeds))]
    rows = list(itertools.product(*lists))
    df = pd.DataFrame(rows, columns=list(DYNAMIC.values()) + ["seed"])
    df.insert(0, "network", np.arange(len(df)))
    df = df[["network", "seed"] + list(DYNAMIC.values())]
    return df.astype({"seed": np.int64, **{c: np.float64 for c in DYNAMIC.values()}})
