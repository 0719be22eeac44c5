"""Throughput of the claim tests against scipy.stats: permutation test, bootstrap interval, KDE of accuracy bins.

For a zoo of N networks (quartiles: N/4 optimal, N/4 suboptimal, so the tests see n = N/2 networks), the
network-level permutation test of "optimal networks are more alike" (`claims.permutation_test`: all splits as
0/1 masks, within-group means as one matrix product per chunk) is timed next to `scipy.stats.permutation_test`
with the same statistic on index samples (vectorized, batched); the percentile bootstrap of the within-group means
(`claims.bootstrap_ci`) next to `scipy.stats.bootstrap`; `claims.bin_divergence` (4 accuracy bins, one compiled
KDE for all of them) next to four `scipy.stats.gaussian_kde`. Distances are of random points (only the timing
matters); both sides get the same number of resamples. A side that would take longer than --limit seconds is
timed on fewer resamples and extrapolated (marked "extrapolated").

Usage:
  python benchmarks/claims_throughput.py                         # N in {100, 1000, 10000}
  python benchmarks/claims_throughput.py --sizes 100,1000 --resamples 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.stats as ss

from jaxweights import claims
from jaxweights.claims import OPTIMAL, SUBOPTIMAL
from jaxweights.claims.permutation import resampled_within as _within


def _timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def population(n_networks: int, seed: int = 0):
    """(n, n) distances of the n = N/2 grouped networks (random points) and their labels, optimal first."""
    rng = np.random.default_rng(seed)
    n = n_networks // 2
    x = rng.normal(size=(n, 8)).astype(np.float64)
    sq = (x**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0))
    labels = np.r_[np.full(n // 2, OPTIMAL), np.full(n - n // 2, SUBOPTIMAL)]
    return d, labels


def scipy_permutation(d, labels, n_resamples: int):
    o, s = np.flatnonzero(labels == OPTIMAL), np.flatnonzero(labels == SUBOPTIMAL)
    stat = lambda a, b, axis=-1: _within(d, b) - _within(d, a)
    batch = max(1, int(2e8 // (len(o) ** 2 * 8)))  # ~1.6 GB of gathered distances per batch at most
    return ss.permutation_test(
        (o.astype(float), s.astype(float)),
        stat,
        permutation_type="independent",
        alternative="greater",
        n_resamples=n_resamples,
        vectorized=True,
        batch=batch,
        random_state=0,
    )


def scipy_bootstrap(d, labels, n_resamples: int):
    o, s = np.flatnonzero(labels == OPTIMAL), np.flatnonzero(labels == SUBOPTIMAL)
    stat = lambda a, b, axis=-1: _within(d, b) - _within(d, a)
    batch = max(1, int(2e8 // (len(o) ** 2 * 8)))
    return ss.bootstrap(
        (o.astype(float), s.astype(float)),
        stat,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        batch=batch,
        random_state=0,
    )


def _capped(fn, full: int, limit: float, probe: int) -> tuple[float, bool]:
    """Seconds of `fn(n_resamples)` at `full`, extrapolated from `probe` resamples when that would exceed `limit`."""
    t = _timed(fn, probe)
    if t * full / probe <= limit:
        return _timed(fn, full), False
    return t * full / probe, True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000", help="zoo sizes N (networks)")
    ap.add_argument("--resamples", type=int, default=2000, help="permutations and bootstrap resamples")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds beyond which a side is extrapolated")
    args = ap.parse_args()
    r = args.resamples
    rows = []
    for n_networks in (int(s) for s in args.sizes.split(",")):
        d, labels = population(n_networks)
        probe = max(2, min(r, 20))
        ours = lambda k: claims.permutation_test(d, labels, n_permutations=k)
        theirs = lambda k: scipy_permutation(d, labels, k)
        rows.append((n_networks, "permutation test", *_capped(ours, r, args.limit, probe)))
        rows.append((n_networks, "  scipy.stats.permutation_test", *_capped(theirs, r, args.limit, probe)))
        ours = lambda k: claims.bootstrap_ci(d, labels, n_boot=k)
        theirs = lambda k: scipy_bootstrap(d, labels, k)
        rows.append((n_networks, "bootstrap interval", *_capped(ours, r, args.limit, probe)))
        rows.append((n_networks, "  scipy.stats.bootstrap", *_capped(theirs, r, args.limit, probe)))
        # node strengths of a 64-node layer per network, 4 accuracy bins
        rng = np.random.default_rng(1)
        v = rng.normal(size=(n_networks, 64))
        bins = np.repeat(np.arange(4), -(-n_networks // 4))[:n_networks]
        claims.bin_divergence(v, bins)  # compile outside the timing (one compile per padded length)
        rows.append((n_networks, "bin divergence (4 bins)", _timed(claims.bin_divergence, v, bins), False))
        ref = lambda: [ss.gaussian_kde(v[bins == b].ravel()[:20000])(np.linspace(-4, 4, 1000)) for b in range(4)]
        rows.append((n_networks, "  scipy.stats.gaussian_kde", _timed(ref), False))
    print(f"{'N':>7}  {'test':32s} {'seconds':>10}  ({r} resamples)")
    for n, name, t, extrapolated in rows:
        print(f"{n:>7}  {name:32s} {t:10.3f}{'  extrapolated' if extrapolated else ''}")


if __name__ == "__main__":
    main()
