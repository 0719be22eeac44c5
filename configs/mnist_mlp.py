r"""Zoo of MLPs on mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/mnist_mlp.py --workdir runs/mnist_mlp
jaxweights train --config configs/mnist_mlp.py:quick --workdir runs/mnist_mlp_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("mnist", "mlp", arg)
