"""Bring your own model: `train_pipeline.train_and_evaluate(config, workdir, model=MyModule())`."""

import json

import flax.linen as nn
import jax
import numpy as np
import pandas as pd
import pytest

from jaxweights import config as config_lib
from jaxweights.io import checkpoints, rundir
from jaxweights.pipelines import analyze
from jaxweights.pipelines import train as train_pipeline


class MyMLP(nn.Module):
    """A user's own module, written like the built-in 784-16-10 MLP (same initialiser, same names)."""

    width: int = 16

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(nn.Dense(self.width, kernel_init=init)(x))
        return nn.Dense(10, kernel_init=init)(x)


class Gated(nn.Module):
    """A module no built-in covers: a gated hidden layer with explicit names."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        h = nn.Dense(24, name="value")(x) * jax.nn.sigmoid(nn.Dense(24, name="gate")(x))
        return nn.Dense(10, name="out")(h)


def _config(data_dir, **kw):
    c = config_lib.default_config()
    c.data_dir, c.max_train, c.max_test, c.batch_size = str(data_dir), 512, 500, 64
    c.num_epochs, c.num_seeds, c.learning_rates, c.model.hidden = 2, 2, (0.05, 0.2), (16,)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_own_module_trains_exactly_like_the_same_built_in(tmp_path, data_dir):
    built_in = train_pipeline.train_and_evaluate(_config(data_dir), tmp_path / "builtin", progress=False)
    mine = train_pipeline.train_and_evaluate(_config(data_dir), tmp_path / "mine", progress=False, model=MyMLP())
    cols = ["network", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "diverged"]
    pd.testing.assert_frame_equal(built_in[cols], mine[cols])
    assert (mine[mine.epoch == 2].test_acc > 0.5).all()
    with np.load(tmp_path / "builtin" / "params.npz") as a, np.load(tmp_path / "mine" / "params.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    cfg = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert cfg["model"]["name"] == "custom" and cfg["model"]["module"].endswith("MyMLP")
    assert "width = 16" in cfg["model"]["repr"]
    # A run of another module in the same workdir is refused, naming the difference.
    with pytest.raises(train_pipeline.RunError, match="model.repr"):
        train_pipeline.train_and_evaluate(_config(data_dir), tmp_path / "mine", progress=False, model=MyMLP(width=8))


def test_any_module_gets_the_zoo_run_directory_and_analysis(tmp_path, data_dir):
    c = _config(data_dir, num_epochs=1, init_scales=(0.5, 1.0))
    df = train_pipeline.train_and_evaluate(c, tmp_path / "g", progress=False, model=Gated())
    assert len(df) == 2 * 2 * 2 and (df.test_acc > 0.3).all()
    params = rundir.load_params(tmp_path / "g" / "params.npz")
    assert {k: v["kernel"].shape for k, v in params.items()} == {
        "gate": (8, 784, 24),
        "value": (8, 784, 24),
        "out": (8, 24, 10),
    }
    # Paired seeds: at epoch 0 a network with init scale 1.0 is twice its twin with 0.5 (same seed and rate).
    hp = pd.read_csv(tmp_path / "g" / "hparams.csv")
    small = hp[hp.init_scale == 0.5].iloc[1]
    twin = hp[(hp.init_scale == 1.0) & (hp.seed == small.seed) & (hp.learning_rate == small.learning_rate)]
    first = checkpoints.restore_params(tmp_path / "g", 0)
    k = np.asarray(first["gate"]["kernel"])
    np.testing.assert_allclose(k[int(small.network)] * 2, k[int(twin.network.iloc[0])], rtol=1e-6)
    fast = dict(n_permutations=199, n_boot=199)  # the claims' p-values are not what this test checks
    out = analyze.analyze_workdir(tmp_path / "g", metrics=["wasserstein"], **fast)
    # Its dynamics need the module itself: skipped with the reason, then computed when it is given.
    assert "model=" in json.loads((out / "summary.json").read_text())["dynamics"]["skipped"]
    out = analyze.analyze_workdir(
        tmp_path / "g",
        metrics=["wasserstein"],
        model=Gated(),
        dynamics=True,
        dynamics_options=dict(probe_size=100, probe_steps=50, num_planes=1, resolution=4),
        **fast,
    )
    rwc = pd.read_csv(out / "rwc.csv")
    assert set(rwc.layer) == {"gate", "value", "out"} and len(rwc) == 3 * 8 and (rwc.rwc_l1_ratio > 0).all()
    assert set(pd.read_csv(out / "modularity.csv").layer) == {"input", "gate", "value", "out"}
    st = pd.read_csv(out / "stats.csv")
    assert {"gate/kernel", "value", "out", "__all__"} <= set(st.layer)
    with np.load(out / "distances" / "wasserstein.npz") as z:
        assert z["gate/kernel"].shape == (8, 8)
