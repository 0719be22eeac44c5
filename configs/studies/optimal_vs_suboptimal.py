r"""The whole study: MNIST, Fashion-MNIST and CIFAR-10 × MLP, CNN and ViT zoos, one combined report.

    jaxweights study --config configs/studies/optimal_vs_suboptimal.py --workdir runs/study  # full (a GPU)
    jaxweights study --config configs/studies/optimal_vs_suboptimal.py:quick --workdir runs/q  # CPU smoke
    jaxweights study --config configs/studies/optimal_vs_suboptimal.py:quick --workdir runs/s \
        --config.datasets="('mnist',)" --config.models="('mlp','cnn')"

Each zoo is the preset of `jaxweights/config/presets.py` (`:quick` shrinks it: 2 seeds, 1 epoch, a slice
of the data); `overrides` changes fields of every zoo ("all") or of one family ("mlp", "cnn",
"vit") as nested dicts such as {"mlp": {"model": {"hidden": (64,)}}}. `analysis` holds the options of
`jaxweights analyze`.
"""

import ml_collections

from jaxweights.config import config_arg


def get_config(arg=None):
    arg = config_arg(arg)  # None, or "quick"; anything else is refused
    c = ml_collections.ConfigDict()
    c.datasets = ("mnist", "fashion_mnist", "cifar10")
    c.models = ("mlp", "cnn", "vit")
    c.quick = arg == "quick"
    c.data_dir = ""
    c.overrides = {"all": {}, "mlp": {}, "cnn": {}, "vit": {}}
    c.analysis = ml_collections.ConfigDict(
        {
            "metrics": ("wasserstein", "ks", "jensenshannon", "kde_kl", "euclidean", "cosine"),
            "quantile": 0.25,
            "bins": 4,
            "n_permutations": 2000,
            "n_boot": 1000,
            "dynamics": True,
        }
    )  # learning dynamics over the per-epoch checkpoints (RWC, CKA, probes, modularity)
    if c.quick:
        # A CPU smoke run: smaller CNN and ViT, fewer test images, a cheaper analysis.
        c.overrides = {
            "all": {"max_test": 500},
            "mlp": {"model": {"hidden": (64, 32)}},
            "cnn": {"model": {"channels": (8, 16), "dense": (32,)}},
            "vit": {"model": {"width": 32, "depth": 2, "num_heads": 2}},
        }
        c.analysis.metrics = ("wasserstein", "ks", "euclidean")
        c.analysis.n_permutations, c.analysis.n_boot = 500, 200
        c.analysis.dynamics = False
    return c
