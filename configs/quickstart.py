r"""Quick start: 60 MLPs on MNIST in one compiled program, about 75 s on a 2-core CPU.

    jaxweights train --config configs/quickstart.py --workdir runs/quickstart

4 seeds × 5 learning rates × 3 init scales of a 784-128-64-10 MLP trained with SGD for 3 epochs.
The grid is wide on purpose: the small learning rates and init scales give poor networks, the
middle of the grid good ones (about 97% test accuracy), and the largest learning rate diverges
for some, so the zoo has optimal, suboptimal and diverged networks to compare.
"""

from jaxweights.config import config_arg, default_config


def get_config(arg=None):
    arg = config_arg(arg)  # None, or "quick"; anything else is refused
    c = default_config()
    c.dataset = "mnist"
    c.model.name = "mlp"
    c.model.init = "fan_in"
    c.model.hidden = (128, 64)
    c.optimizer = "sgd"
    c.batch_size = 128
    c.num_epochs = 3
    c.num_seeds = 4
    c.learning_rates = (0.001, 0.01, 0.1, 0.5, 2.0)
    c.init_scales = (0.1, 1.0, 3.0)
    if arg == "quick":
        c.num_seeds, c.num_epochs, c.max_train, c.max_test = 2, 1, 4096, 1000
    return c
