r"""Zoo of VITs on fashion_mnist: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/fashion_mnist_vit.py --workdir runs/fashion_mnist_vit
jaxweights train --config configs/fashion_mnist_vit.py:quick --workdir runs/fashion_mnist_vit_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("fashion_mnist", "vit", arg)
