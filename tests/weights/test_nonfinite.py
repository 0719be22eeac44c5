"""Networks with NaN, infinite or exploded weights never change other networks' readings."""

import logging

import numpy as np
import pytest
import scipy.stats as ss

from jaxweights import train, weights
from jaxweights.weights import distances

N_OK = 5
BAD = {"nan": np.nan, "inf": np.inf, "huge": 1e30, "exploded": 3e24}  # last two are finite


def _healthy(rng, n=N_OK):
    """Trained-like weights: normal kernels of a small CNN + MLP head, float32.

    Both kernels hold 144 weights and both biases 8, so the seven groups (leaves, layers, network) have
    four sizes (fewer compiles); the whole network's 304 > 256 weights take the exact-KS bound-and-refine
    path, the smaller groups the searchsorted one.
    """
    return {
        "Conv_0": {"kernel": rng.normal(0, 0.2, (n, 3, 3, 2, 8)), "bias": rng.normal(0, 0.01, (n, 8))},
        "Dense_0": {"kernel": rng.normal(0, 0.1, (n, 18, 8)), "bias": rng.normal(0, 0.01, (n, 8))},
    }


def _with_bad(p, rng):
    """P followed by one network per kind of BAD: a few weights set to NaN / inf, or every weight scaled."""
    extra = _healthy(rng, len(BAD))
    for i, (kind, v) in enumerate(BAD.items()):
        for layer in extra.values():
            for _name, w in layer.items():
                if kind in ("nan", "inf"):  # a few weights of every leaf
                    w[i].reshape(-1)[::7] = v
                else:
                    w[i] *= v
    f32 = lambda a: a.astype(np.float32)
    return (
        {l: {k: f32(w) for k, w in d.items()} for l, d in p.items()},
        {l: {k: f32(np.concatenate([w, extra[l][k]])) for k, w in d.items()} for l, d in p.items()},
    )


def _padded(p):
    """P followed by copies of its first len(BAD) networks: a clean population of the bad one's size.

    Copies change neither a pair's value nor the core range (min and max over the core networks), so
    for every metric but the z-scored ones a healthy pair reads the same here as in P alone, and the
    reference shares the compiled programs of the population with bad networks.
    """
    return {l: {k: np.concatenate([w, w[: len(BAD)]]) for k, w in d.items()} for l, d in p.items()}


@pytest.fixture(scope="module")
def populations():
    rng = np.random.default_rng(0)
    return _with_bad(_healthy(rng), rng)


KW = dict(per=("leaf", "layer", "network"), block_size=3, grid=200)


@pytest.fixture(scope="module")
def reference(populations):
    """``metric -> {group: N_OK x N_OK}`` distances of the healthy networks alone (computed once per metric)."""
    p, _ = populations
    cache = {}

    def get(metric):
        if metric not in cache:
            # z-scoring uses the core networks' mean and sd, which copies would change: P itself
            clean = p if metric in ("euclidean", "cosine") else _padded(p)
            cache[metric] = {k: d[:N_OK, :N_OK] for k, d in distances.pairwise(clean, metric, **KW).items()}
        return cache[metric]

    return get


def _check(d0, d1, metric, key, tight=1e-6):
    # atol 1e-7: float32 self-distances (~2e-8 instead of 0) round differently with the batch size
    np.testing.assert_allclose(d1[:N_OK, :N_OK], d0, rtol=tight, atol=1e-7, err_msg=f"{metric} {key}")
    for i in (N_OK, N_OK + 1):  # NaN and inf networks: whole row and column NaN
        assert np.isnan(d1[i]).all() and np.isnan(d1[:, i]).all(), (metric, key)


@pytest.mark.parametrize("metric", distances.BUILTIN)
def test_every_distance_ignores_bad_networks(populations, reference, metric, caplog):
    _, q = populations
    with caplog.at_level(logging.WARNING, "jaxweights"):
        d1 = distances.pairwise(q, metric, **KW)
    d0 = reference(metric)
    assert set(d1) == set(d0) and len(d0) == 7
    for key in d0:
        _check(d0[key], d1[key], metric, key)
    # one warning per call naming the networks, not one per leaf
    msgs = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(msgs) == 1 and f"[{N_OK}, {N_OK + 1}]" in msgs[0]


@pytest.mark.parametrize("metric", ("wasserstein", "ks"))
def test_sketches_ignore_bad_networks(populations, metric):
    p, q = populations
    d0, e0 = distances.pairwise(p, metric, sketch=8, with_error=True, block_size=2)
    d1, e1 = distances.pairwise(q, metric, sketch=8, with_error=True, block_size=2)
    for key in d0:
        _check(d0[key], d1[key], metric, key)
        np.testing.assert_allclose(e1[key][:N_OK, :N_OK], e0[key], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("metric", distances.BUILTIN)
def test_sharded_and_cross_population_paths_ignore_bad_networks(populations, reference, metric):
    """The sharded path and the cross-population path give the healthy networks their one-device values."""
    _, q = populations
    d0 = reference(metric)["__all__"]
    sharded = distances.pairwise(q, metric, per="network", grid=200, mesh=train.networks_mesh())["__all__"]
    cross = distances.pairwise(q, metric, other=q, per="network", block_size=3, grid=200)["__all__"]
    # other summation orders (whole rows instead of column chunks, both sides of the diagonal): 1e-5
    _check(d0, sharded, f"{metric} sharded", "__all__", tight=1e-5)
    _check(d0, cross, f"{metric} cross", "__all__", tight=1e-5)


def test_exploded_networks_pairs_use_their_own_range(populations, x64):
    """JS with an exploded network = scipy on histograms over the pair's range (not the core range)."""
    from scipy.spatial.distance import jensenshannon

    _, q = populations
    w = weights.groups(q, "leaf")["Dense_0/kernel"].astype(np.float64)
    d = distances.pairwise(q, "jensenshannon", bins=16, layers=["Dense_0/kernel"])["Dense_0/kernel"]
    i = N_OK + 3  # exploded (3e24)
    for j in (0, 1, N_OK + 2):
        lo, hi = min(w[i].min(), w[j].min()), max(w[i].max(), w[j].max())
        hi_, _ = np.histogram(w[i], 16, (lo, hi))
        hj, _ = np.histogram(w[j], 16, (lo, hi))
        np.testing.assert_allclose(d[i, j], jensenshannon(hi_, hj, base=2), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(d[j, i], d[i, j])
    # healthy pairs use edges over the healthy range only
    lo, hi = w[:N_OK].min(), w[:N_OK].max()
    h0, _ = np.histogram(w[0], 16, (lo, hi))
    h1, _ = np.histogram(w[1], 16, (lo, hi))
    np.testing.assert_allclose(d[0, 1], jensenshannon(h0, h1, base=2), rtol=1e-5, atol=1e-7)


def test_every_statistic_ignores_bad_networks(populations, caplog):
    p, q = populations
    per = ("leaf", "layer", "network")
    # statistics are per network and the histogram edges span the core range: copies change neither
    df0 = weights.compute_statistics(_padded(p), per=per)
    df0 = df0[df0.network < N_OK]
    with caplog.at_level(logging.WARNING, "jaxweights"):
        df1 = weights.compute_statistics(q, per=per)
    key = ["layer", "statistic", "network"]
    a = df0.set_index(key).value.sort_index()
    b = df1[df1.network < N_OK].set_index(key).value.sort_index()
    assert a.index.equals(b.index) and set(a.index.get_level_values("statistic")) >= {
        "var",
        "kurtosis",
        "hist_0",
        "spectral_norm",
        "stable_rank",
        "near_zero",
        "q50",
    }
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=2e-5, atol=1e-12)
    bad = df1[df1.network.isin([N_OK, N_OK + 1])]
    assert bad.value.isna().all() and bad.undefined.all()
    assert df1.attrs["non_finite"]["__all__"] == [N_OK, N_OK + 1]
    msgs = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(msgs) == 1


SCALES = (1e20, 1e24, 3e24, 1e30)


def test_exploded_statistics_do_not_overflow():
    """Moments and norms of weights ~1e20..1e30 (squares overflow float32) against numpy float64.

    Two networks per scale in one population: one compiled call covers every scale.
    """
    rng = np.random.default_rng(3)
    base = rng.normal(0.3, 1.0, (2, 30, 20))
    w = np.concatenate([(base * scale).astype(np.float32) for scale in SCALES])
    params = {"Dense_0": {"kernel": w}}
    names = ("mean", "std", "var", "skewness", "kurtosis", "l1", "l2", "rms", "max_abs", "spectral_norm", "stable_rank")
    got = weights.statistics_arrays(params, statistics=names)["Dense_0/kernel"]
    for i in range(len(w)):
        scale = SCALES[i // 2]
        x = w[i].astype(np.float64).ravel()
        s = np.linalg.svd(w[i].astype(np.float64), compute_uv=False)
        ref = {
            "mean": x.mean(),
            "std": x.std(),
            "var": x.var(),
            "skewness": ss.skew(x),
            "kurtosis": ss.kurtosis(x),
            "l1": np.abs(x).sum(),
            "l2": np.sqrt((x * x).sum()),
            "rms": np.sqrt((x * x).mean()),
            "max_abs": np.abs(x).max(),
            "spectral_norm": s[0],
            "stable_rank": (s**2).sum() / s[0] ** 2,
        }
        for n in names:
            assert np.isfinite(got[n][i]), (n, scale)
            np.testing.assert_allclose(float(got[n][i]), ref[n], rtol=2e-4, err_msg=f"{n} at {scale}")
