"""The zoo's compiled functions: one network's init/epoch/evaluation vmapped over the networks axis and sharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.train.health import reference_max_abs_weight
from jaxweights.train.sharding import NETWORKS, per_device
from jaxweights.train.state import Hyper, Setup, TrainState, init_network
from jaxweights.train.step import evaluate, train_epoch

Array = jax.Array


def pad_split(x: np.ndarray, y: np.ndarray, eval_batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads a split to a multiple of `eval_batch`; returns (x, y, mask).

    Args:
      x: images (n, ...).
      y: labels (n,).
      eval_batch: the chunk size of `evaluate`.

    Returns:
      (x, y, mask) padded with zeros to a multiple of `eval_batch`; mask is 1 on real examples.
    """
    n = x.shape[0]
    pad = -n % eval_batch
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    return x, y, mask


def map_fixed_width(f: Callable, xs, k: int):
    """`jax.lax.map(f, xs, batch_size=k)` whose every step is one program of width exactly k.

    `lax.map` runs a remainder (`len(xs) % k` networks) as a second program of another width, and
    XLA compiles programs of different widths differently (on CPU, a 784-16-10 MLP trained in
    widths 1-3, 4-5 and >= 7 gives three different last bits): a network's numbers would then depend on
    how many networks share its device. The networks are padded here with copies of the last one
    to a multiple of k (sliced off again); the training pipeline pads beforehand
    (`pad_networks`), so there this costs nothing.

    Args:
      f: one network's function.
      xs: a pytree of arrays with the networks axis first.
      k: networks vmapped at once.

    Returns:
      f mapped over the networks axis, the first `len(xs)` rows.
    """
    m = jax.tree.leaves(xs)[0].shape[0]
    pad = -m % k
    if pad:
        xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]), xs)
    ys = jax.lax.map(f, xs, batch_size=k)
    return jax.tree.map(lambda a: a[:m], ys) if pad else ys


class ZooFns(NamedTuple):
    """The jitted functions of one compiled group, vmapped over the networks axis."""

    init: Callable[[Hyper], TrainState]
    train_epoch: Callable[..., tuple[TrainState, dict[str, Array]]]
    evaluate: Callable[..., dict[str, Array]]
    reference_weight: Callable[[Hyper], Array] | None = None  # `reference_max_abs_weight` of each network


def make_zoo_fns(
    setup: Setup, image_shape: tuple[int, ...], eval_batch: int, mesh: jax.sharding.Mesh | None = None
) -> ZooFns:
    """Jitted, vmapped init / train-epoch / evaluate for one static setup.

    Keep the returned object and call it every epoch: a second call with the same shapes does
    not recompile. The epoch is one network's `train_epoch` vmapped over all networks, or, with
    `setup.vmap_chunk = k`, `jax.lax.map(..., batch_size=k)`: k networks vmapped at a time, the
    chunks in sequence in the same program (a vmapped `lax.conv` becomes a grouped convolution;
    chunk 1 keeps plain convolutions; `benchmarks/train_throughput.py --compare-conv` measures both).
    Every chunk is exactly k wide (`map_fixed_width`), so with k > 0 a network's results are
    bitwise the same whatever the number of networks (on CPU; see the docs' "Reproducibility").

    Args:
      setup: the static choices of the group.
      image_shape: one example's shape, e.g. (28, 28, 1).
      eval_batch: test examples per evaluation chunk.
      mesh: a `networks_mesh`; when given, stacked states, hyperparameters and metrics are split
        over its `networks` axis (the networks count must be a multiple of the mesh size, see
        `pad_networks`), data and the epoch number are replicated, and no device talks to
        another. On CPU each device runs the single-device program (`per_device`: the numbers of
        one device, bitwise); on accelerators each function is one `jax.shard_map` program.

    Returns:
      `ZooFns(init, train_epoch, evaluate, reference_weight)`.
    """
    init = jax.vmap(lambda hp: init_network(setup, hp, image_shape))
    ref = jax.vmap(lambda hp: reference_max_abs_weight(setup, hp, image_shape))
    k = setup.vmap_chunk
    if k:  # chunks of k networks vmapped, one chunk after another inside the program
        # (the initialisation too: its random draws take several times the state while they live)
        init = lambda hp: map_fixed_width(lambda h: init_network(setup, h, image_shape), hp, k)
        ref = lambda hp: map_fixed_width(lambda h: reference_max_abs_weight(setup, h, image_shape), hp, k)
        epoch = lambda s, hp, e, x, y: map_fixed_width(lambda a: train_epoch(setup, a[0], a[1], e, x, y), (s, hp), k)
        one = lambda q, x, y, m: jax.tree.map(
            lambda v: v[0],
            evaluate(  # evaluate stacks: one network as N=1
                setup, jax.tree.map(lambda a: a[None], q), x, y, m, eval_batch
            ),
        )
        ev = lambda p, x, y, m: map_fixed_width(lambda q: one(q, x, y, m), p, k)
    else:
        epoch = jax.vmap(lambda s, hp, e, x, y: train_epoch(setup, s, hp, e, x, y), in_axes=(0, 0, None, None, None))
        ev = lambda p, x, y, m: evaluate(setup, p, x, y, m, eval_batch)
    if mesh is not None and mesh.size > 1 and mesh.devices.flat[0].platform == "cpu":
        # one single-device program per device: bitwise the numbers of one device (see `per_device`)
        return ZooFns(
            per_device(init, mesh, (True,)),
            per_device(epoch, mesh, (True, True, False, False, False), donate_argnums=(0,)),
            per_device(ev, mesh, (True, False, False, False)),
            per_device(ref, mesh, (True,)),
        )
    if mesh is not None:
        net, rep = jax.sharding.PartitionSpec(NETWORKS), jax.sharding.PartitionSpec()
        # check_vma=False: the per-device bodies are plain one-network code (zeros in scan carries
        # etc.) with no collectives, so there is nothing for the varying-axis check to guard.
        sm = lambda f, ins: jax.shard_map(f, mesh=mesh, in_specs=ins, out_specs=net, check_vma=False)
        init = sm(init, (net,))
        ref = sm(ref, (net,))
        epoch = sm(epoch, (net, net, rep, rep, rep))
        ev = sm(ev, (net, rep, rep, rep))
    return ZooFns(jax.jit(init), jax.jit(epoch, donate_argnums=(0,)), jax.jit(ev), jax.jit(ref))
