"""Throughput of jaxweights statistics and N x N distances against scipy in a Python loop.

Populations of N random MLPs (default 784-128-64-10, kernels ~ N(0, 1/fan_in), biases
~ N(0, 0.01^2), float32). For every N: the time of all statistics (per leaf, layer and
network) and of every N x N distance over all leaves, next to scipy/numpy looping over
networks or pairs. scipy is timed on a random sample of networks or pairs and extrapolated
to all of them (marked "extrapolated"); jaxweights is timed in full, warm (second call)
unless the first call took over --warm-limit seconds (then marked "first call"). scipy runs
first for each quantity so that XLA's worker threads are idle while it is timed.

Usage:
  python benchmarks/stats_throughput.py                    # N in {8, 64, 256}
  python benchmarks/stats_throughput.py --large            # adds N = 1024
  python benchmarks/stats_throughput.py --sizes 8,64 --widths 784,32,10 --metrics wasserstein,ks
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.spatial.distance as ssd
import scipy.stats as ss

from jaxweights import weights
from jaxweights.models import paths
from jaxweights.weights import distances, stats

METRICS = ("wasserstein", "ks", "energy", "jensenshannon", "kde_kl", "euclidean", "cosine")


def population(n: int, widths, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"Dense_{l}": {
            "kernel": (rng.normal(size=(n, a, b)) / np.sqrt(a)).astype(np.float32),
            "bias": (0.01 * rng.normal(size=(n, b))).astype(np.float32),
        }
        for l, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
    }


def timed(fn, warm_limit):
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    if first > warm_limit:
        return first, "first call"
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, "warm"


def scipy_statistics(w, edges):
    """numpy/scipy statistics of one network's leaf (what compute_statistics returns)."""
    v = w.ravel().astype(np.float64)
    out = [
        v.mean(),
        v.std(),
        v.var(),
        ss.skew(v),
        ss.kurtosis(v),
        *np.percentile(v, stats.QUANTILES),
        np.abs(v).sum(),
        np.linalg.norm(v),
        np.abs(v).max(),
        np.sqrt((v * v).mean()),
        np.mean(np.abs(v) < 1e-3),
        *np.histogram(v, bins=edges)[0],
    ]
    if w.ndim >= 2:  # kernel leaf
        s = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)
        out += [s[0], (s**2).sum() / s[0] ** 2]
    return out


def scipy_pair_fn(metric):
    return {
        "wasserstein": ss.wasserstein_distance,
        "energy": ss.energy_distance,
        "ks": lambda u, v: ss.ks_2samp(u, v).statistic,
    }[metric]


def scipy_time(metric, params, n, rng, n_pairs, n_nets):
    """Extrapolated scipy time for all pairs (and all networks for per-network work)."""
    flat = {k: v.reshape(n, -1) for k, v in paths.flatten(params).items()}
    pairs = [tuple(rng.choice(n, 2, replace=False)) for _ in range(n_pairs)]
    total_pairs = n * (n - 1) / 2
    if metric in ("wasserstein", "ks", "energy"):
        fn = scipy_pair_fn(metric)
        t = time.perf_counter()
        for i, j in pairs:
            for w in flat.values():
                fn(w[i], w[j])
        return (time.perf_counter() - t) / n_pairs * total_pairs, True
    if metric == "jensenshannon":
        t = time.perf_counter()
        hists = {k: [np.histogram(x, bins=np.linspace(w.min(), w.max(), 33))[0] for x in w] for k, w in flat.items()}
        t_hist = time.perf_counter() - t
        t = time.perf_counter()
        for i, j in pairs:
            for h in hists.values():
                ssd.jensenshannon(h[i], h[j], base=2)
        return t_hist + (time.perf_counter() - t) / n_pairs * total_pairs, True
    if metric == "kde_kl":
        nets = rng.choice(n, min(n, n_nets), replace=False)
        t = time.perf_counter()
        dens = {}
        for k, w in flat.items():
            grid = np.linspace(w.min(), w.max(), 1000)
            dens[k] = [ss.gaussian_kde(w[i])(grid) for i in nets]
        t_kde = (time.perf_counter() - t) / len(nets) * n
        t = time.perf_counter()
        for _ in range(n_pairs):
            for d in dens.values():
                ss.entropy(d[0], d[-1]) + ss.entropy(d[-1], d[0])
        return t_kde + (time.perf_counter() - t) / n_pairs * total_pairs, True
    # euclidean / cosine on z-scored statistic vectors: statistics via scipy, then cdist
    nets = rng.choice(n, min(n, n_nets), replace=False)
    t = time.perf_counter()
    vecs = {k: [scipy_statistics(w[i], 8)[:20] for i in nets] for k, w in flat.items()}
    t_stats = (time.perf_counter() - t) / len(nets) * n
    t = time.perf_counter()
    for v in vecs.values():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant columns: z-score 0, as jaxweights
            z = np.nan_to_num(ss.zscore(np.asarray(v), axis=0))
        ssd.cdist(z, z, metric)
    return t_stats + (time.perf_counter() - t), len(nets) < n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,64,256", help="comma-separated N")
    ap.add_argument("--large", action="store_true", help="also N = 1024")
    ap.add_argument("--widths", default="784,128,64,10", help="MLP widths")
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--sketch", type=int, default=4096, help="quantile cells for sketch rows (0: skip)")
    ap.add_argument("--pairs", type=int, default=10, help="scipy pairs sampled per metric")
    ap.add_argument("--nets", type=int, default=4, help="scipy networks sampled for per-network work")
    ap.add_argument("--warm-limit", type=float, default=60.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([1024] if args.large else [])
    widths = [int(w) for w in args.widths.split(",")]
    rng = np.random.default_rng(1)
    rows = []
    warm = rng.normal(size=(20, 10))  # first calls into scipy import lazily: keep that out of timings
    scipy_statistics(warm, np.linspace(-3, 3, 9))
    for m in ("wasserstein", "ks", "energy"):
        scipy_pair_fn(m)(warm[0], warm[1])
    ss.gaussian_kde(warm[0])(warm[1]), ssd.jensenshannon(warm[0] ** 2, warm[1] ** 2), ss.zscore(warm)

    def report(n, what, ours, how, ref, extrapolated, note=""):
        speed = f"{ref / ours:8.1f}x" if ref else "        -"
        ref_s = f"{ref:10.2f}{'*' if extrapolated else ' '}" if ref else "         - "
        row = f"{n:5d} | {what:24s} | {ours:9.3f} {how:10s} | {ref_s} | {speed} | {note}"
        rows.append(row)
        print(row, flush=True)

    print(
        f"MLP {'-'.join(map(str, widths))}, float32; times in seconds over all leaves; "
        "* = scipy extrapolated from a sample"
    )
    print("    N | quantity                 | jaxweights           | scipy loop  |   speedup | note")
    for n in sizes:
        params = population(n, widths)
        per = ("leaf", "layer", "network")
        groups = weights.groups(params, per)
        kernels = {k: v for k, v in paths.flatten(params).items() if paths.is_kernel(k, v)}
        edges = {k: np.linspace(w.min(), w.max(), 33) for k, w in groups.items()}
        nets = rng.choice(n, min(n, args.nets), replace=False)
        t0 = time.perf_counter()
        for i in nets:  # the same groups, statistics and shared-edge histograms, one network at a time
            for k, w in groups.items():
                scipy_statistics(kernels[k][i] if k in kernels else w[i], edges[k])
        ref = (time.perf_counter() - t0) / len(nets) * n
        t, how = timed(lambda: weights.compute_statistics(params, per=per), args.warm_limit)
        report(n, "all statistics", t, how, ref, True, "per leaf, layer and network")
        for metric in args.metrics.split(","):
            ref, extrap = scipy_time(metric, params, n, rng, args.pairs, args.nets)  # scipy first: quiet CPU
            t, how = timed(lambda: distances.pairwise(params, metric), args.warm_limit)
            report(n, metric, t, how, ref, extrap)
            if args.sketch and metric in ("wasserstein", "ks"):
                res = {}

                def run():
                    res["d"], res["e"] = distances.pairwise(params, metric, sketch=args.sketch, with_error=True)

                t, how = timed(run, args.warm_limit)
                err = max(float(np.max(e)) for e in res["e"].values())
                report(n, f"{metric} sketch={args.sketch}", t, how, ref, extrap, f"max error bound {err:.2g}")
    print("\n".join(["", "summary:"] + rows))


if __name__ == "__main__":
    main()
