"""Training a zoo: one network's step, vmapped over the networks axis, scanned over an epoch.

Everything here is written for one network and `jax.vmap`-ed outside. A network is one row of
the hyperparameter grid: its seed and its dynamic hyperparameters (learning rate, init scale,
weight decay, label-noise fraction, train-data fraction) are traced values, so the whole grid
trains in one compiled program. PRNG keys are derived, never stored:

    net_key   = fold_in(PRNGKey(config.seed), seed)
    init      = fold_in(net_key, 0)
    data order= fold_in(fold_in(net_key, 1), epoch)   (see `epoch_indices`)
    subset    = fold_in(net_key, 2)       (which examples a train_fraction < 1 keeps)
    label noise = fold_in(fold_in(net_key, 3), example index)

so networks with the same seed start from the same weights (scaled by their init scale), see the
data in the same order and the same noisy labels: a grid compares like with like.

A network whose loss or parameters become non-finite is marked diverged at that step and its
parameters and optimizer state stay frozen at the last finite values; nothing it does reaches
another network, since vmapped networks share no arithmetic. A network whose weights or loss
blew up while staying finite is flagged exploded after each epoch (`exploded`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxweights import models

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    """State of one network (or, stacked, of N networks with the networks axis first)."""

    params: PyTree
    opt_state: PyTree
    diverged: Array  # bool scalar
    step: Array  # int32 scalar


class Hyper(NamedTuple):
    """Dynamic hyperparameters of one network (stacked: each field has shape (N,))."""

    seed: Array
    learning_rate: Array
    init_scale: Array
    weight_decay: Array
    label_noise: Array
    train_fraction: Array


def hyper_from_grid(grid) -> Hyper:
    """Stacked `Hyper` from a `config.hyperparameter_grid` DataFrame."""
    f32 = lambda c: jnp.asarray(grid[c].to_numpy(), jnp.float32)
    return Hyper(
        seed=jnp.asarray(grid["seed"].to_numpy(), jnp.int32),
        learning_rate=f32("learning_rate"),
        init_scale=f32("init_scale"),
        weight_decay=f32("weight_decay"),
        label_noise=f32("label_noise"),
        train_fraction=f32("train_fraction"),
    )


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static choices of one compiled group (everything that changes shapes or code)."""

    model: Any  # flax.linen.Module
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    batch_size: int = 128
    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    root_seed: int = 0
    compute_dtype: Any = jnp.float32
    vmap_chunk: int = 0  # networks vmapped at once; 0 = all, k = `lax.map` over chunks of k (see make_zoo_fns)


def make_optimizer(setup: Setup, hp: Hyper) -> optax.GradientTransformation:
    """The optimizer of one network, with its traced learning rate and weight decay.

    sgd / momentum / adam add L2 weight decay to the gradient (`optax.add_decayed_weights`
    before the update); adamw decouples it (Loshchilov & Hutter 2019).
    """
    lr = hp.learning_rate
    if setup.schedule == "constant":
        rate: Any = lr
    else:
        if setup.schedule == "cosine":
            shape = optax.cosine_decay_schedule(1.0, setup.total_steps)
        else:
            warm = min(max(setup.warmup_steps, 1), setup.total_steps - 1)
            shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, setup.total_steps)
        rate = lambda count: lr * shape(count)
    if setup.optimizer == "adamw":
        return optax.adamw(rate, weight_decay=hp.weight_decay)
    base = {
        "sgd": lambda: optax.sgd(rate),
        "momentum": lambda: optax.sgd(rate, momentum=setup.momentum),
        "adam": lambda: optax.adam(rate),
    }[setup.optimizer]()
    return optax.chain(optax.add_decayed_weights(hp.weight_decay), base)


def _net_key(setup: Setup, hp: Hyper) -> Array:
    return jax.random.fold_in(jax.random.PRNGKey(setup.root_seed), hp.seed)


def normalize(setup: Setup, x_uint8: Array) -> Array:
    """uint8 images → per-channel standardised floats in the compute dtype."""
    mean = jnp.asarray(setup.mean, jnp.float32)
    std = jnp.asarray(setup.std, jnp.float32)
    return ((x_uint8.astype(jnp.float32) - mean) / std).astype(setup.compute_dtype)


def init_network(setup: Setup, hp: Hyper, image_shape: tuple[int, ...]) -> TrainState:
    """Initial state of one network: parameters from its seed, kernels scaled by its init scale."""
    key = jax.random.fold_in(_net_key(setup, hp), 0)
    params = setup.model.init(key, jnp.zeros((1, *image_shape), setup.compute_dtype))["params"]
    params = models.scale_kernels(params, hp.init_scale)
    tx = make_optimizer(setup, hp)
    return TrainState(params, tx.init(params), jnp.zeros((), bool), jnp.zeros((), jnp.int32))


def _all_finite(tree: PyTree) -> Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _tree_where(cond: Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def loss_and_logits(setup: Setup, params: PyTree, x: Array, y: Array) -> tuple[Array, Array]:
    """Mean softmax cross-entropy (float32) and logits of one network on one batch."""
    logits = setup.model.apply({"params": params}, x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def epoch_indices(net_key: Array, epoch: Array, train_fraction: Array, n: int, steps: int, batch_size: int) -> Array:
    """The `steps * batch_size` training-example indices of one network's epoch, in order.

    The network keeps m = round(f·n) examples (at least one batch), the first m of a permutation
    fixed by its key, the same every epoch. Each epoch shuffles them afresh and walks through
    passes over them, each pass in its own random order, until the epoch's steps are filled: every
    kept example appears floor(T/m) or ceil(T/m) times in an epoch of T = steps·batch_size
    draws, and which ones get the extra visit changes from epoch to epoch. Pure and traced in f,
    so networks with different fractions share one compiled program at the same compute.
    """
    total = steps * batch_size
    subset = jax.random.permutation(jax.random.fold_in(net_key, 2), n)  # kept: subset[:m]
    m = jnp.clip(jnp.round(train_fraction * n).astype(jnp.int32), batch_size, n)
    key = jax.random.fold_in(jax.random.fold_in(net_key, 1), epoch)
    # a random order of 0..m-1 with m traced: sort n uniforms with the slots >= m pushed last
    u_n = jax.random.uniform(jax.random.fold_in(key, 0), (n,))
    perm_n = jnp.argsort(jnp.where(jnp.arange(n) < m, u_n, 2.0))
    # draw t of the epoch is slot t % m of pass t // m; shuffle the draws within each pass
    t = jnp.arange(total)
    v_t = jax.random.uniform(jax.random.fold_in(key, 1), (total,))
    within_t = jnp.lexsort((v_t, t // m))
    return subset[perm_n[within_t % m]]


def train_epoch(
    setup: Setup, state: TrainState, hp: Hyper, epoch: Array, x_train: Array, y_train: Array, *, rwc_every: int = 0
) -> tuple[TrainState, dict[str, Array]]:
    """One epoch of one network: `len(x_train) // batch_size` steps in a `lax.scan`.

    With `train_fraction` f < 1 the network trains on a fixed subset of round(f·n) examples
    (chosen by its seed) for the same number of steps, so every network gets the same compute
    and sees each kept example about 1/f times per epoch, all of them equally often (±1, see
    `epoch_indices`).

    With `rwc_every` = k > 0 the scan also carries the kernels of the last k-step boundary and
    returns `metrics["rwc_l1_ratio"]`: `{kernel path: (steps,)}`, the relative weight change
    ||w_t − w_{t−k}||₁ / ||w_{t−k}||₁ at steps k, 2k, ... and NaN elsewhere (Agrawal et al. 2020),
    without storing a snapshot per step (see `jaxweights.dynamics.rwc_every_k_steps`).

    Returns:
      The new state and the epoch's mean train loss and accuracy (on the labels it trained on,
      noisy ones included; NaN loss once the network diverged).
    """
    n, b = x_train.shape[0], setup.batch_size
    steps = n // b
    key = _net_key(setup, hp)
    idx_all = epoch_indices(key, epoch, hp.train_fraction, n, steps, b)
    noise_key = jax.random.fold_in(key, 3)
    tx = make_optimizer(setup, hp)

    def noisy_labels(idx, y):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(noise_key, idx)
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)
        r = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, setup.num_classes))(keys)
        return jnp.where(u < hp.label_noise, r, y)

    def step(carry, i):
        state, loss_sum, correct = carry
        idx = jax.lax.dynamic_slice_in_dim(idx_all, i * b, b)
        x = normalize(setup, x_train[idx])
        y = noisy_labels(idx, y_train[idx].astype(jnp.int32))
        (loss, logits), grads = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)(setup, state.params, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & _all_finite(params) & ~state.diverged
        new = TrainState(
            _tree_where(ok, params, state.params), _tree_where(ok, opt_state, state.opt_state), ~ok, state.step + 1
        )
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return (new, loss_sum + loss, correct + acc), None

    zero = jnp.zeros((), jnp.float32)
    if rwc_every:
        return _train_with_rwc(step, state, zero, steps, rwc_every)
    (state, loss_sum, correct), _ = jax.lax.scan(step, (state, zero, zero), jnp.arange(steps))
    return state, {"train_loss": loss_sum / steps, "train_acc": correct / steps}


def max_abs_weight(params: PyTree) -> Array:
    """The largest |w| over all parameters of one network (float32 scalar; inf/NaN if any is)."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(params)]))


def reference_max_abs_weight(setup: Setup, hp: Hyper, image_shape: tuple[int, ...]) -> Array:
    """The yardstick of one network's `exploded` weight rule: the larger of its initial max |w| and
    that of the same seed's initialisation at init scale 1 (so a small init scale does not make
    ordinary learned weights look like a blow-up)."""
    own = init_network(setup, hp, image_shape).params
    unit = init_network(setup, hp._replace(init_scale=jnp.ones_like(hp.init_scale)), image_shape).params
    return jnp.maximum(max_abs_weight(own), max_abs_weight(unit))


def exploded(
    test_loss_N: np.ndarray,
    max_abs_weight_N: np.ndarray,
    reference_N: np.ndarray,
    diverged_N: np.ndarray,
    num_classes: int,
    loss_factor: float = 10.0,
    weight_factor: float = 100.0,
) -> np.ndarray:
    """Which networks blew up without becoming non-finite (bool (N,)).

    exploded = not diverged and (test loss > `loss_factor` · ln(num_classes), i.e. that many times
    the loss of a uniform guess, or not finite; or max |w| > `weight_factor` · `reference_N`, the
    network's `reference_max_abs_weight`, or not finite). NaN comparisons count as blown up.
    """
    loss_ok = np.asarray(test_loss_N, np.float64) <= loss_factor * np.log(num_classes)
    w_ok = np.asarray(max_abs_weight_N, np.float64) <= weight_factor * np.asarray(reference_N, np.float64)
    return ~np.asarray(diverged_N, bool) & ~(loss_ok & w_ok)


def _kernels(params: PyTree) -> dict[str, Array]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: v for k, v in flat.items() if k.endswith("kernel")}


def _train_with_rwc(step, state, zero, steps: int, every: int):
    """The epoch's scan with the kernels of the last k-step boundary carried (see `train_epoch`)."""

    def body(carry, i):
        inner, ref = carry
        inner, _ = step(inner, i)
        cur = _kernels(inner[0].params)
        at = (i + 1) % every == 0
        rwc = jax.tree.map(lambda a, r: jnp.where(at, jnp.abs(a - r).sum() / jnp.abs(r).sum(), jnp.nan), cur, ref)
        ref = jax.tree.map(lambda a, r: jnp.where(at, a, r), cur, ref)
        return (inner, ref), rwc

    ((state, loss_sum, correct), _), rwc = jax.lax.scan(
        body, ((state, zero, zero), _kernels(state.params)), jnp.arange(steps)
    )
    return state, {"train_loss": loss_sum / steps, "train_acc": correct / steps, "rwc_l1_ratio": rwc}


def evaluate(setup: Setup, params: PyTree, x: Array, y: Array, mask: Array, eval_batch: int) -> dict[str, Array]:
    """Test loss and accuracy of N stacked networks on a padded split, in chunks of `eval_batch`,
    and each network's `max_abs_weight` (N,).

    The scan runs over chunks with the networks vmapped inside, so the working set is
    N × eval_batch activations. `mask` marks real (1) and padding (0) examples.
    """
    chunks = x.shape[0] // eval_batch

    def body(carry, c):
        loss_sum, correct = carry
        xb = normalize(setup, jax.lax.dynamic_slice_in_dim(x, c * eval_batch, eval_batch))
        yb = jax.lax.dynamic_slice_in_dim(y, c * eval_batch, eval_batch).astype(jnp.int32)
        mb = jax.lax.dynamic_slice_in_dim(mask, c * eval_batch, eval_batch)
        logits = jax.vmap(lambda p: setup.model.apply({"params": p}, xb))(params).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb[None, :])
        return (loss_sum + (ce * mb).sum(-1), correct + ((jnp.argmax(logits, -1) == yb) * mb).sum(-1)), None

    n_nets = jax.tree.leaves(params)[0].shape[0]
    zero = jnp.zeros((n_nets,), jnp.float32)
    (loss_sum, correct), _ = jax.lax.scan(body, (zero, zero), jnp.arange(chunks))
    total = mask.sum()
    return {
        "test_loss": loss_sum / total,
        "test_acc": correct / total,
        "max_abs_weight": jax.vmap(max_abs_weight)(params),
    }


def pad_split(x: np.ndarray, y: np.ndarray, eval_batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads a split to a multiple of `eval_batch`; returns (x, y, mask)."""
    n = x.shape[0]
    pad = -n % eval_batch
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    return x, y, mask


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

    Args:
      setup: the static choices of the group.
      image_shape: one example's shape, e.g. (28, 28, 1).
      eval_batch: test examples per evaluation chunk.
      mesh: a `networks_mesh`; when given, each function is a `jax.shard_map` over its
        `networks` axis: stacked states, hyperparameters and metrics are split over the
        devices (the networks count must be a multiple of the mesh size, see `pad_networks`),
        data and the epoch number are replicated, and no device talks to another.

    Returns:
      `ZooFns(init, train_epoch, evaluate, reference_weight)`.
    """
    init = jax.vmap(lambda hp: init_network(setup, hp, image_shape))
    ref = jax.vmap(lambda hp: reference_max_abs_weight(setup, hp, image_shape))
    k = setup.vmap_chunk
    if k:  # chunks of k networks vmapped, one chunk after another inside the program
        # (the initialisation too: its random draws take several times the state while they live)
        init = lambda hp: jax.lax.map(lambda h: init_network(setup, h, image_shape), hp, batch_size=k)
        ref = lambda hp: jax.lax.map(lambda h: reference_max_abs_weight(setup, h, image_shape), hp, batch_size=k)
        epoch = lambda s, hp, e, x, y: jax.lax.map(
            lambda a: train_epoch(setup, a[0], a[1], e, x, y), (s, hp), batch_size=k
        )
        one = lambda q, x, y, m: jax.tree.map(
            lambda v: v[0],
            evaluate(  # evaluate stacks: one network as N=1
                setup, jax.tree.map(lambda a: a[None], q), x, y, m, eval_batch
            ),
        )
        ev = lambda p, x, y, m: jax.lax.map(lambda q: one(q, x, y, m), p, batch_size=k)
    else:
        epoch = jax.vmap(lambda s, hp, e, x, y: train_epoch(setup, s, hp, e, x, y), in_axes=(0, 0, None, None, None))
        ev = lambda p, x, y, m: evaluate(setup, p, x, y, m, eval_batch)
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


# ============================== devices and hosts ==============================

NETWORKS = "networks"  # the mesh axis the networks axis is sharded over


def default_vmap_chunk() -> int:
    """Networks vmapped at once when `config.vmap_chunk` is 0: 8 on CPU, all (0) on accelerators.

    On a 2-core CPU, 64 MLPs (784-512-256-128-10, batch 128) trained 1.3× faster as `lax.map`
    over chunks of 4-8 than vmapped all at once (59% vs 46% of the matmul ceiling), and 64 CNNs
    1.2× faster (`benchmarks/train_throughput.py --compare-conv`): a chunk's working set stays
    in cache. Accelerators want the widest batch.
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


def pad_networks(n: int, num_devices: int) -> int:
    """The padded networks count: the smallest multiple of `num_devices` that is >= n."""
    return -(-n // num_devices) * num_devices


def shard(x: np.ndarray | PyTree, mesh: jax.sharding.Mesh, networks_axis: bool = True) -> PyTree:
    """Host arrays (the same on every process) → global arrays on `mesh`.

    With `networks_axis` the leading axis is split over the mesh, otherwise each device gets a
    full copy. Uses `jax.make_array_from_callback`, so it works unchanged on several hosts.
    """
    spec = jax.sharding.PartitionSpec(NETWORKS) if networks_axis else jax.sharding.PartitionSpec()
    sharding = jax.sharding.NamedSharding(mesh, spec)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, x)


def to_host(tree: PyTree) -> PyTree:
    """Global (possibly multi-host, sharded) arrays → full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# ============================== memory planning ==============================


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
    available now (`MemAvailable`, or all of it where that is unknown) / local devices."""
    import os

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
    """Bytes m networks take on one device while they train (see `plan_memory`)."""
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


def step_flops(setup: Setup, params_one: PyTree, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step of one network, from XLA's cost analysis of forward+backward."""
    x = jnp.zeros((setup.batch_size, *image_shape), setup.compute_dtype)
    y = jnp.zeros((setup.batch_size,), jnp.int32)
    f = jax.jit(jax.grad(lambda p: loss_and_logits(setup, p, x, y)[0]))
    cost = f.lower(params_one).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def step_cost(setup: Setup, image_shape: tuple[int, ...], n_nets: int = 1) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one whole training step of one network, from XLA's cost analysis.

    Unlike `step_flops` this is the step as `train_epoch` compiles it, the optimizer update and
    the divergence check included, for `n_nets` networks vmapped together (what one device runs
    at a time: a `vmap_chunk` chunk or its share of a sharded zoo), divided by `n_nets`. The bytes
    are those read and written by every fused kernel of the compiled program, with no reuse
    across kernels counted; their ratio to the FLOPs is the step's arithmetic intensity, which
    decides whether memory bandwidth or the matmul units bound a zoo (the roofline columns of
    `benchmarks/train_throughput.py`). The cost analysis counts the step loop's body once, so the
    program is compiled (never run) on one batch.
    """
    f32 = lambda v: jnp.full((n_nets,), v, jnp.float32)
    hp = Hyper(
        seed=jnp.arange(n_nets, dtype=jnp.int32),
        learning_rate=f32(0.01),
        init_scale=f32(1.0),
        weight_decay=f32(0.0),
        label_noise=f32(0.0),
        train_fraction=f32(1.0),
    )
    fns = make_zoo_fns(dataclasses.replace(setup, vmap_chunk=0), image_shape, 1)
    state = jax.eval_shape(fns.init, hp)
    x = jax.ShapeDtypeStruct((setup.batch_size, *image_shape), jnp.uint8)
    y = jax.ShapeDtypeStruct((setup.batch_size,), jnp.int32)
    cost = fns.train_epoch.lower(state, hp, jax.ShapeDtypeStruct((), jnp.int32), x, y).compile().cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return float(cost.get("flops", 0.0)) / n_nets, float(cost.get("bytes accessed", 0.0)) / n_nets
