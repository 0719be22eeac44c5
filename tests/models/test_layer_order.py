"""Imported files keep their stored (insertion) order; nothing sorts layer names."""

import numpy as np

from jaxweights import models
from jaxweights.io import importers
from jaxweights.weights import strength


def test_imported_npz_keeps_its_stored_order(tmp_path):
    rng = np.random.default_rng(0)
    # names sort opposite to the stored (execution) order, and Dense_10 sorts before Dense_2
    names = ["z_in", "Dense_2", "Dense_10", "a_out"]
    sizes = [5, 4, 4, 3, 2]
    arrays = {}
    for name, (a, b) in zip(names, zip(sizes[:-1], sizes[1:])):
        arrays[f"{name}/kernel"] = rng.normal(size=(3, a, b)).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(size=(3, b)).astype(np.float32)
    np.savez(tmp_path / "w.npz", **arrays)
    flat = importers.read(tmp_path / "w.npz", stacked=True)
    assert models.layer_order(flat) == names
    ns = strength.node_strength(flat)
    assert list(ns) == ["input", *names]
    np.testing.assert_allclose(ns["input"], arrays["z_in/kernel"].sum(2), rtol=1e-6)


def _first_use_order(model, image_shape) -> list[str]:
    """Leaf paths in the order the forward pass first reads them: an independent reference.

    Traces ``model.apply`` to a jaxpr with the parameters as inputs and walks its equations in
    program order, recording the first equation that consumes each parameter (nested jaxprs of
    e.g. ``pjit``/``custom_jvp`` count where they are called).
    """
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((1, *image_shape), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]  # shapes only, no compile
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
    closed = jax.make_jaxpr(lambda *ls: model.apply({"params": jax.tree_util.tree_unflatten(treedef, ls)}, x))(
        *[v for _, v in leaves]
    )
    jaxpr = closed.jaxpr
    var_name = {id(v): n for v, n in zip(jaxpr.invars, names)}
    seen: list[str] = []
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            n = var_name.get(id(v))
            if n is not None and n not in seen:
                seen.append(n)
    assert sorted(seen) == sorted(names), set(names) - set(seen)  # every parameter is read
    return seen


def test_depth_follows_the_forward_pass_including_pos_embedding_and_cls():
    """Depths in [0, 1] by execution order: cls and pos_embedding sit where the ViT reads them."""
    for pooling in ("cls", "mean"):
        vit = models.make_model(
            "vit", num_classes=10, image_shape=(8, 8, 1), patch_size=4, width=8, depth=2, num_heads=2, pooling=pooling
        )
        ref_layers = list(dict.fromkeys(models.layer_of(p) for p in _first_use_order(vit, (8, 8, 1))))
        layers = models.layer_order(models.param_order(vit, (8, 8, 1)))
        assert layers == ref_layers
        depth = models.layer_depths(layers)
        n = len(ref_layers)
        assert depth == {name: i / (n - 1) for i, name in enumerate(ref_layers)}
        first = ["embedding", "cls", "pos_embedding"] if pooling == "cls" else ["embedding", "pos_embedding"]
        assert ref_layers[: len(first)] == first and ref_layers[-2:] == ["norm", "head"]
        for k, name in enumerate(first):  # 0, 1/(n-1), 2/(n-1): never left out, never sorted to the end
            assert depth[name] == k / (n - 1)
        assert ("cls" in depth) == (pooling == "cls") and "pos_embedding" in depth
    for name, kw in (("mlp", {"hidden": [3] * 11}), ("cnn", {"channels": (2, 3), "dense": (4,)})):
        m = models.make_model(name, num_classes=10, image_shape=(8, 8, 1), **kw)
        ref = list(dict.fromkeys(models.layer_of(p) for p in _first_use_order(m, (8, 8, 1))))
        assert models.layer_order(models.param_order(m, (8, 8, 1))) == ref
