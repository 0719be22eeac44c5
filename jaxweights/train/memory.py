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
    chunk_size: int  # networks per chunk, a multiple of `devices`
    num_chunks: int
    vmap_chunk: int = 0  # networks whose step temporaries a device holds at once (0 = all of its networks)

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
    chunks run one compiled program and the padding stays below `num_devices` per chunk. With
    `vmap_chunk` = k, a device's share of a chunk is a multiple of k when that fits (a remainder
    makes `lax.map` concatenate its outputs: a third copy of the state, which is counted when
    it cannot be avoided), so the padding then stays below k per device.

    Args:
      n: networks in the zoo.
      num_devices: devices the networks axis is split over.
      state_bytes, step_bytes: from `network_memory`.
      fixed_bytes: bytes every device holds whatever the chunk size.
      budget_bytes: usable bytes per device.
      chunk_size: if > 0, at most this many networks per chunk (rounded up to a multiple of
        `num_devices`), whatever the memory says.
      vmap_chunk: `Setup.vmap_chunk`; when > 0 a device holds the step temporaries of at most
        that many networks at once (the rest of its networks wait in `lax.map`), so only the
        state grows with the chunk.

    Returns:
      A `MemoryPlan`. Raises `ValueError` when not even one network per device fits.
    """
    per_net = 2 * state_bytes + step_bytes
    room = budget_bytes - fixed_bytes
    k = vmap_chunk
    need = lambda m: networks_bytes(m, state_bytes, step_bytes, k)
    if need(1) > room:
        raise ValueError(
            f"{budget_bytes / 2**20:,.1f} MiB per device cannot hold one network "
            f"({per_net / 2**20:,.1f} MiB) beside the data ({fixed_bytes / 2**20:,.1f} MiB)"
        )
    cap = -(-pad_networks(chunk_size, num_devices) // num_devices) if chunk_size > 0 else None
    every = -(-n // num_devices)  # networks per device with the whole zoo in one chunk
    if need(every) <= room and (cap is None or every <= cap):
        return MemoryPlan(
            n,
            num_devices,
            state_bytes,
            step_bytes,
            per_net,
            fixed_bytes,
            budget_bytes,
            pad_networks(n, num_devices),
            1,
            vmap_chunk,
        )
    # the most networks a device holds: all vmapped, a multiple of k, or any count (remainder and all)
    candidates = {1, room // per_net}
    if k:
        candidates |= {
            min(room // per_net, k),
            max(room - k * step_bytes, 0) // (2 * state_bytes) // k * k,
            max(room - k * step_bytes, 0) // (3 * state_bytes),
        }
    if cap is not None:
        candidates = {min(c, cap) for c in candidates} | {cap, cap // k * k if k else cap}
    per_device = max(c for c in candidates if c >= 1 and need(c) <= room)
    num_chunks = -(-n // (per_device * num_devices))
    per_chunk = -(-n // (num_chunks * num_devices))  # networks per device in equal chunks
    if k and per_chunk > k and -(-per_chunk // k) * k <= per_device:
        per_chunk = -(-per_chunk // k) * k  # no remainder chunk (a few more padding networks)
    size = per_chunk * num_devices
    return MemoryPlan(
        n, num_devices, state_bytes, step_bytes, per_net, fixed_bytes, budget_bytes, size, num_chunks, vmap_chunk
    )
