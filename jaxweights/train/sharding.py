"""THE one sharding helper: the networks mesh, padding the networks axis, placing arrays on it, gathering back.

The networks axis (first axis of every stacked leaf) is split over a 1-D mesh whose axis is named
`NETWORKS`; a networks count that does not divide the devices is padded with copies of the last
network, so padding never changes a number (reductions over networks included). Training pads
each device's share further, to a multiple of `vmap_chunk` (`pad_networks`), so that every
vmapped program has the same width whatever the layout.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

log = logging.getLogger("jaxweights")

PyTree = Any

NETWORKS = "networks"  # the mesh axis the networks axis is sharded over


def default_vmap_chunk() -> int:
    """Networks vmapped at once when `config.vmap_chunk` is 0: 8 on CPU, all (0) on accelerators.

    On a 2-core CPU, 64 MLPs (784-512-256-128-10, batch 128) trained 1.3× faster as `lax.map`
    over chunks of 4-8 than vmapped all at once (59% vs 46% of the matmul ceiling), and 64 CNNs
    1.2× faster (`benchmarks/train_throughput.py --compare-conv`): a chunk's working set stays
    in cache. Accelerators want the widest batch.

    Returns:
      8 on the CPU backend, else 0 (all networks at once).
    """
    return 8 if jax.default_backend() == "cpu" else 0


def networks_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D device mesh whose one axis, `"networks"`, splits the networks axis.

    Args:
      num_devices: how many devices to use; 0 = every device of every process
        (`jax.devices()`, all hosts after `jax.distributed.initialize`).

    Returns:
      A `jax.sharding.Mesh` made by `jax.make_mesh`.
    """
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"num_devices: {n} asked, only {len(devices)} present")
    return jax.make_mesh((n,), (NETWORKS,), (jax.sharding.AxisType.Auto,), devices=devices[:n])


def pad_networks(n: int, num_devices: int, vmap_chunk: int = 0) -> int:
    """The padded networks count: the smallest multiple of `num_devices` × `vmap_chunk` that is >= n.

    With `vmap_chunk` = k > 0 each device's share is a multiple of k, so every `lax.map` step of
    every device runs the one program of width k (see `make_zoo_fns`): a network's numbers then do
    not depend on the device count or on the other networks of the zoo.

    Args:
      n: networks.
      num_devices: devices the networks axis is split over.
      vmap_chunk: networks vmapped at once (0: each device's share is vmapped whole, no constraint).

    Returns:
      ceil(n / (num_devices · max(vmap_chunk, 1))) · num_devices · max(vmap_chunk, 1).
    """
    step = num_devices * max(vmap_chunk, 1)
    return -(-n // step) * step


def shard(x: np.ndarray | PyTree, mesh: jax.sharding.Mesh, networks_axis: bool = True) -> PyTree:
    """Host arrays (the same on every process) → global arrays on `mesh`.

    With `networks_axis` the leading axis is split over the mesh, otherwise each device gets a
    full copy. Uses `jax.make_array_from_callback`, so it works unchanged on several hosts.

    Args:
      x: an array or pytree of arrays, identical on every process.
      mesh: the networks mesh (`networks_mesh`).
      networks_axis: split the leading axis over the mesh (else replicate).

    Returns:
      The same tree of global `jax.Array`s.
    """
    spec = jax.sharding.PartitionSpec(NETWORKS) if networks_axis else jax.sharding.PartitionSpec()
    sharding = jax.sharding.NamedSharding(mesh, spec)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, x)


def to_host(tree: PyTree) -> PyTree:
    """Global (possibly multi-host, sharded) arrays → full numpy arrays on every process.

    Args:
      tree: a pytree of global arrays.

    Returns:
      The tree of numpy arrays, whole on every process.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def shard_networks(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Pads the networks axis of every leaf to a multiple of the mesh size and splits it over `mesh`.

    Padding rows are copies of the last network, so reductions across networks (the shared
    histogram edges) are unchanged; slice results back to the first N rows. No padded copy of a
    whole leaf is made: each device's shard is cut from the leaf (a view where it holds no padding)
    and only padding shards gather their rows.

    Args:
      tree: pytree of arrays (numpy or host-readable), networks axis first.
      mesh: a 1-D mesh whose axis is the networks axis (`networks_mesh`).

    Returns:
      The padded tree as arrays sharded over the mesh.
    """
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))

    def one(x):
        x = np.asarray(x)
        n = x.shape[0]
        total = pad_networks(n, mesh.size)

        def shard_of(index):
            rows = range(total)[index[0]]
            if rows.stop <= n:
                return x[index]
            return x[(np.minimum(np.arange(rows.start, rows.stop, rows.step), n - 1), *index[1:])]

        return jax.make_array_from_callback((total, *x.shape[1:]), sharding, shard_of)

    return jax.tree.map(one, tree)


def per_device(
    f: Any, mesh: jax.sharding.Mesh, networks_args: tuple[bool, ...], donate_argnums: tuple[int, ...] = ()
) -> Any:
    """`f` run on every device of `mesh` as one single-device program, on that device's shard of the networks axis.

    The same as `jax.jit(jax.shard_map(f, mesh=mesh, in_specs=..., out_specs=P("networks")))`, but
    not compiled by the SPMD partitioner: each device (of this process) runs the program a single
    device would run, dispatched asynchronously so the devices work at once, and the outputs are
    assembled into global arrays split over the mesh. XLA simplifies a partitioned module in another
    order than a single-device one (a division by a broadcast scalar becomes a multiplication by its
    reciprocal in one and not the other, ...), so on CPU the numbers of an SPMD program differ in
    the last bits from one device's; these do not. The price: the program is compiled once per
    local device.

    Args:
      f: a function of arrays with, for the split arguments, the networks axis first.
      mesh: the networks mesh.
      networks_args: per positional argument, True when its leading axis is split over the mesh
        (else every device gets the whole argument).
      donate_argnums: arguments whose buffers the program may reuse (as `jax.jit`).

    Returns:
      A function of global arrays (numpy arrays are placed first) whose outputs (each with the
      networks axis first) are global arrays split over `mesh`.
    """
    jf = jax.jit(f, donate_argnums=donate_argnums)
    net = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(NETWORKS))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]

    def pieces(x, sharding):
        if not (isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim)):
            x = jax.device_put(x, sharding)
        return {s.device: s.data for s in x.addressable_shards}

    def call(*args):
        flat = [jax.tree.flatten(a) for a in args]
        split = [[pieces(x, net if on else rep) for x in leaves] for (leaves, _), on in zip(flat, networks_args)]
        outs = [
            jf(*(tree.unflatten([p[d] for p in ps]) for (_, tree), ps in zip(flat, split)))
            for d in local  # asynchronous: each device starts as soon as its program is dispatched
        ]
        return jax.tree.map(
            lambda *xs: jax.make_array_from_single_device_arrays(
                (xs[0].shape[0] * mesh.size, *xs[0].shape[1:]), net, list(xs)
            ),
            *outs,
        )

    return call


def init_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins the processes of a multi-host job (`config.multihost`) with `jax.distributed.initialize`.

    On TPU pods, Slurm and Open MPI the coordinator, process count and process id are detected;
    elsewhere they come from `$JAX_COORDINATOR_ADDRESS`, `$JAX_NUM_PROCESSES` and
    `$JAX_PROCESS_ID`. Must run before anything touches a device; later calls do nothing.

    Args:
      config: a config; only `config.multihost` is read.
    """
    if not config.get("multihost", False) or jax.distributed.is_initialized():
        return
    kw = {
        k: int(os.environ[v])
        for k, v in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
        if os.environ.get(v)
    }
    jax.distributed.initialize(**kw)
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def sync(name: str) -> None:
    """A barrier across processes named `name` (nothing on one host).

    Args:
      name: the barrier's name (the same on every process).
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
