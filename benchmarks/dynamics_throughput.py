"""Throughput of CKA and modularity for N networks at once against a Python loop.

Representations are random: for each of N networks, a `(n, d)` float32 feature matrix
(n = 500 probe examples, d = 128 features) and E = 6 epochs of them for the epoch × epoch CKA;
labels are 10 balanced classes. Rows of the table:

  * `cka networks`: linear CKA between every pair of N networks (N × N), from `cka_matrix` on the
    N Gram matrices, against a loop over pairs calling the jitted `cka_linear` and against numpy
    (Kornblith's feature formula) over pairs.
  * `cka epochs`: epoch × epoch linear and minibatch unbiased-HSIC CKA of every network.
  * `modularity`: cosine k-NN graph (k = 3) + Newman modularity of every network, against
    scikit-learn's k-NN graph + networkx's modularity per network.

For the last two, three ways to run the same one-network function over N networks: `vmap` of
all N at once, `lax.map(batch_size=1)` (one compiled program walking the networks one at a
time: what `jaxweights.dynamics` does on CPU), and a Python loop calling the jitted function
per network. Every JAX column is timed warm (after one call to compile); the numpy / networkx
columns are timed on up to --sample items and extrapolated (marked *).

Usage:
  python benchmarks/dynamics_throughput.py                  # N in {8, 32, 128}
  python benchmarks/dynamics_throughput.py --sizes 8,64 --n 500 --d 256
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights import dynamics


def timed(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())  # compile
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def np_linear_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def nx_modularity(x, labels, k=3):
    import networkx as nx
    from networkx.algorithms.community import modularity
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x, return_distance=False)
    a = np.zeros((len(x), len(x)))
    for i, row in enumerate(idx):
        a[i, [j for j in row if j != i][:k]] = 1
    g = nx.from_numpy_array((a + a.T) / 2)
    return modularity(g, [set(np.flatnonzero(labels == c).tolist()) for c in range(10)], weight="weight")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,32,128")
    ap.add_argument("--n", type=int, default=500, help="probe examples")
    ap.add_argument("--d", type=int, default=128, help="features per representation")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--sample", type=int, default=8, help="items timed for the extrapolated columns")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), args.n // 10)[: args.n]
    y = jnp.asarray(labels, jnp.int32)
    rows = []

    cka_one = jax.jit(dynamics.cka_linear)
    gram_n = jax.jit(jax.vmap(dynamics.gram))
    mat = jax.jit(dynamics.cka_matrix, static_argnums=1)
    epoch_one = jax.jit(
        lambda r: (
            dynamics.cka_matrix(jax.vmap(dynamics.gram)(r)),
            dynamics.cka_matrix(jax.vmap(lambda x: dynamics.minibatch_grams(x, 100))(r), True),
        )
    )
    epoch_all = jax.jit(jax.vmap(epoch_one))
    epoch_map = jax.jit(lambda r: jax.lax.map(epoch_one, r, batch_size=1))
    mod_f = lambda x: dynamics.knn_modularity(x, y, 10, 3)
    mod_one, mod_all = jax.jit(mod_f), jax.jit(jax.vmap(mod_f))
    mod_map = jax.jit(lambda r: jax.lax.map(mod_f, r, batch_size=1))

    for n_nets in [int(s) for s in args.sizes.split(",")]:
        reps = jnp.asarray(rng.normal(size=(n_nets, args.n, args.d)), jnp.float32)
        pairs = list(itertools.combinations(range(n_nets), 2))

        t_batch = timed(lambda: mat(gram_n(reps), False))
        t_loop = timed(lambda: [cka_one(reps[i], reps[j]) for i, j in pairs], repeats=1)
        r_np = np.asarray(reps, np.float64)
        sample = pairs[: args.sample]
        t = time.perf_counter()
        for i, j in sample:
            np_linear_cka(r_np[i], r_np[j])
        t_np = (time.perf_counter() - t) * len(pairs) / len(sample)
        rows.append(("cka networks (N×N linear)", n_nets, t_batch, None, t_loop, f"{t_np:.3f}*"))

        reps_e = jnp.asarray(rng.normal(size=(n_nets, args.epochs, args.n, args.d)), jnp.float32)
        t_batch = timed(lambda: epoch_all(reps_e))
        t_map = timed(lambda: epoch_map(reps_e))
        t_loop = timed(lambda: [epoch_one(reps_e[i]) for i in range(n_nets)], repeats=1)
        rows.append(
            (f"cka epochs ({args.epochs}×{args.epochs}, linear + unbiased)", n_nets, t_batch, t_map, t_loop, "")
        )

        t_batch = timed(lambda: mod_all(reps))
        t_map = timed(lambda: mod_map(reps))
        t_loop = timed(lambda: [mod_one(reps[i]) for i in range(n_nets)], repeats=1)
        k = min(args.sample, n_nets)
        t = time.perf_counter()
        for i in range(k):
            nx_modularity(r_np[i], labels)
        t_nx = (time.perf_counter() - t) * n_nets / k
        rows.append(("modularity (k-NN k=3 + Newman)", n_nets, t_batch, t_map, t_loop, f"{t_nx:.3f}*"))

    print(
        f"devices: {jax.devices()}; n={args.n} probe examples, d={args.d} features; times in seconds "
        "(* extrapolated from a sample)\n"
    )
    print(
        "| task | N | vmap all N | lax.map, 1 at a time | loop of jitted | loop / best JAX | numpy / networkx "
        "| reference / best JAX |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task, n_nets, tb, tm, tl, ref in rows:
        best = min(tb, tm) if tm is not None else tb
        ratio_ref = f"{float(ref.rstrip('*')) / best:.0f}×" if ref else ""
        tm_s = f"{tm:.4f}" if tm is not None else ""
        print(f"| {task} | {n_nets} | {tb:.4f} | {tm_s} | {tl:.4f} | {tl / best:.1f}× | {ref} | {ratio_ref} |")


if __name__ == "__main__":
    main()
