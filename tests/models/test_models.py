import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxweights import models
from jaxweights.models import layers


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(28, 28), (7, 9)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_im2col_conv_equals_lax_conv(stride, hw, padding):
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, *hw, 3))
    k = jax.random.normal(kk, (3, 3, 3, 5))
    ours = layers._conv_im2col(x, k, stride, padding)
    ref = jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_conv_impls_share_parameters_and_outputs():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    a = models.make_model("cnn", num_classes=10, image_shape=(28, 28, 1), channels=(4, 8), dense=(16,))
    b = models.make_model("cnn", num_classes=10, image_shape=(28, 28, 1), channels=(4, 8), dense=(16,), conv_impl="xla")
    p = a.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(a.apply(p, x), b.apply(p, x), rtol=1e-4, atol=1e-5)


def test_parameter_paths_and_shapes():
    x = jnp.zeros((1, 28, 28, 1))
    mlp = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(5, 7))
    p = jax.eval_shape(mlp.init, jax.random.PRNGKey(0), x)["params"]  # shapes only: nothing compiled
    assert {k: v["kernel"].shape for k, v in p.items()} == {"Dense_0": (784, 5), "Dense_1": (5, 7), "Dense_2": (7, 10)}
    zoo = models.make_model("small_cnn_zoo", num_classes=10, image_shape=(28, 28, 1))
    p = jax.eval_shape(zoo.init, jax.random.PRNGKey(0), x)["params"]
    assert [p[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [(3, 3, 1, 16), (3, 3, 16, 16), (3, 3, 16, 16)]
    assert p["Dense_0"]["kernel"].shape == (16, 10)
    vit = models.make_model(
        "vit", num_classes=10, image_shape=(32, 32, 3), patch_size=4, width=32, depth=2, num_heads=4
    )
    p = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert p["embedding"]["kernel"].shape == (48, 32)
    assert p["pos_embedding"].shape == (1, 65, 32)  # 64 patches + class token
    assert set(p) >= {"encoder_0", "encoder_1", "norm", "head", "cls"}


@pytest.mark.parametrize(
    "scheme,std",
    [
        ("normal", 1.0),
        ("truncated_normal", 1.0),
        ("uniform", 1 / np.sqrt(3)),
        ("fan_in", 1 / np.sqrt(400)),
        ("fan_out", 1 / np.sqrt(300)),
        ("fan_avg", 1 / np.sqrt(350)),
    ],
)
def test_init_schemes_have_the_documented_scale(scheme, std):
    w = models.kernel_init(scheme)(jax.random.PRNGKey(0), (400, 300))
    assert abs(float(jnp.std(w)) / std - 1) < 0.03


def test_scale_kernels_only_touches_kernels():
    p = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "norm": {"scale": jnp.ones(2)}}
    s = models.scale_kernels(p, jnp.float32(3.0))
    assert float(s["Dense_0"]["kernel"][0, 0]) == 3.0
    assert float(s["Dense_0"]["bias"][0]) == 1.0 and float(s["norm"]["scale"][0]) == 1.0


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("resnet", {}, "model.name: unknown model 'resnet'"),
        ("vit", {"patch_size": 5}, "model.patch_size: 5 does not divide the 28×28 images"),
        ("vit", {"width": 30, "num_heads": 4}, "model.num_heads: 4 does not divide model.width=30"),
        ("mlp", {"hidden": (10, 0)}, "model.hidden: widths must be positive"),
        ("mlp", {"channels": (3,)}, "model.channels: not an option of model 'mlp'"),
        ("mlp", {"activation": "swish2"}, "model.activation: unknown activation"),
        ("cnn", {"conv_impl": "fft"}, "model.conv_impl"),
    ],
)
def test_bad_model_options_name_the_key(name, kw, match):
    with pytest.raises(ValueError, match=match):
        models.make_model(name, num_classes=10, image_shape=(28, 28, 1), **kw)


def test_param_order_is_execution_order_for_vit_mlp_cnn_and_user_modules(tmp_path):
    import flax.linen as nn

    from jaxweights import claims
    from jaxweights.io import rundir
    from jaxweights.weights import strength, units

    vit = models.param_order(models.make_model("vit", num_classes=10, image_shape=(28, 28, 1)), (28, 28, 1))
    layers = models.layer_order(vit)
    assert layers[:3] == ["embedding", "cls", "pos_embedding"] and layers[-2:] == ["norm", "head"]
    blocks = [l.split("/")[0] for l in layers if l.startswith("encoder_")]
    assert list(dict.fromkeys(blocks)) == sorted(set(blocks), key=lambda b: int(b.split("_")[1]))
    assert [l.split("/", 1)[1] for l in layers if l.startswith("encoder_0/")] == [
        "norm1",
        "attention/query",
        "attention/key",
        "attention/value",
        "attention/out",
        "norm2",
        "mlp_in",
        "mlp_out",
    ]  # call order: LayerNorm, attention, LayerNorm, MLP
    depth = models.layer_depths(layers)
    assert depth["embedding"] == 0.0 and depth["head"] == 1.0 and depth["pos_embedding"] == 2 / (len(layers) - 1)
    assert claims.layer_depths(layers) == depth

    mlp = models.make_model("mlp", num_classes=10, image_shape=(4, 4, 1), hidden=[8] * 10)
    order = models.param_order(mlp, (4, 4, 1))
    ls = models.layer_order(order)
    assert len(ls) == 11 and ls.index("Dense_2") < ls.index("Dense_10") and ls[-1] == "Dense_10"
    # vmapped init sorts keys (Dense_10 before Dense_2); the explicit order restores execution order
    params = jax.vmap(lambda k: mlp.init(k, jnp.zeros((1, 4, 4, 1)))["params"])(jax.random.split(jax.random.key(0), 2))
    assert list(models.flatten(params)) != order and list(models.flatten(params, order)) == order
    # params.npz written with the order keeps it; the strength chain follows it
    rundir.write_params(tmp_path / "params.npz", params, order=order)
    loaded = rundir.load_params(tmp_path / "params.npz")
    assert list(models.flatten(loaded)) == order
    assert list(strength.node_strength(loaded))[1:] == ls
    assert list(units.group_names(loaded, "layer")) == ls

    cnn = models.make_model("cnn", num_classes=10, image_shape=(8, 8, 1))
    assert models.layer_order(models.param_order(cnn, (8, 8, 1)))[:2] == ["Conv_0", "Conv_1"]

    class User(nn.Module):  # attribute names sort opposite to the call order
        def setup(self):
            self.z_first = nn.Dense(3)
            self.a_second = nn.Dense(2)

        def __call__(self, x):
            return self.a_second(nn.relu(self.z_first(x.reshape(x.shape[0], -1))))

    assert models.layer_order(models.param_order(User(), (2, 2, 1))) == ["z_first", "a_second"]


def test_run_params_are_loaded_in_execution_order(tmp_path):
    """A params.npz in sorted order next to a built-in model's config.json loads in execution order."""
    from jaxweights import config as config_lib
    from jaxweights.io import atomic, rundir

    cfg = config_lib.default_config()
    cfg.model.name, cfg.dataset = "mlp", "mnist"
    cfg.model.hidden = [4] * 10
    atomic.write_json(tmp_path / "config.json", cfg.to_dict())
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(4,) * 10)
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1)))["params"])(
        jax.random.split(jax.random.key(0), 2)
    )
    rundir.write_params(tmp_path / "params.npz", params)  # no order: sorted members
    loaded = rundir.load_params(tmp_path / "params.npz")
    assert models.layer_order(loaded) == [f"Dense_{i}" for i in range(11)]
