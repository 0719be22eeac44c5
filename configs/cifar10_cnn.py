r"""Zoo of CNNs on cifar10: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/cifar10_cnn.py --workdir runs/cifar10_cnn
jaxweights train --config configs/cifar10_cnn.py:quick --workdir runs/cifar10_cnn_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("cifar10", "cnn", arg)
