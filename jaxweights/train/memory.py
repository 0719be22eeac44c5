"""The memory plan: how many networks fit on a device at once, and the chunks a larger zoo is trained in."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxweights.train.sharding import pad_networks
from jaxweights.train.state import Hyper, Setup, init_network, make_optimizer, normalize
from jaxweights.train.step import loss_and_logits

PyTree = Any


class MemoryPlan(NamedTuple):
    """How a zoo is split into chunks that fit in device memory (all sizes in bytes)."""

    networks: int  # networks in the zoo
    devices: int  # devices the networks axis is split over
    state_bytes: int  # one network's parameters + optimizer state
    step_bytes: int  # one network's temporaries in a train step / an evaluation chunk
    network_bytes: int  # what one more network costs a device (state twice + temporaries)
    fixed_bytes: int  # what every device holds whatever N (the replicated data)
    budget_bytes: int  # usable memory per device
    chunk_size: int  # networks per chunk, a multiple of `devices` × `vmap_chunk` (padded)
    num_chunks: int
    vmap_chunk: int = 0  # the width compiled: networks vmapped at once (0 = all of a device's networks)

    def device_bytes(self) -> int:
        """The bytes this plan expects a device to hold: the data and its share of a chunk."""
        return self.fixed_bytes + networks_bytes(
            self.chunk_size // self.devices, self.state_bytes, self.step_bytes, self.vmap_chunk
        )

    def describe(self) -> str:
        mb = lambda b: f"{b / 2**20:,.2f} MiB"
        return (
            f"memory plan: {self.networks} networks on {self.devices} device(s); one network needs "
            f"{mb(self.network_bytes)} (state {mb(self.state_bytes)}, step temporaries {mb(self.step_bytes)}), "
            f"data {mb(self.fixed_bytes)} per device, budget {mb(self.budget_bytes)} per device"
            f"{f', temporaries of {self.vmap_chunk} networks at a time' if self.vmap_chunk else ''} -> "
            f"{self.num_chunks} chunk(s) of {self.chunk_size} networks"
        )


def _nbytes(tree: PyTree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def network_memory(setup: Setup, image_shape: tuple[int, ...], eval_batch: int) -> tuple[int, int]:
    """Bytes one network needs: (parameters + optimizer state, temporaries of a step).

    The state size comes from `jax.eval_shape` of its initialisation; the temporaries
    (activations kept for the backward pass, gradients, optimizer updates) from XLA's
    `memory_analysis` of one compiled train step at the batch size, or of one evaluation chunk
    or of the initialisation (random draws of every kernel) if that is larger.

    Args:
      setup: the static setup.
      image_shape: (H, W, C) of one image.
      eval_batch: examples per evaluation chunk.

    Returns:
      (state bytes, temporary bytes) of one network.
    """
    hp1 = Hyper(*(jnp.zeros((), jnp.int32 if f == "seed" else jnp.float32) for f in Hyper._fields))
    state = jax.eval_shape(lambda h: init_network(setup, h, image_shape), hp1)
    x = jax.ShapeDtypeStruct((setup.batch_size, *image_shape), jnp.uint8)
    y = jax.ShapeDtypeStruct((setup.batch_size,), jnp.int32)

    def step(state, hp, x, y):
        tx = make_optimizer(setup, hp)
        grads = jax.grad(lambda p: loss_and_logits(setup, p, normalize(setup, x), y)[0])(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    xe = jax.ShapeDtypeStruct((eval_batch, *image_shape), jnp.uint8)
    fwd = lambda p, x: setup.model.apply({"params": p}, normalize(setup, x))
    init = lambda h: init_network(setup, h, image_shape)
    temps = []
    for f, args in ((step, (state, hp1, x, y)), (fwd, (state.params, xe)), (init, (hp1,))):
        m = jax.jit(f).lower(*args).compile().memory_analysis()
        temps.append(int(getattr(m, "temp_size_in_bytes", 0) or 0) if m is not None else 0)
    return _nbytes(state), max(temps)


def device_memory_bytes() -> int:
    """Memory of one local device: its allocator limit (GPU/TPU), else (CPU) the host memory
    available now (`MemAvailable`, or all of it where that is unknown) / local devices.

    Returns:
      Bytes.
    """

    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            ram = min(ram, next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")))
    except (OSError, StopIteration, ValueError):
        pass
    return int(ram // max(jax.local_device_count(), 1))


def networks_bytes(m: int, state_bytes: int, step_bytes: int, vmap_chunk: int = 0) -> int:
    """Bytes m networks take on one device while they train (see `plan_memory`).

    Args:
      m: networks on the device.
      state_bytes: one network's state (`network_memory`).
      step_bytes: one network's step temporaries (`network_memory`).
      vmap_chunk: networks vmapped at once (0: all).

    Returns:
      Bytes.
    """
    k = vmap_chunk
    if not k or m <= k:  # all vmapped at once
        return m * (2 * state_bytes + step_bytes)
    # `lax.map` over chunks of k: temporaries of k networks; a remainder chunk (m not a multiple
    # of k) makes XLA concatenate the two parts of the output: one more state
    return 2 * state_bytes * m + k * step_bytes + (state_bytes * m if m % k else 0)


def plan_memory(
    n: int,
    num_devices: int,
    state_bytes: int,
    step_bytes: int,
    fixed_bytes: int,
    budget_bytes: int,
    chunk_size: int = 0,
    vmap_chunk: int = 0,
) -> MemoryPlan:
    """Splits N networks into equal chunks that fit `budget_bytes` per device.

    A network costs a device its state twice (the state in and the state out of an epoch, whose
    buffers XLA cannot always share) plus its step temporaries; every device also holds the
    replicated data (`fixed_bytes`). Chunks are equal, each a multiple of `num_devices`, so all
    chunks run one compiled program. With `vmap_chunk` = k a device's share of a chunk is a
    multiple of k (padded with copies of the last network), so every `lax.map` step of every
    device and chunk runs the one program of width k, whatever N, the device count or the
    chunking: on CPU a network's numbers are then bitwise the same in every layout. Only when a
    device cannot hold k networks at once (or `chunk_size` asks for fewer per device) is the width
    lowered to what fits (`MemoryPlan.vmap_chunk`; the numbers then differ in the last bits from a
    run of width k).

    Args:
      n: networks in the zoo.
      num_devices: devices the networks axis is split over.
      state_bytes, step_bytes: from `network_memory`.
      fixed_bytes: bytes every device holds whatever the chunk size.
      budget_bytes: usable bytes per device.
      chunk_size: if > 0, at most this many networks per chunk (rounded up to a multiple of
        `num_devices`), whatever the memory says.
      vmap_chunk: `Setup.vmap_chunk`; when > 0 a device holds the step temporaries of that many
        networks at once (the rest of its networks wait in `lax.map`), so only the state grows
        with the chunk; 0 vmaps a device's whole share at once.

    Returns:
      A `MemoryPlan` whose `vmap_chunk` is the width to compile. Raises `ValueError` when not even
      one network per device fits.
    """
    per_net = 2 * state_bytes + step_bytes
    room = budget_bytes - fixed_bytes
    if per_net > room:
        raise ValueError(
            f"{budget_bytes / 2**20:,.1f} MiB per device cannot hold one network "
            f"({per_net / 2**20:,.1f} MiB) beside the data ({fixed_bytes / 2**20:,.1f} MiB)"
        )
    cap = -(-chunk_size // num_devices) if chunk_size > 0 else None  # networks per device at most
    k = vmap_chunk
    if k:  # the width: k, or fewer where a chunk may hold fewer or k networks do not fit at once
        k = min(k, cap or k, room // per_net)
    unit = max(k, 1)  # a device's share is a multiple of the width
    need = lambda m: networks_bytes(m, state_bytes, step_bytes, k)
    every = pad_networks(n, num_devices, k) // num_devices  # a device's share with the zoo in one chunk
    if need(every) <= room and (cap is None or every <= cap):
        per_device, num_chunks = every, 1
    else:
        # the most a device holds: a multiple of the width (all of them vmapped, or k at a time)
        most = (room - k * step_bytes) // max(2 * state_bytes, 1) if k else room // per_net
        most = min(most, cap) if cap is not None else most
        most = most // unit * unit
        num_chunks = -(-n // (most * num_devices))
        per_device = -(-n // (num_chunks * num_devices * unit)) * unit  # equal chunks, each as small as can be
    return MemoryPlan(
        n,
        num_devices,
        state_bytes,
        step_bytes,
        per_net,
        fixed_bytes,
        budget_bytes,
        per_device * num_devices,
        num_chunks,
        k,
    )
