r"""Zoo of MLPs on cifar10: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/cifar10_mlp.py --workdir runs/cifar10_mlp
jaxweights train --config configs/cifar10_mlp.py:quick --workdir runs/cifar10_mlp_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("cifar10", "mlp", arg)
