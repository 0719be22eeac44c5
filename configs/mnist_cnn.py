r"""Zoo of CNNs on mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/mnist_cnn.py --workdir runs/mnist_cnn
jaxweights train --config configs/mnist_cnn.py:quick --workdir runs/mnist_cnn_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("mnist", "cnn", arg)
