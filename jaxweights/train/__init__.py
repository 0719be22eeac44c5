"""Training a zoo: one network's step, vmapped over the networks axis, scanned over an epoch, sharded over devices.

    state     TrainState, Hyper, hyper_from_grid, Setup, make_setup, make_optimizer, init_network, normalize
    step      loss_and_logits, epoch_indices, train_epoch, evaluate
    health    max_abs_weight, reference_max_abs_weight, exploded
    zoo       ZooFns, make_zoo_fns, map_fixed_width, pad_split
    sharding  NETWORKS, networks_mesh, pad_networks, shard, shard_networks, per_device, to_host,
              default_vmap_chunk, init_distributed, sync
    memory    MemoryPlan, network_memory, device_memory_bytes, networks_bytes, plan_memory
    cost      step_flops, step_cost

Everything is written for one network and `jax.vmap`-ed outside. A network is one row of the
hyperparameter grid: its seed and its dynamic hyperparameters (learning rate, init scale, weight
decay, label-noise fraction, train-data fraction) are traced values, so the whole grid trains in
one compiled program (see `jaxweights.train.state` for how its PRNG keys are derived).
"""

from jaxweights.train.cost import step_cost, step_flops
from jaxweights.train.health import exploded, max_abs_weight, reference_max_abs_weight
from jaxweights.train.memory import MemoryPlan, device_memory_bytes, network_memory, networks_bytes, plan_memory
from jaxweights.train.sharding import (
    NETWORKS,
    default_vmap_chunk,
    init_distributed,
    networks_mesh,
    pad_networks,
    per_device,
    shard,
    shard_networks,
    sync,
    to_host,
)
from jaxweights.train.state import (
    Hyper,
    Setup,
    TrainState,
    hyper_from_grid,
    init_network,
    make_optimizer,
    make_setup,
    normalize,
)
from jaxweights.train.step import epoch_indices, evaluate, loss_and_logits, train_epoch
from jaxweights.train.zoo import ZooFns, make_zoo_fns, map_fixed_width, pad_split

__all__ = [
    "NETWORKS",
    "Hyper",
    "MemoryPlan",
    "Setup",
    "TrainState",
    "ZooFns",
    "default_vmap_chunk",
    "device_memory_bytes",
    "epoch_indices",
    "evaluate",
    "exploded",
    "hyper_from_grid",
    "init_distributed",
    "init_network",
    "loss_and_logits",
    "make_optimizer",
    "make_setup",
    "make_zoo_fns",
    "map_fixed_width",
    "max_abs_weight",
    "network_memory",
    "networks_bytes",
    "networks_mesh",
    "normalize",
    "pad_networks",
    "pad_split",
    "per_device",
    "plan_memory",
    "reference_max_abs_weight",
    "shard",
    "shard_networks",
    "step_cost",
    "step_flops",
    "sync",
    "to_host",
    "train_epoch",
]
