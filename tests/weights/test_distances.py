"""N x N distances against scipy, blocked == unblocked, sketch bounds, extension, output."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats as ss

from jaxweights import weights
from jaxweights.weights import distances, stats
from jaxweights.weights.distances import ks as ks_module

KS = lambda u, v: ss.ks_2samp(u, v).statistic
SCIPY = {"wasserstein": ss.wasserstein_distance, "ks": KS, "energy": ss.energy_distance}


def _population(rng, kind, n=5, shape=(40, 25)):
    size = (n,) + shape
    if kind == "normal":
        w = rng.normal(size=size) * rng.uniform(0.8, 1.2, (n,) + (1,) * len(shape))
    elif kind == "heavy":
        w = rng.standard_t(2, size=size)
    else:
        w = rng.integers(-4, 5, size=size) / 4.0  # ties everywhere
    return {"Dense_0": {"kernel": w, "bias": rng.normal(size=(n, shape[-1]))}}


def _loop(fn, a, b):
    return np.array([[fn(x, y) for y in b] for x in a])


@pytest.mark.parametrize("kind", ["normal", "heavy", "ties"])
def test_sample_metrics_match_scipy(x64, kind):
    rng = np.random.default_rng(0)
    params = _population(rng, kind)  # 1000 weights: exact KS takes the bound-and-refine path
    for metric, ref in SCIPY.items():
        d = distances.pairwise(params, metric, per=("leaf", "layer"), block_size=2)
        for key in ("Dense_0/kernel", "Dense_0/bias", "Dense_0"):
            w = weights.groups(params, ("leaf", "layer"))[key]
            np.testing.assert_allclose(d[key], _loop(ref, w, w), rtol=1e-5, atol=1e-12, err_msg=metric)


def test_unequal_sizes_cross_population(x64):
    rng = np.random.default_rng(1)
    a = {"Dense_0": {"kernel": rng.normal(size=(3, 37, 11))}}
    b = {"Dense_0": {"kernel": rng.standard_t(3, size=(4, 29, 13)) * 0.7}}
    wa, wb = a["Dense_0"]["kernel"].reshape(3, -1), b["Dense_0"]["kernel"].reshape(4, -1)
    for metric, ref in SCIPY.items():
        d = distances.pairwise(a, metric, other=b, block_size=2)["Dense_0/kernel"]
        assert d.shape == (3, 4)
        np.testing.assert_allclose(d, _loop(ref, wa, wb), rtol=1e-5, err_msg=metric)
    u, v = wa[0][:100], np.concatenate([wb[0][:37], wb[0][:20]])  # with ties
    for fn, ref in [
        (distances.wasserstein_1d, ss.wasserstein_distance),
        (distances.ks_1d, KS),
        (distances.energy_1d, ss.energy_distance),
    ]:
        np.testing.assert_allclose(fn(u, v), ref(u, v), rtol=1e-5)
    for metric in ("jensenshannon", "kde_kl", "euclidean"):
        assert distances.pairwise(a, metric, other=b)["Dense_0/kernel"].shape == (3, 4)


def test_ks_fallback_paths_are_exact(x64, monkeypatch, caplog):
    rng = np.random.default_rng(2)
    w = np.concatenate([rng.normal(size=(4, 900)), np.zeros((4, 100))], 1)  # 100 tied zeros
    params = {"L": {"kernel": w.reshape(4, 20, 50)}}
    with caplog.at_level("DEBUG", logger="jaxweights.weights.distances"):
        np.testing.assert_allclose(distances.pairwise(params, "ks")["L/kernel"], _loop(KS, w, w), rtol=1e-12)
    assert "fall back" in caplog.text  # the tied bin overflows the in-bin merge
    monkeypatch.setattr(ks_module, "_KS_ITERS", 0)  # nothing refined: every pair falls back
    w = rng.normal(size=(4, 999))  # new size: fresh trace sees the patched value
    caplog.clear()
    with caplog.at_level("DEBUG", logger="jaxweights.weights.distances"):
        d = distances.pairwise({"L": {"kernel": w.reshape(4, 27, 37)}}, "ks")["L/kernel"]
    np.testing.assert_allclose(d, _loop(KS, w, w), rtol=1e-12)
    assert "6 pairs fall back" in caplog.text  # all 4 * 3 / 2 pairs


def test_histogram_and_kde_metrics_match_scipy(x64):
    rng = np.random.default_rng(3)
    params = _population(rng, "normal", n=4)
    w = weights.groups(params)["Dense_0/kernel"]
    edges, h = weights.histograms(params, 12)["Dense_0/kernel"]
    d = distances.pairwise(params, "jensenshannon", bins=12, block_size=3)["Dense_0/kernel"]
    np.testing.assert_allclose(d, _loop(lambda p, q: ssd.jensenshannon(p, q, base=2), h, h), rtol=1e-5, atol=1e-12)
    d = distances.pairwise(params, "kde_kl", grid=300, block_size=3)["Dense_0/kernel"]
    grid = np.linspace(w.min(), w.max(), 300)
    kde = [ss.gaussian_kde(x)(grid) for x in w]
    np.testing.assert_allclose(
        d, _loop(lambda p, q: ss.entropy(p, q) + ss.entropy(q, p), kde, kde), rtol=1e-5, atol=1e-12
    )


def test_statistic_vector_metrics_match_scipy(x64):
    rng = np.random.default_rng(4)
    params = _population(rng, "heavy", n=6)
    vec = weights.statistic_vectors(params, statistics=stats.SUMMARY)
    for metric in ("euclidean", "cosine"):
        d = distances.pairwise(params, metric, per=("leaf", "network"), block_size=4)
        z = {k: np.nan_to_num(ss.zscore(x, axis=0)) for k, (_, x) in vec.items()}
        for k in z:
            np.testing.assert_allclose(d[k], ssd.cdist(z[k], z[k], metric), rtol=1e-5, atol=1e-9)
        whole = np.concatenate([z["Dense_0/kernel"], z["Dense_0/bias"]], 1)
        np.testing.assert_allclose(d["__all__"], ssd.cdist(whole, whole, metric), rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def float32_population():
    """7 networks, float32: a 1000-weight kernel (exact KS by bound-and-refine) and a 25-weight bias."""
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda x: x.astype(np.float32), _population(rng, "normal", n=7))
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.groups(params).items()}  # float64 copies
    refs = {metric: {k: _loop(ref, w, w) for k, w in w64.items()} for metric, ref in SCIPY.items()}
    # one block of all 7 networks, for the metrics whose scipy reference is checked in float64 above
    refs.update({metric: distances.pairwise(params, metric, block_size=7) for metric in BINNED})
    return params, refs


BINNED = ("jensenshannon", "kde_kl", "euclidean")


@pytest.mark.parametrize("block_size", [1, 3])  # one network per block; 3 blocks a side, the last padded
def test_every_block_size_matches_scipy(float32_population, block_size):
    """W1, KS and energy against scipy on float64 copies; histogram, KDE and vector metrics equal one block."""
    params, refs = float32_population
    for metric in SCIPY:
        d = distances.pairwise(params, metric, block_size=block_size)
        for k, ref in refs[metric].items():
            # float32 sums over 1000 weights; KS is a ratio of integer counts
            np.testing.assert_allclose(d[k], ref, rtol=2e-5, atol=1e-6, err_msg=f"{metric} {k} b={block_size}")
    for metric in BINNED:
        small, whole = distances.pairwise(params, metric, block_size=block_size), refs[metric]
        for k in whole:
            np.testing.assert_allclose(small[k], whole[k], rtol=1e-6, atol=1e-7, err_msg=metric)
            np.testing.assert_allclose(small[k], small[k].T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block", [1, 3])
def test_exact_ks_blocks_match_scipy(float32_population, block):
    """The exact all-pairs KS (bound-and-refine) with several block sizes against scipy in float64."""
    params, refs = float32_population
    s = weights.sort_rows(weights.groups(params)["Dense_0/kernel"])
    d = distances.ks_exact(s, block=block)
    np.testing.assert_allclose(d, refs["ks"]["Dense_0/kernel"], rtol=1e-6, atol=1e-7)
    pair = jax.tree.map(lambda x: x[[2, 5]], params)  # a pair alone == its entry in the N x N
    np.testing.assert_allclose(distances.pairwise(pair, "ks")["Dense_0/kernel"][0, 1], d[2, 5], rtol=1e-6)


@pytest.fixture(scope="module")
def sketch_population():
    rng = np.random.default_rng(6)
    n = 6
    w = rng.standard_t(3, size=(n, 5000)).astype(np.float32) * rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
    w64 = w.astype(np.float64)
    exact = {metric: _loop(SCIPY[metric], w64, w64) for metric in ("wasserstein", "ks")}
    return {"L": {"kernel": w.reshape(n, 50, 100)}}, w, exact


@pytest.mark.parametrize("block_size", [4, 16])  # two blocks a side, padded; one block
def test_sketch_error_bounds(sketch_population, block_size):
    """Sketches are lower bounds of scipy's exact values, within their documented error bounds."""
    params, w, exact = sketch_population
    q = 64
    ranges = (w.max(1) - w.min(1)).astype(np.float64)
    for metric in ("wasserstein", "ks"):
        sk, err = distances.pairwise(params, metric, sketch=q, with_error=True, block_size=block_size)
        sk, err, ex = sk["L/kernel"], err["L/kernel"], exact[metric]
        assert not np.allclose(sk, ex), metric  # the sketch path ran: approximate values
        assert np.all(sk <= ex + 1e-5) and np.all(ex <= sk + err + 1e-5), metric
        if metric == "ks":
            assert np.all(err <= 4.0 / q)  # KS: ~2/q for similar networks
        else:
            assert np.all(err <= (ranges[:, None] + ranges[None, :]) / q + 1e-6)
    other = {"L": {"kernel": w[:3, :4000].reshape(3, 40, 100)}}  # cross sketch: |error| <= 1/q
    ref = _loop(KS, w.astype(np.float64), w[:3, :4000].astype(np.float64))
    sk = distances.pairwise(params, "ks", other=other, sketch=q, block_size=block_size)["L/kernel"]
    assert np.all(np.abs(sk - ref) <= 1.0 / q + 1e-6)


def test_custom_distances_registered_and_direct():
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda x: x.astype(np.float32), _population(rng, "normal", n=5))

    traces = []

    def mean_gap(a, b):  # on sorted weights this is W1
        traces.append(1)
        return jnp.mean(jnp.abs(a - b))

    def l1_hist(p, q):
        return jnp.abs(p - q).sum()

    distances.register_distance("mean_gap_test", mean_gap, overwrite=True)
    distances.register_distance("l1_hist_test", l1_hist, kind="histogram", overwrite=True)
    w1 = distances.pairwise(params, "wasserstein")
    for d in (distances.pairwise(params, "mean_gap_test", block_size=2), distances.pairwise(params, mean_gap)):
        for k in w1:
            np.testing.assert_allclose(d[k], w1[k], rtol=1e-5, atol=1e-7)
    n_traces = len(traces)
    distances.pairwise(params, mean_gap)
    assert len(traces) == n_traces  # same shapes: compiled blocks are reused, no retrace
    _, h = weights.histograms(params, 9)["Dense_0/kernel"]
    ref = np.abs(h[:, None] - h[None]).sum(-1)
    for d in (
        distances.pairwise(params, "l1_hist_test", bins=9),
        distances.pairwise(params, l1_hist, kind="histogram", bins=9),
    ):
        np.testing.assert_allclose(d["Dense_0/kernel"], ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        distances.register_distance("ks", mean_gap)
    with pytest.raises(KeyError):
        distances.pairwise(params, "no_such_metric")


def test_non_finite_networks_get_nan_and_write(tmp_path):
    rng = np.random.default_rng(8)
    params = jax.tree.map(lambda x: x.astype(np.float32), _population(rng, "normal", n=4))
    params["Dense_0"]["kernel"][2, 0, 0] = np.inf
    results = distances.compute(params, metrics=("wasserstein", "ks", "jensenshannon"), per=("leaf", "layer"))
    for _metric, mats in results.items():
        d = mats["Dense_0/kernel"]
        assert np.isnan(d[2]).all() and np.isnan(d[:, 2]).all()
        assert np.isfinite(np.delete(np.delete(d, 2, 0), 2, 1)).all()
        # a network with a non-finite weight anywhere is NaN in every group, its finite bias too
        b = mats["Dense_0/bias"]
        assert np.isnan(b[2]).all() and np.isfinite(np.delete(np.delete(b, 2, 0), 2, 1)).all()
    paths = distances.write(str(tmp_path), results)
    assert sorted(os.listdir(tmp_path / "distances")) == ["jensenshannon.npz", "ks.npz", "wasserstein.npz"]
    with np.load(paths[0]) as f:
        assert sorted(f.files) == ["Dense_0", "Dense_0/bias", "Dense_0/kernel"]
        np.testing.assert_array_equal(f["Dense_0/bias"], results["wasserstein"]["Dense_0/bias"])
