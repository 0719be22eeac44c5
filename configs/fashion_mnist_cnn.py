r"""Zoo of CNNs on fashion_mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/fashion_mnist_cnn.py --workdir runs/fashion_mnist_cnn
jaxweights train --config configs/fashion_mnist_cnn.py:quick --workdir runs/fashion_mnist_cnn_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("fashion_mnist", "cnn", arg)
