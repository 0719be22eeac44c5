r"""Zoo of VITs on mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/mnist_vit.py --workdir runs/mnist_vit
jaxweights train --config configs/mnist_vit.py:quick --workdir runs/mnist_vit_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("mnist", "vit", arg)
