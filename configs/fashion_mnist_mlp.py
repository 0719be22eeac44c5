r"""Zoo of MLPs on fashion_mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/fashion_mnist_mlp.py --workdir runs/fashion_mnist_mlp
jaxweights train --config configs/fashion_mnist_mlp.py:quick --workdir runs/fashion_mnist_mlp_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("fashion_mnist", "mlp", arg)
