"""Every shipped config loads, validates and builds its model; each dataset trains end to end."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import train as train_lib
from jaxweights.pipelines import train as train_pipeline

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.py"))
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def load_config(path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid_and_builds(path):
    for arg in (None, "quick"):
        c = load_config(path, arg)
        config_lib.validate(c)
        assert len(config_lib.hyperparameter_grid(c)) >= 2  # a zoo, not one network
        shape = SHAPES[c.dataset]
        fake = data_lib.Dataset(
            c.dataset,
            np.zeros((512, *shape), np.uint8),
            np.zeros(512, np.int32),
            np.zeros((10, *shape), np.uint8),
            np.zeros(10, np.int32),
            10,
            "test",
        )
        setup = train_lib.make_setup(c, fake)
        params = jax.eval_shape(lambda: setup.model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
        assert jax.tree.leaves(params)
    full = load_config(path)
    if path.stem != "quickstart":
        # the study grids must span good and poor networks: learning rates over >= 2 decades
        assert max(full.learning_rates) / min(full.learning_rates) >= 100


@pytest.mark.parametrize(
    "dataset,family", [("fashion_mnist", "cnn"), ("cifar10", "vit"), ("cifar10", "cnn"), ("mnist", "vit")]
)
def test_each_dataset_and_family_trains_on_real_data(tmp_path, data_dir, dataset, family):
    from jaxweights.config.presets import study_config

    c = study_config(dataset, family, "quick")
    c.data_dir = str(data_dir)
    c.max_train, c.max_test, c.num_seeds = 512, 250, 1
    c.learning_rates = (c.learning_rates[1],)
    if family == "cnn":
        c.model.channels = (8, 16)
    else:
        c.model.width, c.model.depth = 32, 1
    df = train_pipeline.train_and_evaluate(c, tmp_path / "run", progress=False)
    assert len(df) == len(c.init_scales)
    assert np.isfinite(df.train_loss).all() and (df.train_loss < np.log(10) + 0.3).all()
    with np.load(tmp_path / "run" / "params.npz") as z:
        assert all(z[k].shape[0] == len(df) for k in z.files)


@pytest.mark.parametrize("key", ["explode_loss_factor", "explode_weight_factor"])
@pytest.mark.parametrize("bad", [0.5, 1.0, -3.0, float("inf"), float("nan")])
def test_explode_factors_are_validated(key, bad):
    c = config_lib.default_config()
    c[key] = bad  # (a ConfigDict refuses non-numbers for a float field by itself)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(c)
    msg = str(info.value)
    assert msg.startswith(f"config.{key}:") and "\n" not in msg


def test_explode_factor_defaults_and_overrides_validate():
    c = config_lib.default_config()
    assert (c.explode_loss_factor, c.explode_weight_factor) == (10.0, 100.0)
    c.explode_loss_factor, c.explode_weight_factor = 3, 1e6
    config_lib.validate(c)
