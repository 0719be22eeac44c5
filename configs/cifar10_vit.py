r"""Zoo of VITs on cifar10: seeds × learning rates × init scales (see jaxweights/config/presets.py).

jaxweights train --config configs/cifar10_vit.py --workdir runs/cifar10_vit
jaxweights train --config configs/cifar10_vit.py:quick --workdir runs/cifar10_vit_quick  # smoke run
"""

from jaxweights.config.presets import study_config


def get_config(arg=None):
    return study_config("cifar10", "vit", arg)
