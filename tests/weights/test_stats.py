"""Weight statistics against numpy/scipy, vmapped == looped, undefined flags, extension, output."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from jaxweights import weights
from jaxweights.models import paths
from jaxweights.weights import compute, stats


def _weights(rng, kind, shape):
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "heavy":
        return rng.standard_t(2, size=shape)
    return rng.integers(-3, 4, size=shape).astype(float) / 4  # many ties, exact zeros


def _params(rng, kind, n=3):
    return {
        "Conv_0": {"kernel": _weights(rng, kind, (n, 3, 3, 2, 4)), "bias": _weights(rng, kind, (n, 4))},
        "Dense_0": {"kernel": _weights(rng, kind, (n, 36, 5)), "bias": _weights(rng, kind, (n, 5))},
    }


def _reference(w, near_zero):
    """numpy/scipy values of the built-in vector statistics for one weight vector."""
    ref = {
        "mean": w.mean(),
        "std": w.std(),
        "var": w.var(),
        "skewness": ss.skew(w),
        "kurtosis": ss.kurtosis(w),
        "l1": np.abs(w).sum(),
        "l2": np.sqrt((w * w).sum()),
        "max_abs": np.abs(w).max(),
        "rms": np.sqrt((w * w).mean()),
        "near_zero": np.mean(np.abs(w) < near_zero),
    }
    ref.update({f"q{q}": v for q, v in zip(stats.QUANTILES, np.percentile(w, stats.QUANTILES))})
    return ref


@pytest.mark.parametrize("kind", ["normal", "heavy", "ties"])
def test_statistics_match_numpy_scipy(x64, kind):
    rng = np.random.default_rng(0)
    params = _params(rng, kind)
    df = weights.compute_statistics(params, per=("leaf", "layer", "network"), bins=7, near_zero=0.3)
    flat = paths.flatten(params)
    groups = {**flat, "Conv_0": None, "Dense_0": None, "__all__": None}
    for name in groups:
        if name in flat:
            w_N = flat[name].reshape(3, -1)
        elif name == "__all__":
            w_N = np.concatenate([flat[k].reshape(3, -1) for k in sorted(flat)], 1)
        else:
            w_N = np.concatenate([flat[f"{name}/bias"].reshape(3, -1), flat[f"{name}/kernel"].reshape(3, -1)], 1)
        sub = df[df.layer == name]
        edges, _ = weights.histograms(params, 7, per=("leaf", "layer", "network"))[name]
        np.testing.assert_allclose(edges, np.linspace(w_N.min(), w_N.max(), 8), rtol=1e-12)
        for i in range(3):
            got = sub[sub.network == i].set_index("statistic").value
            for stat, ref in _reference(w_N[i], 0.3).items():
                np.testing.assert_allclose(got[stat], ref, rtol=1e-5, atol=1e-12, err_msg=f"{name} {stat}")
            hist = np.histogram(w_N[i], bins=edges)[0] / w_N.shape[1]
            np.testing.assert_allclose(got[[f"hist_{k}" for k in range(7)]], hist, rtol=1e-12)
    for path in ("Conv_0/kernel", "Dense_0/kernel"):
        sub = df[df.layer == path]
        for i in range(3):
            m = flat[path][i].reshape(-1, flat[path].shape[-1])
            s = np.linalg.svd(m, compute_uv=False)
            got = sub[sub.network == i].set_index("statistic").value
            np.testing.assert_allclose(got["spectral_norm"], s[0], rtol=1e-5)
            np.testing.assert_allclose(got["stable_rank"], (s**2).sum() / s[0] ** 2, rtol=1e-5)
    assert not df[df.layer == "Dense_0/bias"].statistic.isin(["spectral_norm"]).any()


def test_vmapped_equals_loop_over_networks():
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: x.astype(np.float32), _params(rng, "normal", n=4))
    stat_names = list(stats.SUMMARY) + ["spectral_norm", "stable_rank"]
    whole = weights.statistics_arrays(params, statistics=stat_names, per=("leaf", "layer"))
    for i in range(4):
        one = weights.statistics_arrays(
            jax.tree.map(lambda x: x[i : i + 1], params), statistics=stat_names, per=("leaf", "layer")
        )
        for g in whole:
            for name in whole[g]:
                np.testing.assert_allclose(
                    whole[g][name][i], one[g][name][0], rtol=1e-5, atol=1e-7, err_msg=f"{g} {name}"
                )


def test_undefined_statistics_are_flagged(caplog):
    rng = np.random.default_rng(2)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(3, 4, 2)).astype(np.float32), "bias": np.zeros((3, 2), np.float32)}
    }
    params["Dense_0"]["kernel"][1, 0, 0] = np.nan
    with caplog.at_level(logging.WARNING, logger="jaxweights.weights"):
        df = weights.compute_statistics(params, statistics=["mean", "skewness", "kurtosis"])
    bias = df[df.layer == "Dense_0/bias"]
    assert bias[bias.statistic == "skewness"].undefined.all()
    assert bias[bias.statistic == "skewness"].value.isna().all()
    assert not bias[bias.statistic == "mean"].undefined.any()
    kern = df[df.layer == "Dense_0/kernel"]
    assert kern.undefined.sum() == 3 and kern[kern.undefined].network.eq(1).all()
    assert ("Dense_0/bias", "skewness", 3) in df.attrs["undefined"]
    assert "Dense_0/bias" in caplog.text and "skewness" in caplog.text


def test_custom_statistics_registered_and_direct():
    rng = np.random.default_rng(3)
    params = {
        "Dense_0": {
            "kernel": rng.normal(size=(5, 6, 4)).astype(np.float32),
            "bias": rng.normal(size=(5, 4)).astype(np.float32),
        }
    }
    traces = []

    def trimmed(w_D):  # vector statistics receive sorted weights
        traces.append(1)
        k = w_D.shape[0] // 10
        return jnp.stack([w_D[k : w_D.shape[0] - k].mean(), w_D[-1] - w_D[0]])

    stats.register_statistic("trimmed_test", trimmed, labels=("trim_mean", "range"), overwrite=True)
    stats.register_statistic("fro_test", lambda m: jnp.sqrt((m * m).sum()), kind="matrix", overwrite=True)
    df = weights.compute_statistics(params, statistics=["trimmed_test", "fro_test", jnp.median])
    n_traces = len(traces)
    weights.compute_statistics(params, statistics=["trimmed_test", "fro_test", jnp.median])
    assert len(traces) == n_traces == 2  # one trace per leaf shape, no retrace on 2nd call
    w = params["Dense_0"]["kernel"].reshape(5, -1)
    got = df[df.layer == "Dense_0/kernel"]
    s = np.sort(w, 1)
    np.testing.assert_allclose(got[got.statistic == "trim_mean"].value, s[:, 2:-2].mean(1), rtol=1e-5)
    np.testing.assert_allclose(got[got.statistic == "range"].value, s[:, -1] - s[:, 0], rtol=1e-5)
    np.testing.assert_allclose(got[got.statistic == "median"].value, np.median(w, 1), rtol=1e-5)
    np.testing.assert_allclose(got[got.statistic == "fro_test"].value, np.linalg.norm(w, axis=1), rtol=1e-5)
    assert "fro_test" not in set(df[df.layer == "Dense_0/bias"].statistic)
    with pytest.raises(ValueError):
        stats.register_statistic("mean", jnp.mean)
    with pytest.raises(KeyError):
        weights.compute_statistics(params, statistics=["no_such_statistic"])


def test_flatten_and_groups():
    x = np.zeros((2, 3, 4))
    nested = {"params": {"Encoder": {"block0": {"attn": {"kernel": x, "bias": x[:, 0]}}}, "head": {"kernel": x}}}
    flat = paths.flatten(nested)
    assert list(flat) == ["Encoder/block0/attn/kernel", "Encoder/block0/attn/bias", "head/kernel"]
    assert paths.flatten(flat) == flat
    assert paths.layer_of("Encoder/block0/attn/kernel") == "Encoder/block0/attn"
    assert paths.is_kernel("head/kernel", x) and not paths.is_kernel("x/bias", x)
    names = weights.group_names(nested, ("leaf", "layer", "network"))
    assert names[-3:] == ["Encoder/block0/attn", "head", "__all__"]
    with pytest.raises(ValueError):
        weights.groups(nested, "module")


def test_histograms_and_write(tmp_path):
    rng = np.random.default_rng(4)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(3, 10, 4)).astype(np.float32), "bias": np.full((3, 4), 0.5, np.float32)}
    }
    hists = weights.histograms(params, 5)
    edges, h = hists["Dense_0/kernel"]
    assert edges.shape == (6,) and h.shape == (3, 5)
    np.testing.assert_allclose(h.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(hists["Dense_0/bias"][0], [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    df = weights.compute_statistics(params, statistics=["mean", "quantiles"], per="network")
    assert set(df.layer) == {"__all__"} and len(df) == 3 * 10
    path = compute.write(str(tmp_path), df)
    assert path == os.path.join(str(tmp_path), "stats.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == ["network", "layer", "statistic", "value", "undefined"]
    np.testing.assert_allclose(back.value, df.value)
    assert os.listdir(tmp_path) == ["stats.csv"]  # no temp file left behind
