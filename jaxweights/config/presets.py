"""The study's zoos: one preset per dataset × model family, used by the files in `configs/`.

Each grid spans learning rates and init scales wide enough to give both good and poor
networks (and a few that diverge), as the optimal-vs-suboptimal comparison needs.
`arg="quick"` shrinks a preset to a smoke run (few seeds, a slice of the data, 1 epoch).
"""

from __future__ import annotations

import ml_collections

from jaxweights.config.schema import config_arg, default_config

FAMILIES = ("mlp", "cnn", "vit")
DATASETS = ("mnist", "fashion_mnist", "cifar10")


def _model(family: str, dataset: str) -> dict:
    if family == "mlp":
        return {"name": "mlp", "init": "fan_in", "hidden": (512, 256, 128)}
    if family == "cnn":
        if dataset == "cifar10":
            return {"name": "cnn", "init": "fan_in", "channels": (64, 128, 256), "dense": (256,)}
        return {"name": "cnn", "init": "fan_in", "channels": (32, 64), "dense": (128,)}
    if family == "vit":
        patch = 4 if dataset == "cifar10" else 7
        return {
            "name": "vit",
            "init": "fan_avg",
            "patch_size": patch,
            "width": 128,
            "depth": 6,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "pooling": "mean",
        }
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def study_config(dataset: str, family: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of one dataset × model-family zoo of the study.

    Args:
      dataset: "mnist", "fashion_mnist" or "cifar10".
      family: "mlp", "cnn" or "vit".
      arg: None for the full schedule, "quick" for a smoke run.

    Returns:
      The zoo's `ConfigDict`.

    Raises:
      ConfigError: any other `arg` (`config_arg`).
    """
    arg = config_arg(arg)
    c = default_config()
    c.dataset = dataset
    c.model = ml_collections.ConfigDict(_model(family, dataset))
    c.batch_size = 128
    c.num_seeds = 4
    c.init_scales = (0.25, 1.0, 2.0)
    if family == "vit":
        c.optimizer = "adamw"
        c.schedule = "warmup_cosine"
        c.warmup_epochs = 2.0
        c.learning_rates = (3e-4, 1e-3, 3e-3, 3e-2)
        c.weight_decays = (0.05,)
        c.init_scales = (0.5, 1.0, 2.0)
        c.num_epochs = 60 if dataset == "cifar10" else 20
        c.eval_batch_size = 500
    elif family == "cnn":
        c.optimizer = "momentum"
        c.schedule = "cosine"
        c.learning_rates = (1e-3, 1e-2, 5e-2, 0.5)
        c.weight_decays = (5e-4,)
        c.num_epochs = 40 if dataset == "cifar10" else 15
        c.eval_batch_size = 250
    else:
        c.optimizer = "adam"
        c.schedule = "cosine"
        c.learning_rates = (1e-4, 1e-3, 1e-2, 5e-2)
        c.num_epochs = 40 if dataset == "cifar10" else 20
    if arg == "quick":
        c.num_seeds = 2
        c.num_epochs = 1
        c.max_train = 2048
        c.max_test = 1000
        c.init_scales = (1.0,)
    return c
