"""Learning dynamics of a zoo: weight change, statistics over epochs, representations, modularity.

Everything is written for one network and mapped over the leading networks axis with
`jax.lax.map(..., batch_size=chunk)`: `chunk` networks are `jax.vmap`-ed at a time inside one
compiled program (1 on CPU, where that measured fastest; 64 on accelerators; see `default_chunk`).
Inputs are the per-epoch orbax snapshots of a run directory (`checkpoints/<epoch>/`, epoch 0 is
the initialisation; `keep_checkpoints=0` keeps them all) and a fixed probe set of test images.

Quantities (per network, per layer, per epoch):

* **Relative weight change** (Agrawal et al. 2020, arXiv 2011.06735), of the layer's kernel,
  between consecutive snapshots, in two definitions kept apart:
  - `rwc_l1_ratio` = ||w_t − w_{t−1}||₁ / ||w_{t−1}||₁ (the paper's formula);
  - `rwc_mean_elementwise` = mean over kernel elements of |w_t − w_{t−1}| / |w_{t−1}| (their
    reference code). Elements with w_{t−1} = 0 have no relative change and are left out of the
    mean (the count left out is reported as `zero_weights`); a kernel that is all zero, like an
    all-zero kernel for `rwc_l1_ratio`, gives NaN.
* **Statistics over training**: every statistic of `jaxweights.stats`, node strength (mean over
  the layer's nodes) and layer fluctuation (`jaxweights.strength`) at every snapshot.
* **Representations** on the probe set, captured with Flax's `capture_intermediates`: the output
  of every top-level layer (after the model's activation for hidden MLP/CNN layers, logits for the
  last), flattened to `(n, features)`; `"input"` is the standardised image.
* **CKA**: linear CKA (Kornblith et al. 2019, arXiv 1905.00414),
  `HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))` with `HSIC(K, L) = <HKH, HLH>` on linear Gram
  matrices, and minibatch CKA with the unbiased HSIC estimator of Song et al. 2012 averaged over
  minibatches (Nguyen, Raghu, Kornblith 2021, arXiv 2010.15327). Layer × layer within a network,
  epoch × epoch for one layer (Sharon & Dar 2024, arXiv 2405.17377) and network × network.
* **Linear probes**: a softmax-regression readout per layer and epoch trained with optax on the
  probe set's activations; its held-out accuracy, and the agreement of its decision regions
  between epochs on planes through triples of probe images (Sharon & Dar 2024).
* **Modularity over depth** (Lu et al. 2022, ECCV, "Understanding the dynamics of DNNs through
  graph modularity"): a k-nearest-neighbour graph of the probe set's representations by cosine
  similarity (k = 3, binary edges to the k most similar other samples), symmetrised as
  A = (A_dir + A_dirᵀ)/2, and Newman's modularity with the true labels as communities. Layers
  where the modularity curve stops rising (gain below `tol`) are pruning candidates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pandas as pd

from jaxweights import data as data_lib
from jaxweights import rundir, stats, strength

log = logging.getLogger("jaxweights")

Array = jax.Array
INPUT = "input"


class DynamicsError(ValueError):
    """A run directory the dynamics cannot be computed from (no snapshots, unknown layer...)."""


def default_chunk() -> int:
    """Networks vmapped at once by `jax.lax.map(..., batch_size=chunk)` when none is given.

    1 on CPU, where batched matmuls and `top_k` over a networks axis ran 2-5× slower than one
    network at a time (benchmarks/dynamics_throughput.py); 64 on accelerators.
    """
    return 1 if jax.default_backend() == "cpu" else 64


# ============================== snapshots ==============================


def snapshot_dirs(run_dir: str | Path) -> list[Path]:
    """The folders holding a run's `checkpoints/`: the run itself, or its chunks in network order.

    A zoo trained in chunks (`chunks/plan.json`) keeps each chunk's checkpoints in
    `chunks/<KK>/checkpoints/`; its networks are the chunks' networks one after another.

    Raises:
      DynamicsError: no checkpoints anywhere.
    """
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").is_dir():
        return [run_dir]
    if (run_dir / "chunks" / "plan.json").exists():
        chunks = sorted(p for p in (run_dir / "chunks").iterdir() if p.name.isdigit())
        missing = [str(p) for p in chunks if not (p / "checkpoints").is_dir()]
        if chunks and not missing:
            return chunks
        raise DynamicsError(f"{run_dir / 'chunks'}: chunk(s) without checkpoints/: {', '.join(missing) or 'none'}")
    raise DynamicsError(f"{run_dir}: no checkpoints/ folder (is this a `jaxweights train` run directory?)")


def _load_dir_snapshots(run_dir: Path) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    import orbax.checkpoint as ocp

    ckpt = rundir.Checkpoints(run_dir)
    try:
        epochs = ckpt.epochs()
        if not epochs:
            raise DynamicsError(f"{run_dir / 'checkpoints'}: no checkpoints")
        out = []
        for e in epochs:
            state = ckpt.manager.restore(e, args=ocp.args.StandardRestore())
            out.append(rundir.flatten_params(state["params"]))
    finally:
        ckpt.close()
    return epochs, out


def _check_same_epochs(chunk_dir: Path, epochs: list[int], first: list[int]) -> None:
    """Every chunk of a zoo trained in chunks must have kept the first chunk's epochs."""
    if epochs != first:
        raise DynamicsError(f"{chunk_dir / 'checkpoints'}: epochs {epochs} differ from the first chunk's {first}")


def load_snapshots(run_dir: str | Path) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Reads the parameters of every per-epoch checkpoint of a run directory.

    Args:
      run_dir: a `jaxweights train` run directory of one group (with `checkpoints/`, or with
        `chunks/<KK>/checkpoints/` for a zoo trained in chunks; their networks are concatenated).

    Returns:
      `(epochs, params)`: the sorted checkpoint epochs and, for each, the flat parameters
      `{"Dense_0/kernel": (N, ...)}` with the networks axis first.

    Raises:
      DynamicsError: the directory holds no checkpoints, or chunks kept different epochs.
    """
    dirs = snapshot_dirs(run_dir)
    parts = [_load_dir_snapshots(d) for d in dirs]
    epochs = parts[0][0]
    for d, (e, _) in zip(dirs, parts):
        _check_same_epochs(d, e, epochs)
    if len(parts) == 1:
        return parts[0]
    return epochs, [
        {k: np.concatenate([p[1][i][k] for p in parts]) for k in parts[0][1][i]} for i in range(len(epochs))
    ]


def stack_epochs(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """`[{path: (N, ...)}] * E` → `{path: (E, N, ...)}`."""
    return {k: np.stack([np.asarray(s[k]) for s in snapshots]) for k in snapshots[0]}


def kernel_layers(flat: Mapping[str, Any]) -> list[str]:
    """Layers with a `kernel` leaf, in the order of `flat` (a run's snapshots come in the model's
    execution order: `stats.layer_order`); names are never sorted."""
    return list(dict.fromkeys(stats.layer_of(p) for p, x in flat.items() if stats.is_kernel(p, x)))


# ============================== relative weight change ==============================


def rwc_l1_ratio(w_prev: Array, w: Array) -> Array:
    """Relative weight change ||w − w_prev||₁ / ||w_prev||₁ of one layer (Agrawal et al. 2020, eq. 1).

    Args:
      w_prev: weights at the previous snapshot (any shape).
      w: weights at the current snapshot (same shape).

    Returns:
      A scalar; NaN when `w_prev` is all zero.
    """
    num = jnp.abs(w - w_prev).sum()
    den = jnp.abs(w_prev).sum()
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def rwc_mean_elementwise(w_prev: Array, w: Array) -> tuple[Array, Array]:
    """Mean element-wise relative change mean(|w − w_prev| / |w_prev|) (Agrawal et al.'s code).

    Elements with `w_prev == 0` have no relative change and are left out of the mean.

    Args:
      w_prev: weights at the previous snapshot.
      w: weights at the current snapshot.

    Returns:
      `(value, zero_weights)`: the mean over the elements with `w_prev != 0` (NaN if there is
      none) and how many elements were left out.
    """
    nz = w_prev != 0
    ratio = jnp.abs(w - w_prev) / jnp.where(nz, jnp.abs(w_prev), 1.0)
    count = nz.sum()
    value = jnp.where(count > 0, jnp.where(nz, ratio, 0.0).sum() / jnp.maximum(count, 1), jnp.nan)
    return value, w_prev.size - count


@jax.jit
def _rwc_program(kernels_ExN):
    def per_leaf(w):  # (E, N, ...)
        one = lambda a, b: (rwc_l1_ratio(a, b), *rwc_mean_elementwise(a, b))
        return jax.vmap(jax.vmap(one))(w[:-1], w[1:])  # over epoch pairs, then networks

    return jax.tree.map(per_leaf, kernels_ExN)


def relative_weight_change(
    snapshots: Sequence[Mapping[str, Any]], epochs: Sequence[int] | None = None, layers: Sequence[str] | None = None
) -> pd.DataFrame:
    """Relative weight change of every kernel layer of every network between consecutive snapshots.

    Args:
      snapshots: per-epoch flat parameters `[{path: (N, ...)}]`, oldest first (`load_snapshots`).
      epochs: the epoch of each snapshot (default 0, 1, ...).
      layers: kernel layers to report (default all, in the snapshots' execution order).

    Returns:
      Tidy DataFrame `network, layer, depth, epoch, rwc_l1_ratio, rwc_mean_elementwise,
      zero_weights`; `epoch` is the later snapshot of each pair (so epoch 1 compares with the
      initialisation).
    """
    epochs = list(range(len(snapshots))) if epochs is None else list(epochs)
    if len(snapshots) < 2:
        raise DynamicsError("relative weight change needs at least two snapshots")
    layers = list(layers) if layers is not None else kernel_layers(snapshots[0])
    kernels = {l: jnp.asarray(np.stack([np.asarray(s[f"{l}/kernel"]) for s in snapshots])) for l in layers}
    out = jax.device_get(_rwc_program(kernels))
    frames = []
    for depth, l in enumerate(layers):
        l1, me, zeros = out[l]  # (E-1, N)
        e_, n_ = l1.shape
        frames.append(
            pd.DataFrame(
                {
                    "network": np.tile(np.arange(n_), e_),
                    "layer": l,
                    "depth": depth,
                    "epoch": np.repeat(np.asarray(epochs[1:]), n_),
                    "rwc_l1_ratio": l1.ravel().astype(np.float64),
                    "rwc_mean_elementwise": me.ravel().astype(np.float64),
                    "zero_weights": zeros.ravel().astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def rwc_every_k_steps(
    run_dir: str | Path, every: int, *, epochs: Sequence[int] | None = None, data_dir: str | None = None
) -> pd.DataFrame:
    """Relative weight change `rwc_l1_ratio` every `every` steps, replayed from a run's checkpoints.

    Each requested epoch is retrained from the checkpoint before it with the run's own config,
    seeds and data order (so the trajectory is the run's), with the kernels of the last k-step
    boundary carried inside the epoch's `lax.scan` (`train.train_epoch(..., rwc_every=k)`): no
    per-step snapshot is stored. With `every` = steps per epoch it equals the per-epoch
    `rwc_l1_ratio` of `relative_weight_change`.

    Args:
      run_dir: a run directory with the checkpoint of the epoch before each requested epoch.
      every: k, steps between the compared weights (boundaries at steps k, 2k, ... of an epoch).
      epochs: epochs to replay (default all with a checkpoint before them).
      data_dir: data folder (default: the run's config).

    Returns:
      Tidy DataFrame `network, layer, epoch, step, rwc_l1_ratio` (`step` counted within the epoch).
    """
    from jaxweights import config as config_lib
    from jaxweights import run as run_lib
    from jaxweights import train as train_lib

    run_dir = Path(run_dir)
    if not isinstance(every, int) or every <= 0:
        raise DynamicsError(f"every: must be a positive number of steps, got {every!r}")
    config = run_config(run_dir)
    if data_dir:
        with config.unlocked():
            config.data_dir = str(data_dir)
    ds = run_lib.load_dataset(config)
    setup = run_lib.make_setup(config, ds)
    hp = train_lib.hyper_from_grid(config_lib.hyperparameter_grid(config))
    image_shape = tuple(ds.x_train.shape[1:])
    like = jax.jit(jax.vmap(lambda h: train_lib.init_network(setup, h, image_shape)))(hp)
    fn = jax.jit(
        jax.vmap(
            lambda st, h, e, x, y: train_lib.train_epoch(setup, st, h, e, x, y, rwc_every=every),
            in_axes=(0, 0, None, None, None),
        )
    )
    x_train, y_train = jax.device_put(ds.x_train), jax.device_put(ds.y_train.astype(np.int32))
    ckpt = rundir.Checkpoints(run_dir)
    try:
        have = set(ckpt.epochs())
        if epochs is None:
            epochs = [e + 1 for e in sorted(have) if e + 1 <= config.num_epochs]
        frames = []
        for e in epochs:
            if e - 1 not in have:
                raise DynamicsError(
                    f"epochs: no checkpoint of epoch {e - 1} in {run_dir / 'checkpoints'} to replay epoch {e} from"
                )
            state = ckpt.restore(e - 1, like)
            _, m = fn(state, hp, jnp.int32(e), x_train, y_train)
            for path, v in m["rwc_l1_ratio"].items():  # (N, steps)
                v = np.asarray(v)
                steps = np.arange(every - 1, v.shape[1], every)  # the k-step boundaries
                frames.append(
                    pd.DataFrame(
                        {
                            "network": np.repeat(np.arange(v.shape[0]), len(steps)),
                            "layer": stats.layer_of(path),
                            "epoch": e,
                            "step": np.tile(steps + 1, v.shape[0]),
                            "rwc_l1_ratio": v[:, steps].ravel().astype(np.float64),
                        }
                    )
                )
    finally:
        ckpt.close()
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["network", "layer", "epoch", "step", "rwc_l1_ratio"])
    )


# ============================== statistics over training ==============================


def statistics_over_epochs(
    snapshots: Sequence[Mapping[str, Any]],
    epochs: Sequence[int] | None = None,
    *,
    statistics=None,
    per=("leaf", "layer"),
    node_strength: bool = True,
) -> pd.DataFrame:
    """Every weight statistic, node-strength mean and layer fluctuation at every snapshot.

    Args:
      snapshots: per-epoch flat parameters (see `load_snapshots`).
      epochs: the epoch of each snapshot (default 0, 1, ...).
      statistics: passed to `stats.compute_statistics` (default: all registered).
      per: groups of `stats.compute_statistics`.
      node_strength: add `node_strength_mean` and `layer_fluctuation` rows per layer (La Malfa
        et al. 2021); skipped with a log line for models whose layers do not form a chain.

    All snapshots are reduced in one call (epochs stacked on the networks axis), so histogram
    edges (`hist_*` rows) are shared by every network and every epoch.

    Returns:
      Tidy DataFrame `epoch, network, layer, statistic, value, undefined`.
    """
    epochs = list(range(len(snapshots))) if epochs is None else list(epochs)
    n_nets = next(iter(snapshots[0].values())).shape[0]
    # One call over E·N "networks" (epochs stacked on the networks axis): one compile, one
    # program; histogram edges are then shared across epochs too, so bins compare over time.
    flat = {k: np.concatenate([np.asarray(s[k]) for s in snapshots]) for k in snapshots[0]}
    df = stats.compute_statistics(flat, statistics=statistics, per=per)
    parts = [df]
    if node_strength:
        try:
            ns = strength.node_strength(flat)
        except ValueError as err:
            log.info("no node strength over epochs: %s", err)
        else:
            for name, v in ns.items():
                v = v.astype(np.float64)
                for stat, x in (("node_strength_mean", v.mean(1)), ("layer_fluctuation", v.std(1))):
                    parts.append(
                        pd.DataFrame(
                            {
                                "network": np.arange(len(x)),
                                "layer": name,
                                "statistic": stat,
                                "value": x,
                                "undefined": ~np.isfinite(x),
                            }
                        )
                    )
    df = pd.concat(parts, ignore_index=True)
    df.insert(0, "epoch", np.asarray(epochs)[df.network.to_numpy() // n_nets])
    df["network"] = df.network % n_nets
    return df.sort_values(["epoch", "network"], kind="stable").reset_index(drop=True)


# ============================== representations ==============================


def capture(model, params: Any, x: Array) -> dict[str, Array]:
    """Representations of one network on a batch: each top-level layer's output, flattened.

    Uses Flax's `capture_intermediates`. Hidden layers of models with an `activation` field
    (MLP, CNN) are reported after the activation (what the next layer reads, before pooling);
    the last layer gives the logits; other modules (ViT blocks) give their output as is.

    Args:
      model: a `flax.linen` module of `jaxweights.models`.
      params: one network's parameters (nested, as `model.init` makes them).
      x: standardised inputs `(n, H, W, C)`.

    Returns:
      `{"input": (n, H·W·C), layer: (n, features), ...}` in the order the layers run.
    """
    _, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    names = [k for k in inter if k != "__call__"]
    act = getattr(model, "activation", None)
    from jaxweights.models import ACTIVATIONS

    out = {INPUT: x.reshape(x.shape[0], -1).astype(jnp.float32)}
    for i, name in enumerate(names):
        h = inter[name]["__call__"][0]
        if act is not None and i < len(names) - 1:
            h = ACTIVATIONS[act](h)
        out[name] = h.reshape(h.shape[0], -1).astype(jnp.float32)
    return out


def capture_zoo(model, params_N: Any, x: Array, chunk: int | None = None) -> dict[str, Array]:
    """`capture` vmapped over the networks axis, `chunk` networks at a time: `{layer: (N, n, f)}`."""
    params_N = rundir.unflatten_params(params_N) if "/" in next(iter(params_N)) else params_N
    chunk = chunk or default_chunk()
    names: list[str] = []

    def one(p):  # a list keeps the layers in depth order (a dict pytree would come back sorted)
        reps = capture(model, p, x)
        names[:] = list(reps)
        return [reps[k] for k in names]

    out = jax.lax.map(one, params_N, batch_size=chunk)
    return dict(zip(names, out))


# ============================== CKA ==============================

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 products on GPU/TPU too (their default is TF32/bf16 passes)


def gram(x_nxd: Array) -> Array:
    """Linear Gram matrix `Xc Xcᵀ` of one representation `(n, d)`, features centred first (at least float32).

    Each feature's mean over the n examples is subtracted before the products: `Xc Xcᵀ = H X Xᵀ H`
    in exact arithmetic (what linear CKA's HSIC centres anyway), but without the cancellation of
    centring a Gram matrix built from large uncentred features afterwards (a float32 feature mean
    of 1e3 left linear and unbiased CKA wrong by 0.1 to NaN). Unbiased HSIC is invariant to a
    constant offset of the features, so centring changes it only by rounding.
    """
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    x = x - x.mean(0, keepdims=True)
    return jnp.einsum("nd,md->nm", x, x, precision=HIGHEST)  # no explicit transpose: one batched matmul when vmapped


def _center(k):
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_biased(k: Array, l: Array) -> Array:
    """Biased HSIC `<HKH, HLH>` (unnormalised; the (n−1)² cancels in CKA) of two Gram matrices."""
    return (_center(k) * _center(l)).sum()


def _unbiased_form(k):
    """A(K) with `hsic_unbiased(K, L) = <A(K), L̃>` for any symmetric L (L̃: L with a zero diagonal)."""
    n = k.shape[0]
    kt = k * (1.0 - jnp.eye(n, dtype=k.dtype))
    r = kt.sum(1)
    a = kt + r.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * r[:, None]
    return a * (1.0 - jnp.eye(n, dtype=k.dtype)) / (n * (n - 3))


def hsic_unbiased(k: Array, l: Array) -> Array:
    """Unbiased HSIC estimator of Song et al. 2012 (eq. 5), as used by Nguyen et al. 2021.

    `[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))`, K̃, L̃ with zero diagonals.
    """
    n = l.shape[0]
    return (_unbiased_form(k) * (l * (1.0 - jnp.eye(n, dtype=l.dtype)))).sum()


def cka_linear(x: Array, y: Array) -> Array:
    """Linear CKA of two representations `(n, d1)`, `(n, d2)` of the same n examples (Kornblith et al. 2019)."""
    k, l = gram(x), gram(y)
    return hsic_biased(k, l) / jnp.sqrt(hsic_biased(k, k) * hsic_biased(l, l))


def cka_minibatch(x: Array, y: Array, batch_size: int) -> Array:
    """Minibatch CKA with the unbiased HSIC (Nguyen et al. 2021): HSIC₁ averaged over minibatches.

    The n examples are split into `n // batch_size` consecutive minibatches (a remainder is
    dropped); `CKA = mean HSIC₁(K, L) / sqrt(mean HSIC₁(K, K) · mean HSIC₁(L, L))`. Each minibatch's
    features are centred with that minibatch's means before its Gram matrix (`gram`): HSIC₁ is
    invariant to a constant feature offset, so this changes it only by removing rounding error.
    """
    gx, gy = _minibatch_grams(x, batch_size), _minibatch_grams(y, batch_size)
    kl = jax.vmap(hsic_unbiased)(gx, gy).mean()
    kk = jax.vmap(hsic_unbiased)(gx, gx).mean()
    ll = jax.vmap(hsic_unbiased)(gy, gy).mean()
    return kl / jnp.sqrt(kk * ll)


def _minibatch_grams(x, batch_size):
    """Gram matrices `(b, B, B)` of consecutive minibatches, each centred with its own feature means."""
    b = x.shape[0] // batch_size
    xb = x[: b * batch_size].reshape(b, batch_size, -1)
    return jax.vmap(gram)(xb)


def _forms(g_MxBxBxB, unbiased: bool):
    """Flattened left/right factors so that a pairwise HSIC matrix is one matmul.

    Input: Gram matrices `(M, b, B, B)` of M representations over b minibatches (b = 1 and the
    biased HSIC for linear CKA). Returns `(left, right)`, each `(M, b·B·B)`, with
    `HSIC(i, j) = left[i] · right[j] / b`.
    """
    m, b, n, _ = g_MxBxBxB.shape
    if unbiased:
        left = jax.vmap(jax.vmap(_unbiased_form))(g_MxBxBxB)
        right = g_MxBxBxB * (1.0 - jnp.eye(n, dtype=g_MxBxBxB.dtype))
    else:
        left = right = jax.vmap(jax.vmap(_center))(g_MxBxBxB)
    return left.reshape(m, -1), right.reshape(m, -1)


def _cka_forms(x_nxd: Array, unbiased: bool, batch_size: int) -> tuple[Array, Array]:
    """`(left, right)` vectors of one representation with `HSIC(x, y) ∝ left(x) · right(y)`."""
    g = _minibatch_grams(x_nxd, batch_size) if unbiased else gram(x_nxd)[None]
    left, right = _forms(g[None], unbiased)
    return left[0], right[0]


def _normalised(h: Array) -> Array:
    d = jnp.diagonal(h)
    return h / jnp.sqrt(jnp.outer(d, d))


def cka_matrix(grams: Array, unbiased: bool = False) -> Array:
    """CKA between every pair of M representations of the same examples, from their Gram matrices.

    Args:
      grams: `(M, B, B)` Gram matrices (linear CKA), or `(M, b, B, B)` per-minibatch Gram matrices
        for minibatch CKA.
      unbiased: use the unbiased HSIC (minibatch CKA of Nguyen et al. 2021); else the biased HSIC
        of linear CKA (Kornblith et al. 2019).

    Returns:
      `(M, M)` CKA matrix (symmetric, ones on the diagonal up to rounding).
    """
    g = grams if grams.ndim == 4 else grams[:, None]
    left, right = _forms(g, unbiased)
    return _normalised(jnp.matmul(left, right.T, precision=HIGHEST))


# ============================== modularity ==============================


def knn_graph(x_nxd: Array, k: int = 3) -> Array:
    """Symmetrised k-NN graph by cosine similarity (Lu et al. 2022): A = (A_dir + A_dirᵀ)/2.

    `A_dir[i, j] = 1` when j is one of the k samples most cosine-similar to i (i itself excluded).
    """
    idx = knn_indices(x_nxd, k)
    n = idx.shape[0]
    a_dir = jnp.zeros((n, n), jnp.float32).at[jnp.arange(n)[:, None], idx].set(1.0)
    return (a_dir + a_dir.T) / 2


def modularity(a_nxn: Array, labels_n: Array, num_classes: int) -> Array:
    """Newman modularity Q = 1/(2m) Σ_ij [A_ij − k_i k_j/(2m)] δ(c_i, c_j) of a weighted undirected graph.

    Equals `networkx.algorithms.community.modularity(G, communities, weight="weight")` for the
    graph with adjacency `A` (Newman 2006, Lu et al. 2022).
    """
    c = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32)
    deg = a_nxn.sum(1)
    two_m = deg.sum()
    within = jnp.einsum("ic,ij,jc->", c, a_nxn, c)
    return (within - ((c.T @ deg) ** 2).sum() / two_m) / two_m


def knn_indices(x_nxd: Array, k: int = 3) -> Array:
    """Indices `(n, k)` of each sample's k most cosine-similar other samples."""
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    # Each row scaled by its largest |entry| first: the squares of a blown-up network's activations
    # (above ~1e19) would overflow float32 and turn every cosine into 0 (ties, an artefact).
    x = x / jnp.maximum(jnp.abs(x).max(1, keepdims=True), jnp.finfo(x.dtype).tiny)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = jnp.einsum("nd,md->nm", x, x, precision=HIGHEST)
    s = jnp.where(jnp.eye(s.shape[0], dtype=bool), -jnp.inf, s)
    return jax.lax.top_k(s, k)[1]


# Why a representation's modularity (and linear probe) is NaN: `representation_status` codes.
OK, NO_SIGNAL, NON_FINITE = 0, 1, 2
REASONS = {
    OK: "",
    NO_SIGNAL: "no signal: every probe example has the same representation (dead or constant layer)",
    NON_FINITE: "non-finite representation (NaN or inf activations: a blown-up network)",
}


def representation_status(x_nxd: Array) -> Array:
    """`OK`, `NO_SIGNAL` or `NON_FINITE` for one representation `(n, d)` (an int32 scalar).

    No signal: the examples' representations are all equal (spread over examples at most 1e-6 of
    the largest |activation|; an all-zero layer counts). Its k-NN graph then only reflects how ties
    are broken (modularity −0.22 on MNIST, an artefact), so readings of it are NaN.
    """
    x = x_nxd.astype(jnp.promote_types(x_nxd.dtype, jnp.float32))
    spread = (x.max(0) - x.min(0)).max()
    return jnp.where(
        ~jnp.isfinite(x).all(), NON_FINITE, jnp.where(spread <= 1e-6 * jnp.abs(x).max(), NO_SIGNAL, OK)
    ).astype(jnp.int32)


def knn_modularity(x_nxd: Array, labels_n: Array, num_classes: int, k: int = 3) -> Array:
    """Modularity of the label communities in the cosine k-NN graph of one representation.

    NaN when the representation has no signal or is non-finite (`representation_status`).

    Equals `modularity(knn_graph(x, k), labels)` but works on the `(n, k)` neighbour lists
    instead of an n × n adjacency (no scatter, which is slow when vmapped on CPU): with
    A = (A_dir + A_dirᵀ)/2, 2m = n·k, Σ_ij A_ij δ(c_i, c_j) = #{(i, j ∈ nn(i)): c_i = c_j},
    and the degree total of a class is (k·n_c + #{neighbour entries of class c})/2.
    """
    idx = knn_indices(x_nxd, k)
    n = idx.shape[0]
    nb = labels_n[idx]  # (n, k) labels of the neighbours
    two_m = n * k
    within = (nb == labels_n[:, None]).sum()
    n_c = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32).sum(0)
    in_c = jax.nn.one_hot(nb.reshape(-1), num_classes, dtype=jnp.float32).sum(0)
    deg_c = (k * n_c + in_c) / 2
    q = (within - (deg_c**2).sum() / two_m) / two_m
    return jnp.where(representation_status(x_nxd) == OK, q, jnp.nan)


def modularity_curves(
    model, params_N: Any, x: Array, labels: Array, num_classes: int, k: int = 3, chunk: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Modularity over depth of N networks: `(layers, q_NxL)`, layers `["input", ...]` in depth order."""
    reps = capture_zoo(model, params_N, x, chunk)
    f = jax.jit(jax.vmap(lambda r: knn_modularity(r, labels, num_classes, k)))
    return list(reps), np.stack([np.asarray(f(r)) for r in reps.values()], 1)


def pruning_candidates(q_L: np.ndarray, layers: Sequence[str], tol: float = 0.01) -> list[str]:
    """Hidden layers where the modularity curve plateaus or drops (Lu et al. 2022).

    Args:
      q_L: modularity of `["input", hidden..., output]` representations, in depth order.
      layers: their names (same order).
      tol: a hidden layer is a candidate when its modularity exceeds the previous one by less
        than `tol` (a plateau) or falls below it (a drop).

    Returns:
      The candidate layer names (never the input or the output layer).
    """
    q = np.asarray(q_L, np.float64)
    return [layers[i] for i in range(1, len(layers) - 1) if np.isfinite(q[i]) and q[i] - q[i - 1] < tol]


# ============================== linear probes ==============================


def train_probe(
    x_nxd: Array, y_n: Array, num_classes: int, steps: int = 300, learning_rate: float = 0.05, l2: float = 1e-4
) -> tuple[Array, Array, Array, Array]:
    """Softmax-regression readout on one layer's activations, trained with optax (Adam, full batch).

    Features are standardised with the training set's mean and std first.

    Returns:
      `(w, b, mu, sd)`: weights `(d, C)`, bias `(C,)`, the standardisation `(d,)` `(d,)`.
    """
    x = x_nxd.astype(jnp.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    d = x.shape[1]
    params = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = xs @ p[0] + p[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_n).mean() + l2 * (p[0] ** 2).sum()

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params[0], params[1], mu, sd


def probe_predict(probe, x_nxd: Array) -> Array:
    """Class predicted by a probe `(w, b, mu, sd)` for each row of `x`."""
    w, b, mu, sd = probe
    return jnp.argmax(((x_nxd - mu) / sd) @ w + b, -1)


def plane_points(x_a: Array, x_b: Array, x_c: Array, resolution: int = 16, margin: float = 0.1) -> Array:
    """Images on the plane through three images: `a + α(b − a) + β(c − a)`, α, β on a grid.

    α and β run over `resolution` points in [−margin, 1 + margin], so the three images sit
    inside the grid (Sharon & Dar 2024, after Somepalli et al. 2022). Returns `(resolution², ...)`.
    """
    t = jnp.linspace(-margin, 1 + margin, resolution)
    al, be = jnp.meshgrid(t, t, indexing="ij")
    al, be = al.reshape(-1, *([1] * x_a.ndim)), be.reshape(-1, *([1] * x_a.ndim))
    return x_a[None] + al * (x_b - x_a)[None] + be * (x_c - x_a)[None]


def choose_triples(labels: np.ndarray, num_planes: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """`num_planes` triples of probe indices with three different labels each (seeded).

    Each triple draws three distinct classes among those present, then one example of each: no
    rejection loop, so it ends even when classes are missing.

    Raises:
      DynamicsError: fewer than three classes among `labels` (naming the missing ones).
    """
    labels = np.asarray(labels).reshape(-1)
    present = np.unique(labels)
    if len(present) < 3:
        universe = range(num_classes) if num_classes else ()
        missing = [c for c in universe if c not in set(present.tolist())]
        raise DynamicsError(
            f"probe labels: decision-region planes need examples of 3 different classes; the probe set "
            f"has only class(es) {present.tolist()}" + (f" (missing: {missing})" if missing else "")
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_planes):
        cls = rng.choice(present, 3, replace=False)
        out.append([rng.choice(np.flatnonzero(labels == c)) for c in cls])
    return np.asarray(out, np.int64).reshape(-1, 3)


# ============================== a whole run ==============================


def run_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    """The config of a run directory: `config.json` over `config.default_config()`.

    Top-level fields added to the defaults after the run was trained keep their default value;
    sections (`model`) are taken whole from the run, since their fields depend on the model.
    """
    from jaxweights import config as config_lib

    def value(v):
        if isinstance(v, dict):
            return ml_collections.ConfigDict({k: value(x) for k, x in v.items()})
        return tuple(value(x) for x in v) if isinstance(v, list) else v

    c = config_lib.default_config()
    with c.unlocked():
        for k, v in rundir.read_config(Path(run_dir) / "config.json").items():
            c[k] = value(v)
    return c


def probe_data(
    run_dir: str | Path, probe_size: int = 500, data_dir: str | None = None, model: Any = None, seed: int = 0
):
    """The model and standardised probe data of a run: `(setup, x_probe, y_probe, x_eval, y_eval)`.

    The probe set is a seeded class-stratified draw of `probe_size` images from the whole test split
    (classes in proportion to their frequency, each present class at least once); the held-out set
    for probe accuracy a second such draw of `probe_size` (fewer if the split is smaller) from the
    remaining test images. Never the first images: a split stored grouped by class would give
    one-class sets. `model` is the Flax module of a run trained with your own module
    (`train_and_evaluate(..., model=...)`); other runs rebuild theirs from the config.
    """
    from jaxweights import run as run_lib
    from jaxweights import train as train_lib

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if config.model.get("name") == "custom" and model is None:
        raise DynamicsError(
            f"{run_dir}: trained with your own module {config.model.get('module', '')}; pass it as "
            "model= (write_dynamics, analyze_workdir) to capture its representations"
        )
    with config.unlocked():
        if data_dir:
            config.data_dir = str(data_dir)
        config.max_test = 0  # the whole test split: the probe and held-out sets are drawn from it below
    ds = run_lib.load_dataset(config)
    setup = run_lib.make_setup(config, ds, model)
    n = ds.x_test.shape[0]
    if n < probe_size + 10:
        raise DynamicsError(f"probe_size: {probe_size} needs more than the {n} test images")
    y = np.asarray(ds.y_test)
    probe = data_lib.stratified_indices(y, probe_size, seed=seed)
    rest = np.setdiff1d(np.arange(n), probe)
    held = rest[data_lib.stratified_indices(y[rest], min(probe_size, len(rest)), seed=seed + 1)]
    xp = train_lib.normalize(setup, jnp.asarray(ds.x_test[probe]))
    xe = train_lib.normalize(setup, jnp.asarray(ds.x_test[held]))
    return setup, xp, jnp.asarray(y[probe], jnp.int32), xe, jnp.asarray(y[held], jnp.int32)


def _final_metrics(run_dir: Path) -> pd.DataFrame:
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.epoch == m.epoch.max()].set_index("network").sort_index()


def network_masks(num_networks: int, optimal_N=None, exclude_N=None) -> tuple[np.ndarray, np.ndarray]:
    """Checked boolean `(optimal_N, exclude_N)` of a zoo of `num_networks`; an excluded network is never optimal.

    The dynamics never decide which networks are optimal: the caller passes the labels (the one
    definition is `jaxweights.groups`). `optimal_N=None`: every network not excluded;
    `exclude_N=None`: none excluded.
    """
    out = []
    for name, m, default in (("optimal_N", optimal_N, True), ("exclude_N", exclude_N, False)):
        m = np.full(num_networks, default) if m is None else np.asarray(m)
        if m.shape != (num_networks,) or m.dtype != bool:
            raise DynamicsError(
                f"{name}: a boolean mask of the {num_networks} networks is needed, got dtype {m.dtype}, shape {m.shape}"
            )
        out.append(m)
    return out[0] & ~out[1], out[1]


def representation_dynamics(
    setup,
    snapshots,
    epochs,
    x_probe,
    y_probe,
    x_eval,
    y_eval,
    *,
    k: int = 3,
    cka_batch: int = 100,
    probe_steps: int = 300,
    num_planes: int = 4,
    resolution: int = 16,
    chunk: int | None = None,
    memory_mb: int = 1024,
    exclude_N: np.ndarray | None = None,
):
    """CKA, probes and modularity of every network, layer and snapshot.

    Networks are processed in blocks whose activations (all layers, all epochs) fit in
    `memory_mb`; only each network's results and the final-epoch CKA factors (kept in temporary
    files) outlive a block. See `RepresentationDynamics` to feed the networks in parts (the
    chunks of a chunked run).

    Args:
      setup: the run's `train.Setup` (its `model` and `num_classes` are used).
      snapshots: per-epoch flat parameters; epochs: their epochs.
      x_probe, y_probe: the standardised probe set (n images) and labels.
      x_eval, y_eval: held-out images for probe accuracy.
      k: neighbours of the modularity graph.
      cka_batch: minibatch size of the unbiased-HSIC CKA.
      probe_steps: Adam steps of each linear probe.
      num_planes, resolution: decision-region planes and their grid size.
      chunk: networks vmapped at once (`jax.lax.map` batch size; default `default_chunk()`).
      memory_mb: budget for the captured activations of one block of networks.
      exclude_N: boolean `(N,)`, networks left out (diverged, exploded, not learned, ...) whose network × network CKA rows and
        columns are NaN (see `RepresentationDynamics.finish`).

    Returns:
      `(cka, modularity_df, probes_df, regions)`: `cka` a dict of arrays (see `write_dynamics`),
      `modularity_df` rows `network, epoch, layer, depth, modularity`, `probes_df` rows
      `network, epoch, layer, depth, probe_acc, probe_train_acc, region_agreement_prev,
      region_agreement_final`, `regions` `(N, L, E, E)` decision-region agreement.
    """
    with RepresentationDynamics(
        setup,
        epochs,
        x_probe,
        y_probe,
        x_eval,
        y_eval,
        k=k,
        cka_batch=cka_batch,
        probe_steps=probe_steps,
        num_planes=num_planes,
        resolution=resolution,
        chunk=chunk,
        memory_mb=memory_mb,
    ) as acc:
        acc.add(snapshots)
        return acc.finish(exclude_N)


class RepresentationDynamics:
    """Streams networks through the representation analyses; `finish()` assembles the results.

    `add(snapshots)` takes per-epoch flat parameters of any number of networks (appended after
    those already added) and processes them in blocks of `block_size(...)` networks, so memory
    holds one block's activations at a time. Network × network CKA needs every network's
    final-epoch representation: its CKA factors (`_cka_forms`, a centred Gram matrix of the probe
    set per layer) are written to a temporary folder and multiplied block by block in `finish()`.
    Use as a context manager (the temporary folder is removed on exit).
    """

    def __init__(
        self,
        setup,
        epochs,
        x_probe,
        y_probe,
        x_eval,
        y_eval,
        *,
        k: int = 3,
        cka_batch: int = 100,
        probe_steps: int = 300,
        num_planes: int = 4,
        resolution: int = 16,
        chunk: int | None = None,
        memory_mb: int = 1024,
        seed: int = 0,
    ):
        import tempfile

        self.model, self.c = setup.model, setup.num_classes
        self.epochs = list(epochs)
        self.chunk = chunk or default_chunk()
        self.memory = int(memory_mb) << 20
        labels = np.asarray(y_probe)
        xp_np = np.asarray(x_probe)
        planes = jnp.concatenate(
            [
                plane_points(*(jnp.asarray(xp_np[i]) for i in t), resolution=resolution)
                for t in choose_triples(labels, num_planes, seed, self.c)
            ]
        )
        self.batch = jnp.concatenate([x_probe, x_eval, planes])
        self.n, self.ne = n, ne = x_probe.shape[0], x_eval.shape[0]
        self.bs = bs = n // max(n // cka_batch, 1)
        c, chunk = self.c, self.chunk

        def per_network(r_E):  # one network, one layer, all epochs: (E, n_total, f)
            x = r_E[:, :n]
            lin = cka_matrix(jax.vmap(gram)(x))
            unb = cka_matrix(jax.vmap(lambda a: _minibatch_grams(a, bs))(x), True)
            mod = jax.vmap(lambda a: knn_modularity(a, y_probe, c, k))(x)
            return lin, unb, mod, jax.vmap(representation_status)(x)

        def probe_one(r):  # one network, one layer, one epoch: (n_total, f)
            probe = train_probe(r[:n], y_probe, c, probe_steps)
            ok = jnp.isfinite(r).all()  # NaN/inf activations: NaN readings, not argmax-of-NaN accuracies
            nan_if_bad = lambda a: jnp.where(ok, a, jnp.nan)
            return (
                nan_if_bad((probe_predict(probe, r[:n]) == y_probe).mean()),
                nan_if_bad((probe_predict(probe, r[n : n + ne]) == y_eval).mean()),
                jnp.where(ok, probe_predict(probe, r[n + ne :]), -1),
            )

        def layers_one(xs):  # one network's final representations of every layer
            out = []
            for unbiased in (False, True):
                lr = [_cka_forms(x[:n], unbiased, bs) for x in xs]
                left, right = jnp.stack([a for a, _ in lr]), jnp.stack([b for _, b in lr])
                out.append(_normalised(jnp.matmul(left, right.T, precision=HIGHEST)))
            return tuple(out)

        self._dyn = jax.jit(lambda r: jax.lax.map(per_network, r, batch_size=chunk))
        self._probe = jax.jit(lambda r: jax.lax.map(probe_one, r, batch_size=chunk))
        self._forms = jax.jit(
            lambda x, unbiased: jax.lax.map(lambda a: _cka_forms(a, unbiased, bs), x, batch_size=chunk),
            static_argnums=1,
        )
        self._layers = jax.jit(lambda xs: jax.lax.map(layers_one, xs, batch_size=chunk))
        self._tmp = tempfile.TemporaryDirectory(prefix="jaxweights-cka-")
        self.names: list[str] | None = None
        self.parts: list[dict[str, np.ndarray]] = []  # per block: per-network results
        self.form_files: list[tuple[int, dict]] = []  # per block: (networks, {(layer, unbiased): (left, right)})
        self.num_networks = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()

    def block_size(self, snapshots) -> int:
        """Networks per block: the captured activations of all layers and epochs within `memory_mb`."""
        one = rundir.unflatten_params({p: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for p, v in snapshots[0].items()})
        shapes = jax.eval_shape(lambda p: capture(self.model, p, self.batch), one)
        per_net = sum(int(np.prod(s.shape)) * 4 for s in shapes.values()) * len(snapshots) * 2  # + one stacked copy
        if per_net > self.memory:
            log.warning(
                "representations: one network's activations (all layers, %d snapshots, %d images) take "
                "%.0f MiB, more than memory_mb=%d; processing one network at a time",
                len(snapshots),
                self.batch.shape[0],
                per_net / 2**20,
                self.memory >> 20,
            )
        return max(1, min(self.memory // per_net, next(iter(snapshots[0].values())).shape[0]))

    def add(self, snapshots: Sequence[Mapping[str, Any]]) -> None:
        """Processes the networks of `snapshots` (per-epoch flat parameters, networks axis first)."""
        if len(snapshots) != len(self.epochs):
            raise DynamicsError(f"{len(snapshots)} snapshots for {len(self.epochs)} epochs")
        total = next(iter(snapshots[0].values())).shape[0]
        b = self.block_size(snapshots)
        if b < total:
            log.info("representations: %d networks in blocks of %d (memory_mb=%d)", total, b, self.memory >> 20)
        for s in range(0, total, b):
            self._add_block([{p: v[s : s + b] for p, v in snap.items()} for snap in snapshots])

    def _add_block(self, snapshots) -> None:
        n, ne = self.n, self.ne
        reps_e = [capture_zoo(self.model, params, self.batch, self.chunk) for params in snapshots]
        names = list(reps_e[0])
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise DynamicsError(f"layers {names} differ from the earlier networks' {self.names}")
        L, E = len(names), len(snapshots)
        N = reps_e[0][names[0]].shape[0]
        mod, probe_acc, probe_train = (np.zeros((N, E, L)) for _ in range(3))
        status = np.zeros((N, E, L), np.int32)
        preds = np.zeros((N, L, E, self.batch.shape[0] - n - ne), np.int32)
        lin_epochs, unb_epochs = np.zeros((N, L, E, E)), np.zeros((N, L, E, E))
        files = {}
        for li, name in enumerate(names):
            r = jnp.stack([reps_e[e][name] for e in range(E)], 1)  # (N, E, n_total, f)
            lin, unb, m, st = self._dyn(r)
            lin_epochs[:, li], unb_epochs[:, li], mod[:, :, li] = np.asarray(lin), np.asarray(unb), np.asarray(m)
            status[:, :, li] = np.asarray(st)
            for unbiased in (False, True):
                left, right = self._forms(r[:, -1, :n], unbiased)
                stem = Path(self._tmp.name) / f"{len(self.form_files)}_{li}_{int(unbiased)}"
                np.save(f"{stem}_l.npy", np.asarray(left))
                if unbiased:
                    np.save(f"{stem}_r.npy", np.asarray(right))
                files[li, unbiased] = (f"{stem}_l.npy", f"{stem}_r.npy" if unbiased else f"{stem}_l.npy")
            if name != INPUT:
                tr, te, pr = self._probe(r.reshape(N * E, *r.shape[2:]))
                probe_train[:, :, li] = np.asarray(tr).reshape(N, E)
                probe_acc[:, :, li] = np.asarray(te).reshape(N, E)
                preds[:, li] = np.asarray(pr).reshape(N, E, -1)
            del r
        lin_layers, unb_layers = (np.asarray(a) for a in self._layers([reps_e[-1][name] for name in names]))
        regions = (preds[:, :, :, None, :] == preds[:, :, None, :, :]).mean(-1)  # (N, L, E, E)
        bad = (preds < 0).any(-1)  # (N, L, E): a probe of non-finite activations
        regions[bad[:, :, :, None] | bad[:, :, None, :]] = np.nan
        self.parts.append(
            dict(
                mod=mod,
                status=status,
                probe_acc=probe_acc,
                probe_train=probe_train,
                regions=regions,
                linear_epochs=lin_epochs,
                unbiased_epochs=unb_epochs,
                linear_layers=lin_layers,
                unbiased_layers=unb_layers,
            )
        )
        self.form_files.append((N, files))
        self.num_networks += N

    def _networks_cka(self, li: int, unbiased: bool) -> np.ndarray:
        """`(N, N)` CKA of layer `li` between all networks, from the factor files, block by block."""
        N = self.num_networks
        h = np.zeros((N, N))
        oi = 0
        for ni, fi in self.form_files:
            left = np.load(fi[li, unbiased][0], mmap_mode="r")
            oj = 0
            for nj, fj in self.form_files:
                right = np.load(fj[li, unbiased][1], mmap_mode="r")
                with np.errstate(invalid="ignore", over="ignore"):  # blown-up networks: NaN, as in JAX
                    h[oi : oi + ni, oj : oj + nj] = np.asarray(left, np.float64) @ np.asarray(right, np.float64).T
                oj += nj
            oi += ni
        d = np.diagonal(h)
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead or blown-up layer: NaN, as in-JAX CKA
            return h / np.sqrt(np.outer(d, d))

    def finish(self, exclude_N: np.ndarray | None = None):
        """`(cka, modularity_df, probes_df, regions)` of every network added (see `representation_dynamics`).

        `{linear,unbiased}_networks` rows and columns of the networks in `exclude_N` are NaN, as are
        those of a network whose last-epoch representation is non-finite: a blown-up network gets
        no CKA value that looks real. Each entry is computed from its two networks alone (float64
        products), so the other networks' values are the same with or without them.
        """
        if not self.parts:
            raise DynamicsError("no networks were added")
        _, exclude_N = network_masks(self.num_networks, None, exclude_N)
        cat = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        names, epochs = self.names, self.epochs
        N, L, E = self.num_networks, len(names), len(epochs)
        cka = {
            "layers": np.asarray(names),
            "epochs": np.asarray(epochs),
            "linear_layers": cat["linear_layers"],
            "unbiased_layers": cat["unbiased_layers"],
            "linear_epochs": cat["linear_epochs"],
            "unbiased_epochs": cat["unbiased_epochs"],
            "linear_networks": np.stack([self._networks_cka(li, False) for li in range(L)]),
            "unbiased_networks": np.stack([self._networks_cka(li, True) for li in range(L)]),
        }
        bad = exclude_N | (cat["status"][:, -1] == NON_FINITE).any(1)
        for key in ("linear_networks", "unbiased_networks"):
            cka[key][:, bad, :] = np.nan
            cka[key][:, :, bad] = np.nan
        regions = cat["regions"]
        grid = pd.MultiIndex.from_product([range(N), epochs, range(L)], names=["network", "epoch", "depth"]).to_frame(
            index=False
        )
        grid.insert(2, "layer", np.asarray(names)[grid.depth.to_numpy()])
        codes = cat["status"].reshape(-1)
        mod_df = grid.assign(modularity=cat["mod"].reshape(-1), reason=[REASONS[c] for c in codes])
        for code in (NO_SIGNAL, NON_FINITE):
            hit = mod_df[codes == code]
            if len(hit):
                log.warning(
                    "modularity NaN for %d of %d (network, epoch, layer) representations, %s; e.g. network "
                    "%d, epoch %d, layer %s",
                    len(hit),
                    len(mod_df),
                    REASONS[code],
                    hit.network.iloc[0],
                    hit.epoch.iloc[0],
                    hit.layer.iloc[0],
                )
        pr = grid.assign(probe_acc=cat["probe_acc"].reshape(-1), probe_train_acc=cat["probe_train"].reshape(-1))
        prev = np.full((N, E, L), np.nan)
        if E > 1:
            prev[:, 1:] = np.stack([regions[:, :, e, e - 1] for e in range(1, E)], 1)
        final = np.moveaxis(regions[:, :, :, -1], 1, 2)
        pr = pr.assign(region_agreement_prev=prev.reshape(-1), region_agreement_final=final.reshape(-1))
        pr = pr[pr.layer != INPUT].reset_index(drop=True)
        return cka, mod_df, pr, regions


def write_dynamics(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    optimal_N: np.ndarray | None = None,
    exclude_N: np.ndarray | None = None,
    optimal_rule: str | None = None,
    probe_size: int = 500,
    k: int = 3,
    cka_batch: int = 100,
    probe_steps: int = 300,
    num_planes: int = 4,
    resolution: int = 16,
    tol: float = 0.01,
    data_dir: str | None = None,
    figures: bool = True,
    chunk: int | None = None,
    memory_mb: int = 1024,
    model: Any = None,
    seed: int = 0,
) -> Path:
    """Computes the learning dynamics of a run directory and writes them into `out_dir`.

    Files written (a run with static groups is handled per group, in `out_dir/groups/<NN>/`):

        rwc.csv                network, layer, depth, epoch, rwc_l1_ratio, rwc_mean_elementwise, zero_weights
        stats_over_epochs.csv  epoch, network, layer, statistic, value, undefined
        modularity.csv         network, epoch, layer, depth, modularity, reason (why the modularity
                               is NaN: no signal or non-finite representation; empty when defined),
                               candidate (last epoch's pruning candidates per network)
        pruning.json           {"layers": zoo-level candidates, "curve": mean final modularity per
                               layer of the optimal networks, "networks": their indices}
        cka.npz                layers, epochs, {linear,unbiased}_layers (N, L, L) at the last
                               epoch, {linear,unbiased}_epochs (N, L, E, E), {linear,unbiased}_networks (L, N, N)
        probes.csv             network, epoch, layer, depth, probe_acc, probe_train_acc,
                               region_agreement_prev, region_agreement_final
        probe_regions.npz      agreement (N, L, E, E) of the probes' decision regions
        figures/*.png + *.csv  (with `figures=True`)

    Args:
      run_dir: a run directory of `jaxweights train` (per-epoch checkpoints kept).
      out_dir: where to write.
      optimal_N: boolean `(N,)`, the optimal networks, as the caller defines them (`jaxweights.groups`);
        the summaries (`dynamics.json`, pruning curve, figures) are over them. None: every network
        not excluded.
      exclude_N: boolean `(N,)`, the networks the study leaves out (diverged, exploded, not learned,
        below `--min_accuracy`: `analysis.network_groups`); they are in no across-network summary
        or figure and get NaN network × network CKA. None: none. Their own per-network rows
        stay in the tables.
      optimal_rule: words for the rule behind `optimal_N`, shown in the report.
      probe_size: probe images, a seeded class-stratified draw from the test split; a second draw
        from the other test images is held out for probe accuracy (`probe_data`).
      k: neighbours of the modularity graph (Lu et al. use 3).
      cka_batch: minibatch size of the unbiased-HSIC CKA.
      probe_steps: Adam steps per linear probe.
      num_planes, resolution: decision-region planes through image triples, grid points per side.
      tol: modularity gain below which a hidden layer is a pruning candidate.
      data_dir: data folder (default: the run's config).
      figures: also draw the figures.
      chunk: networks vmapped at once (default `default_chunk()`: 1 on CPU, 64 on accelerators).
      memory_mb: memory for captured activations; networks are processed in blocks that fit.
      model: the Flax module of a run trained with your own module (see `probe_data`).
      seed: of the probe and held-out draws and the decision-region triples' draw.

    A zoo trained in chunks is read one chunk's snapshots at a time; its `stats_over_epochs.csv`
    `hist_*` rows then use each chunk's own bin edges.

    Returns:
      `out_dir` as a Path.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.json").exists():
        raise DynamicsError(f"{run_dir}: no config.json (is this a `jaxweights train` run directory?)")
    groups = (
        sorted(p for p in (run_dir / "groups").glob("*") if (p / "config.json").exists())
        if (run_dir / "groups").is_dir()
        else []
    )
    if groups and not (run_dir / "checkpoints").is_dir():
        if optimal_N is not None or exclude_N is not None:
            raise DynamicsError(
                f"{run_dir}: a run with static groups; pass optimal_N/exclude_N per group, "
                f"calling write_dynamics on {run_dir}/groups/NN"
            )
        for g in groups:
            write_dynamics(
                g,
                out_dir / "groups" / g.name,
                probe_size=probe_size,
                k=k,
                cka_batch=cka_batch,
                probe_steps=probe_steps,
                num_planes=num_planes,
                resolution=resolution,
                tol=tol,
                data_dir=data_dir,
                figures=figures,
                chunk=chunk,
                memory_mb=memory_mb,
                model=model,
                seed=seed,
            )
        return out_dir
    dirs = snapshot_dirs(run_dir)
    given = optimal_N is not None
    if (given or exclude_N is not None) and (run_dir / "metrics.csv").exists():  # a wrong mask fails before minutes
        network_masks(_final_metrics(run_dir).shape[0], optimal_N, exclude_N)
    setup, xp, yp, xe, ye = probe_data(run_dir, probe_size, data_dir, model, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rwc_parts, stat_parts, epochs, offset = [], [], None, 0
    with contextlib.ExitStack() as stack:  # the CKA factor files go when this block ends
        for d in dirs:  # one chunk's snapshots in memory at a time
            e, snaps = _load_dir_snapshots(d)
            if len(snaps) < 2:
                raise DynamicsError(
                    f"{d}: only {len(snaps)} checkpoint(s); learning dynamics need per-epoch "
                    "snapshots (train with checkpoint_every=1, keep_checkpoints=0)"
                )
            if epochs is None:
                epochs = e
                acc = stack.enter_context(
                    RepresentationDynamics(
                        setup,
                        epochs,
                        xp,
                        yp,
                        xe,
                        ye,
                        k=k,
                        cka_batch=cka_batch,
                        probe_steps=probe_steps,
                        num_planes=num_planes,
                        resolution=resolution,
                        chunk=chunk,
                        memory_mb=memory_mb,
                        seed=seed,
                    )
                )
            _check_same_epochs(d, e, epochs)
            rwc_parts.append(relative_weight_change(snaps, epochs).assign(network=lambda t: t.network + offset))
            stat_parts.append(statistics_over_epochs(snaps, epochs).assign(network=lambda t: t.network + offset))
            acc.add(snaps)
            offset += next(iter(snaps[0].values())).shape[0]
            del snaps
        optimal_N, exclude_N = network_masks(acc.num_networks, optimal_N, exclude_N)
        cka, mod, probes, regions = acc.finish(exclude_N)
    rundir.write_csv(
        out_dir / "rwc.csv",
        pd.concat(rwc_parts).sort_values(["depth", "epoch", "network"], kind="stable").reset_index(drop=True),
    )
    rundir.write_csv(
        out_dir / "stats_over_epochs.csv",
        pd.concat(stat_parts).sort_values(["epoch", "network"], kind="stable").reset_index(drop=True),
    )
    layers = list(cka["layers"])
    last = mod[mod.epoch == epochs[-1]]
    curves = last.pivot(index="network", columns="depth", values="modularity").to_numpy()
    cand = {n: set(pruning_candidates(q, layers, tol)) for n, q in enumerate(curves)}
    mod["candidate"] = [(e == epochs[-1]) and (l in cand[n]) for n, e, l in zip(mod.network, mod.epoch, mod.layer)]
    rundir.write_csv(out_dir / "modularity.csv", mod)
    rule = optimal_rule or ("given by the caller" if given else "none given: every analysed network")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN layer (no signal anywhere): NaN, as it should
        mean_curve = np.nanmean(curves[optimal_N], 0) if optimal_N.any() else np.full(len(layers), np.nan)
    rundir.write_json(
        out_dir / "pruning.json",
        {
            "layers": pruning_candidates(mean_curve, layers, tol),
            "tol": tol,
            "depth_names": layers,
            "curve": [float(v) for v in mean_curve],
            "networks": np.flatnonzero(optimal_N).tolist(),
            "optimal_rule": rule,
        },
    )
    _write_npz(out_dir / "cka.npz", cka)
    _write_npz(
        out_dir / "probe_regions.npz",
        {"agreement": regions, "layers": np.asarray(layers), "epochs": np.asarray(epochs)},
    )
    rundir.write_csv(out_dir / "probes.csv", probes)
    from jaxweights.report import _finite  # strict JSON: NaN -> null

    rundir.write_json(
        out_dir / "dynamics.json",
        _finite(
            summarize(
                pd.read_csv(out_dir / "rwc.csv"),
                mod,
                probes,
                cka,
                optimal_N,
                pruning_candidates(mean_curve, layers, tol),
                exclude_N=exclude_N,
                optimal_rule=rule,
            )
        ),
    )
    if figures:
        write_figures(out_dir, optimal_N, exclude_N)
    return out_dir


def _spearman(x, y) -> float:
    """`claims.spearman`'s ρ over the pairs where both values are finite."""
    from jaxweights import claims

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return claims.spearman(x[ok], y[ok])[0]


def summarize(
    rwc: pd.DataFrame,
    mod: pd.DataFrame,
    probes: pd.DataFrame,
    cka: Mapping[str, np.ndarray],
    optimal_N: np.ndarray,
    candidates: Sequence[str],
    *,
    exclude_N: np.ndarray | None = None,
    optimal_rule: str = "given by the caller",
) -> dict:
    """The answers the report gives about a zoo's dynamics (`dynamics.json`), over its optimal networks.

    Args:
      rwc, mod, probes, cka: the tables of `write_dynamics`.
      optimal_N: boolean `(N,)` optimal networks, from the caller (`jaxweights.groups`); the
        dynamics have no rule of their own.
      candidates: the zoo-level pruning candidates.
      exclude_N: boolean `(N,)` networks left out of the study (diverged, exploded, not learned, ...) never summarised, even if marked optimal.
      optimal_rule: words for the rule behind `optimal_N`.

    Returns:
      `{"n_networks", "n_optimal", "n_excluded", "excluded", "optimal_rule", "rwc", "modularity",
      "cka", "probes"}`: per-layer tables (lists of records, depth order) and headline numbers:
      Spearman ρ of depth vs median RWC of the optimal networks at the first and last compared epoch
      (`later_layers_change_more` when both are positive), and of depth vs their mean final
      modularity (`modularity_rises_with_depth`). With no optimal network left every number is NaN.
    """
    good, exclude_N = network_masks(len(np.asarray(optimal_N)), optimal_N, exclude_N)
    g = set(np.flatnonzero(good).tolist())
    epochs = [int(e) for e in cka["epochs"]]
    layers = [str(l) for l in cka["layers"]]
    keys = ["layer", "depth", "epoch"]
    every = rwc.groupby(keys).rwc_l1_ratio.median().index  # all layers and epochs, even with no optimal network
    per = rwc[rwc.network.isin(g)].groupby(keys).rwc_l1_ratio.median().reindex(every).unstack("epoch")
    per = per.reset_index().sort_values("depth")
    e_first, e_last = per.columns[2], per.columns[-1]
    rwc_rows = [
        {
            "layer": row.layer,
            "depth": int(row.depth),
            "first_epoch": float(row[e_first]),
            "last_epoch": float(row[e_last]),
        }
        for _, row in per.iterrows()
    ]
    rho_first, rho_last = _spearman(per.depth, per[e_first]), _spearman(per.depth, per[e_last])
    final = mod[mod.epoch == epochs[-1]]
    curve = (
        final[final.network.isin(g)]
        .groupby(["depth", "layer"])
        .modularity.mean()
        .reindex(final.groupby(["depth", "layer"]).modularity.mean().index)
        .reset_index()
        .sort_values("depth")
    )
    rho_mod = _spearman(curve.depth, curve.modularity)
    idx = np.flatnonzero(good)
    nanmean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # no empty-slice warning
    cka_rows = []
    for li, l in enumerate(layers):
        m = cka["linear_networks"][li][np.ix_(idx, idx)]
        cka_rows.append(
            {
                "layer": l,
                "depth": li,
                "across_networks": nanmean(m[~np.eye(len(idx), dtype=bool)]),
                "first_vs_last_epoch": nanmean(cka["linear_epochs"][idx, li, 0, -1]),
            }
        )
    pr = probes[(probes.epoch == epochs[-1]) & probes.network.isin(g)]
    probe_rows = [
        {
            "layer": l,
            "depth": int(d),
            "probe_acc": float(v.probe_acc.mean()),
            "region_agreement_prev": float(v.region_agreement_prev.mean()),
        }
        for (d, l), v in pr.groupby(["depth", "layer"])
    ]
    return {
        "n_networks": int(len(good)),
        "n_optimal": int(good.sum()),
        "n_excluded": int(exclude_N.sum()),
        "excluded": np.flatnonzero(exclude_N).tolist(),
        "optimal_rule": optimal_rule,
        "epochs": epochs,
        "rwc": {
            "definition": "rwc_l1_ratio = ||w_t - w_{t-1}||_1 / ||w_{t-1}||_1, median of the optimal networks",
            "first_epoch": int(e_first),
            "last_epoch": int(e_last),
            "per_layer": rwc_rows,
            "rho_depth_first": rho_first,
            "rho_depth_last": rho_last,
            "later_layers_change_more": bool(rho_first > 0 and rho_last > 0),
        },
        "modularity": {
            "per_layer": [
                {"layer": row.layer, "depth": int(row.depth), "modularity": float(row.modularity)}
                for row in curve.itertuples()
            ],
            "rho_depth": rho_mod,
            "modularity_rises_with_depth": bool(rho_mod > 0),
            "pruning_candidates": list(candidates),
        },
        "cka": {"per_layer": cka_rows},
        "probes": {"per_layer": probe_rows},
    }


def report_sections(out_dir: str | Path, prefix: str = "") -> list:
    """Report sections (`jaxweights.report.Section`) for the dynamics written by `write_dynamics` to `out_dir`."""
    from jaxweights import report

    out_dir = Path(out_dir)
    s = rundir.read_config(out_dir / "dynamics.json")
    fig = lambda name: [p for p in sorted((out_dir / "figures").glob(name)) if p.suffix == ".png"]
    p = f"{prefix}: " if prefix else ""
    r, m = s["rwc"], s["modularity"]
    yes = lambda b: "yes" if b else "no"
    ex = s.get("excluded", [])
    head = (
        f"<p>Over the {s['n_optimal']} optimal of {s['n_networks']} networks ({report.esc(s['optimal_rule'])}); "
        + (
            f"{len(ex)} excluded (left out of the study: network{'s' if len(ex) > 1 else ''} "
            f"{', '.join(map(str, ex))}), left out of every summary and figure; "
            if ex
            else ""
        )
        + f"snapshots at epochs {', '.join(map(str, s['epochs']))}.</p>"
    )
    return [
        report.Section(
            p + "Learning dynamics: how much does each layer move?",
            head + f"<p>Relative weight change ({report.esc(r['definition'])}). Do later layers change more? "
            f"{yes(r['later_layers_change_more'])} (Spearman ρ of depth vs RWC: {report.fmt(r['rho_depth_first'])} "
            f"at epoch {r['first_epoch']}, {report.fmt(r['rho_depth_last'])} at epoch {r['last_epoch']}). "
            "Both definitions per network, layer and epoch are in <code>rwc.csv</code>.</p>"
            + report.table(pd.DataFrame(r["per_layer"]), ["layer", "first_epoch", "last_epoch"]),
            fig("rwc.png") + fig("stats_over_epochs.png"),
        ),
        report.Section(
            p + "Representations: CKA and linear probes",
            "<p>Linear CKA of each layer between optimal networks at the last epoch (how alike are seeds and "
            "hyperparameters?) and between the first and last snapshot of the same network (how far has the "
            "layer moved?); linear-probe accuracy on held-out images and decision-region agreement with the "
            "previous epoch. Every matrix is in <code>cka.npz</code>, every probe in <code>probes.csv</code>.</p>"
            + report.table(
                pd.DataFrame(s["cka"]["per_layer"]).merge(
                    pd.DataFrame(
                        s["probes"]["per_layer"], columns=["layer", "depth", "probe_acc", "region_agreement_prev"]
                    ),
                    on=["layer", "depth"],
                    how="left",
                ),
                ["layer", "across_networks", "first_vs_last_epoch", "probe_acc", "region_agreement_prev"],
            ),
            fig("cka_network*.png"),
        ),
        report.Section(
            p + "Modularity over depth and pruning candidates (Lu et al. 2022)",
            f"<p>Does modularity rise with depth? {yes(m['modularity_rises_with_depth'])} (Spearman ρ "
            f"{report.fmt(m['rho_depth'])}). Layers where the mean curve plateaus or drops: "
            f"{report.esc(', '.join(m['pruning_candidates']) or 'none')} "
            "(<code>jaxweights prune</code> removes them and retrains, to check what they were worth).</p>"
            + report.table(pd.DataFrame(m["per_layer"]), ["layer", "modularity"]),
            fig("modularity_depth.png"),
        ),
    ]


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    rundir.atomic_write_bytes(path, buf.getvalue())


# ============================== figures ==============================


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    rundir.atomic_write_bytes(path, buf.getvalue())


def plot_rwc(rwc: pd.DataFrame, good: np.ndarray, path: str | Path, column: str = "rwc_l1_ratio") -> pd.DataFrame:
    """RWC per layer over epochs, median of the optimal vs the other given networks (PNG + CSV of the plotted data).

    `good` marks the optimal networks; every other row passed in is drawn as "others" (the middle
    and suboptimal analysed networks; the caller drops excluded networks first).

    Returns:
      The plotted table `group, layer, epoch, median, q25, q75`.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    df = rwc.assign(group=np.where(np.asarray(good)[rwc.network.to_numpy()], "optimal", "others"))
    agg = (
        df.groupby(["group", "layer", "depth", "epoch"])[column]
        .agg(median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75))
        .reset_index()
    )
    layers = agg.sort_values("depth").layer.unique()
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, grp in zip(axes, ("optimal", "others")):
        for l in layers:
            d = agg[(agg.group == grp) & (agg.layer == l)]
            ax.plot(d.epoch, d["median"], marker="o", label=l)
            ax.fill_between(d.epoch, d.q25, d.q75, alpha=0.2)
        ax.set(
            title="optimal networks" if grp == "optimal" else "other analysed networks", xlabel="epoch", yscale="log"
        )
    axes[0].set_ylabel(column)
    axes[0].legend(fontsize=8)
    path = Path(path)
    _savefig(fig, path)
    rundir.write_csv(path.with_suffix(".csv"), agg)
    return agg


def plot_cka(cka: Mapping[str, np.ndarray], network: int, path: str | Path, kind: str = "linear") -> None:
    """CKA heatmaps of one network: layer × layer (last epoch) and epoch × epoch per layer (PNG + CSV)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    layers, epochs = list(cka["layers"]), list(cka["epochs"])
    ll, ee = cka[f"{kind}_layers"][network], cka[f"{kind}_epochs"][network]
    fig = Figure(figsize=(3.2 * (1 + len(layers)), 3), layout="constrained")
    axes = fig.subplots(1, 1 + len(layers))
    axes[0].imshow(ll, vmin=0, vmax=1, cmap="magma")
    axes[0].set(title="layer × layer", xticks=range(len(layers)), yticks=range(len(layers)))
    axes[0].set_xticklabels(layers, rotation=90, fontsize=7)
    axes[0].set_yticklabels(layers, fontsize=7)
    for ax, l, m in zip(axes[1:], layers, ee):
        ax.imshow(m, vmin=0, vmax=1, cmap="magma")
        ax.set(title=f"{l}: epoch × epoch", xticks=range(len(epochs)), yticks=range(len(epochs)))
        ax.set_xticklabels(epochs, fontsize=7)
        ax.set_yticklabels(epochs, fontsize=7)
    path = Path(path)
    _savefig(fig, path)
    rows = [
        {"layer_a": a, "layer_b": b, "cka": float(ll[i, j])} for i, a in enumerate(layers) for j, b in enumerate(layers)
    ]
    rows += [
        {"layer_a": l, "layer_b": l, "epoch_a": ea, "epoch_b": eb, "cka": float(ee[li, i, j])}
        for li, l in enumerate(layers)
        for i, ea in enumerate(epochs)
        for j, eb in enumerate(epochs)
    ]
    rundir.write_csv(path.with_suffix(".csv"), pd.DataFrame(rows))


def plot_modularity(mod: pd.DataFrame, good: np.ndarray, path: str | Path) -> pd.DataFrame:
    """Modularity against depth at the last epoch for every network, optimal ones highlighted (PNG + CSV)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    last = mod[mod.epoch == mod.epoch.max()]
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    for n, d in last.groupby("network"):
        ok = bool(np.asarray(good)[n])
        ax.plot(d.depth, d.modularity, color="C0" if ok else "C3", alpha=0.6, lw=1.2 if ok else 0.8)
    names = last.sort_values("depth").drop_duplicates("depth")
    ax.set_xticks(names.depth)
    ax.set_xticklabels(names.layer, rotation=45, fontsize=8)
    ax.set(ylabel="modularity (k-NN, k=3)", title="blue: optimal, red: other analysed networks")
    path = Path(path)
    _savefig(fig, path)
    rundir.write_csv(path.with_suffix(".csv"), last)
    return last


def plot_stats_over_epochs(
    st: pd.DataFrame,
    good: np.ndarray,
    path: str | Path,
    statistics: Sequence[str] = ("mean", "std", "layer_fluctuation"),
) -> pd.DataFrame:
    """Per-layer statistics over epochs, median of the optimal vs the other given networks (PNG + CSV)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    d = st[st.statistic.isin(statistics) & ~st.layer.str.contains("/") & (st.layer != stats.ALL)]
    d = d.assign(group=np.where(np.asarray(good)[d.network.to_numpy()], "optimal", "others"))
    agg = d.groupby(["statistic", "layer", "group", "epoch"]).value.median().reset_index()
    layers = sorted(d.layer.unique(), key=lambda l: l != INPUT)  # input first, then the table's (execution) order
    fig = Figure(figsize=(2.8 * len(layers), 2.4 * len(statistics)), layout="constrained")
    axes = fig.subplots(len(statistics), len(layers), squeeze=False)
    for i, s in enumerate(statistics):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            for grp, color in (("optimal", "C0"), ("others", "C3")):
                q = agg[(agg.statistic == s) & (agg.layer == l) & (agg.group == grp)]
                ax.plot(q.epoch, q.value, color=color, marker=".", label=grp)
            if not ((agg.statistic == s) & (agg.layer == l)).any():
                ax.axis("off")  # e.g. the input layer has node strength but no weights
            ax.set_title(f"{l}: {s}", fontsize=8)
            if i == len(statistics) - 1:
                ax.set_xlabel("epoch", fontsize=8)
    next(ax for ax in axes.ravel() if ax.lines).legend(fontsize=7)
    path = Path(path)
    _savefig(fig, path)
    rundir.write_csv(path.with_suffix(".csv"), agg)
    return agg


def write_figures(
    out_dir: str | Path, optimal_N: np.ndarray | None = None, exclude_N: np.ndarray | None = None
) -> list[Path]:
    """Draws the dynamics figures from the tables `write_dynamics` wrote into `out_dir/figures/`.

    Args:
      out_dir: a folder written by `write_dynamics`.
      optimal_N: boolean `(N,)` marking the optimal networks (from the caller); default every
        network not excluded.
      exclude_N: boolean `(N,)` networks left out of every figure (those left out of the study); default none.

    Returns:
      The PNG paths (each has a CSV of its data beside it).
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rwc = pd.read_csv(out_dir / "rwc.csv")
    good, exclude_N = network_masks(int(rwc.network.max()) + 1, optimal_N, exclude_N)
    keep = lambda t: t[~exclude_N[t.network.to_numpy()]]  # figure scales from the analysed networks only
    paths = [fig_dir / "rwc.png", fig_dir / "modularity_depth.png", fig_dir / "stats_over_epochs.png"]
    plot_rwc(keep(rwc), good, paths[0])
    plot_modularity(keep(pd.read_csv(out_dir / "modularity.csv")), good, paths[1])
    plot_stats_over_epochs(keep(pd.read_csv(out_dir / "stats_over_epochs.csv")), good, paths[2])
    with np.load(out_dir / "cka.npz") as z:
        cka = {k: z[k] for k in z.files}
    best = (
        int(np.flatnonzero(good)[0]) if good.any() else int(np.flatnonzero(~exclude_N)[0]) if (~exclude_N).any() else 0
    )
    paths.append(fig_dir / f"cka_network{best}.png")
    plot_cka(cka, best, paths[-1])
    return paths
