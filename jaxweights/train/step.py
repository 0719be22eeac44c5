"""One network's training epoch and evaluation (written for one network, `jax.vmap`-ed outside).

A network whose loss or parameters become non-finite is marked diverged at that step and its
parameters and optimizer state stay frozen at the last finite values; nothing it does reaches
another network, since vmapped networks share no arithmetic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxweights.train.health import max_abs_weight
from jaxweights.train.state import Hyper, Setup, TrainState, _net_key, make_optimizer, normalize

Array = jax.Array
PyTree = Any


def _all_finite(tree: PyTree) -> Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _tree_where(cond: Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def loss_and_logits(setup: Setup, params: PyTree, x: Array, y: Array) -> tuple[Array, Array]:
    """Mean softmax cross-entropy (float32) and logits of one network on one batch.

    Args:
      setup: the static setup (model, compute dtype).
      params: one network's parameters.
      x: standardised images (B, H, W, C).
      y: int labels (B,).

    Returns:
      (loss, logits (B, num_classes)).
    """
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

    Args:
      net_key: the network's key (`fold_in(PRNGKey(root_seed), seed)`).
      epoch: the epoch number (traced).
      train_fraction: f in (0, 1] (traced).
      n: training-set size.
      steps: steps per epoch.
      batch_size: examples per step.

    Returns:
      int32 indices (steps, batch_size).
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

    Args:
      setup: the static setup.
      state: the network's state before the epoch.
      hp: its hyperparameters.
      epoch: the epoch number, from 1 (traced).
      x_train: uint8 images (n, H, W, C).
      y_train: int32 labels (n,).
      rwc_every: k > 0 also records the relative weight change every k steps; 0 does not.

    Returns:
      (state after the epoch, metrics: train_loss, train_acc (and rwc_l1_ratio with `rwc_every`)).
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

    Args:
      setup: the static setup.
      params: stacked parameters of N networks.
      x: uint8 test images, padded to a multiple of `eval_batch` (`pad_split`).
      y: int32 labels, padded likewise.
      mask: 1 for real examples, 0 for padding.
      eval_batch: examples per chunk.

    Returns:
      {"test_loss": (N,), "test_acc": (N,), "max_abs_weight": (N,)}.
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
