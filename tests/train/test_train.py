"""The vmapped zoo trainer: vmapped == looped, no recompiles, isolation of diverging networks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxweights import config as config_lib
from jaxweights import models, train
from jaxweights.train import zoo


def _setup(**kw):
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(32,))
    return train.Setup(model=model, batch_size=64, mean=(33.3,), std=(78.6,), **kw)


def _grid(**lists):
    c = config_lib.default_config()
    c.num_seeds = lists.pop("num_seeds", 2)
    for k, v in lists.items():
        c[k] = v
    return config_lib.hyperparameter_grid(c)


def _run(setup, grid, x, y, epochs=1):
    fns = train.make_zoo_fns(setup, (28, 28, 1), 500)
    hp = train.hyper_from_grid(grid)
    state = fns.init(hp)
    for e in range(1, epochs + 1):
        state, m = fns.train_epoch(state, hp, jnp.int32(e), x, y)
    return state, m, fns


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_vmapped_equals_one_at_a_time(mnist_slice, optimizer):
    x, y, _, _ = mnist_slice
    setup = _setup(optimizer=optimizer, schedule="cosine", total_steps=64)
    # Adam is near sign-descent: with a large step, float32 rounding differences between a
    # batched and a single matmul flip the sign of tiny updates, so it gets small rates.
    lrs = [0.01, 0.1] if optimizer == "sgd" else [1e-4, 1e-3]
    grid = _grid(
        learning_rates=lrs,
        init_scales=[0.5, 1.0],
        label_noises=[0.0, 0.3],
        train_fractions=[1.0, 0.5],
        weight_decays=[0.0, 1e-3],
        num_seeds=1,
    )
    grid = grid.iloc[::5].reset_index(drop=True)  # 7 networks spread over the grid
    together, m_all, _ = _run(setup, grid, x, y, epochs=2)
    rtol, atol = (2e-5, 2e-6) if optimizer == "sgd" else (1e-3, 2e-4)  # Adam moves a weight up to 0.26 here
    for i in range(len(grid)):
        alone, m_one, _ = _run(setup, grid.iloc[[i]], x, y, epochs=2)
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a[i], b[0], rtol=rtol, atol=atol)
        np.testing.assert_allclose(m_all["train_loss"][i], m_one["train_loss"][0], rtol=1e-5)


def test_second_epoch_does_not_recompile(mnist_slice, monkeypatch):
    """The zoo's jitted epoch and evaluation trace one network's code once, however many epochs run."""
    x, y, xt, yt = mnist_slice
    chex.clear_trace_counter()
    monkeypatch.setattr(zoo, "train_epoch", chex.assert_max_traces(zoo.train_epoch, n=1))
    monkeypatch.setattr(zoo, "evaluate", chex.assert_max_traces(zoo.evaluate, n=1))
    setup = _setup()
    grid = _grid(learning_rates=[0.1])
    state, _, fns = _run(setup, grid, x, y, epochs=3)  # a retrace raises here ...
    xp, yp, mp = train.pad_split(xt, yt, 500)
    fns.evaluate(state.params, xp, yp, mp)
    fns.evaluate(state.params, xp, yp, mp)  # ... or here


def test_training_learns_and_hyperparameters_matter(mnist_slice):
    x, y, xt, yt = mnist_slice
    setup = _setup()
    grid = _grid(learning_rates=[1e-4, 0.1], num_seeds=2)
    state, m, fns = _run(setup, grid, x, y, epochs=3)
    ev = fns.evaluate(state.params, *train.pad_split(xt, yt, 500))
    acc = np.asarray(ev["test_acc"])
    assert acc[2:].min() > 0.8  # lr 0.1 learns MNIST
    assert acc[:2].max() < acc[2:].min() - 0.2  # lr 1e-4 barely moves in 96 steps
    # same seed -> same initial weights and data order; the two seeds differ
    init = fns.init(train.hyper_from_grid(grid))
    k = init.params["Dense_0"]["kernel"]
    np.testing.assert_array_equal(k[0], k[2])
    assert not np.allclose(k[0], k[1])


def test_diverging_network_is_frozen_and_isolated(mnist_slice):
    x, y, _, _ = mnist_slice
    setup = _setup()
    good = _grid(learning_rates=[0.05], num_seeds=2)
    mixed = _grid(learning_rates=[0.05, 1e4], num_seeds=2)
    s_good, m_good, _ = _run(setup, good, x, y, epochs=2)
    s_mix, m_mix, _ = _run(setup, mixed, x, y, epochs=2)
    div = np.asarray(s_mix.diverged)
    assert div.tolist() == [False, False, True, True]
    for a, b in zip(jax.tree.leaves(s_good.params), jax.tree.leaves(s_mix.params)):
        np.testing.assert_allclose(a, b[:2], rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(b))  # frozen at the last finite values


def test_label_noise_and_train_fraction_change_training(mnist_slice):
    x, y, _, _ = mnist_slice
    setup = _setup()
    grid = _grid(learning_rates=[0.1], label_noises=[0.0, 0.5], train_fractions=[1.0, 0.25], num_seeds=1)
    state, m, _ = _run(setup, grid, x, y, epochs=1)
    acc = np.asarray(m["train_acc"])  # networks: (noise 0, f 1), (0, .25), (.5, 1), (.5, .25)
    assert acc[2] < acc[0] - 0.25  # half the labels are random
    k = np.asarray(state.params["Dense_0"]["kernel"])
    assert not np.allclose(k[0], k[1])


def test_step_flops_counts_the_matmuls():
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(512, 256, 128))
    setup = train.Setup(model=model, batch_size=128)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    macs = 784 * 512 + 512 * 256 + 256 * 128 + 128 * 10
    flops = train.step_flops(setup, params, (28, 28, 1))
    # forward 2·MACs, backward 4·MACs, less the input gradient of the first layer, which is not needed
    expected = 128 * (6 * macs - 2 * 784 * 512)
    assert abs(flops / expected - 1) < 0.05


@pytest.mark.parametrize("conv_impl", ["im2col", "xla"])
def test_vmap_chunk_equals_vmapping_all(mnist_slice, conv_impl):
    """`vmap_chunk=k`: `lax.map` over chunks of k networks (7 = 3 + 3 + 1) gives the vmapped results."""
    x, y, xt, yt = mnist_slice
    model = models.make_model(
        "cnn", num_classes=10, image_shape=(28, 28, 1), channels=(4,), dense=(8,), conv_impl=conv_impl
    )
    grid = _grid(learning_rates=[0.01, 0.05], init_scales=[0.5, 1.0], num_seeds=2).iloc[:7].reset_index(drop=True)
    xp, yp, mp = train.pad_split(xt, yt, 500)
    out, inits = [], []
    for k in (0, 3):
        setup = train.Setup(model=model, batch_size=64, mean=(33.3,), std=(78.6,), vmap_chunk=k)
        state, m, fns = _run(setup, grid, x[:1024], y[:1024], epochs=1)
        out.append((state, m, fns.evaluate(state.params, xp, yp, mp)))
        inits.append(fns.init(train.hyper_from_grid(grid)))
    (s0, m0, e0), (s3, m3, e3) = out
    # the initialisation runs in the same chunks (its random draws are large) and gives the same state
    for a, b in zip(jax.tree.leaves(inits[0]), jax.tree.leaves(inits[1])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s3.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m0["train_loss"], m3["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(e0["test_acc"], e3["test_acc"], atol=1e-3)
    assert e3["test_acc"].shape == (7,) and float(e3["test_acc"].max()) > 0.2  # above chance (0.1)


def test_step_cost_counts_the_whole_step_and_its_memory_traffic():
    """`step_cost`: the compiled step's FLOPs (matmuls + update) and bytes, per network."""
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(64, 32))
    n_params = 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    costs = {}
    for batch, n in ((32, 1), (32, 4), (512, 1)):
        setup = train.Setup(model=model, batch_size=batch, vmap_chunk=3)  # vmap_chunk is ignored
        costs[batch, n] = train.step_cost(setup, (28, 28, 1), n)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    for batch in (32, 512):
        flops, nbytes = costs[batch, 1]
        grad_flops = train.step_flops(train.Setup(model=model, batch_size=batch), params, (28, 28, 1))
        assert grad_flops <= flops < grad_flops * 1.1  # the update adds a few FLOPs per parameter
        assert nbytes >= 8 * n_params  # every float32 parameter is read and written at least once
    # per network, the same whatever the number vmapped together
    assert costs[32, 4][0] == pytest.approx(costs[32, 1][0], rel=0.02)
    assert costs[32, 4][1] == pytest.approx(costs[32, 1][1], rel=0.1)
    # a 16× larger batch: 16× the FLOPs but far fewer than 16× the bytes (the parameters are a fixed cost)
    assert costs[512, 1][0] == pytest.approx(16 * costs[32, 1][0], rel=0.05)
    assert costs[512, 1][1] / costs[512, 1][0] < 0.5 * costs[32, 1][1] / costs[32, 1][0]


def test_network_memory_counts_the_initialisation_temporaries():
    """The plan's per-network temporaries cover the init's random draws (several times the state)."""
    model = models.make_model("mlp", num_classes=10, image_shape=(28, 28, 1), hidden=(512, 256))
    setup = train.Setup(model=model, batch_size=8)  # a small batch: the step's temporaries are small
    state_b, temp_b = train.network_memory(setup, (28, 28, 1), 8)
    hp1 = train.Hyper(*(jnp.zeros((), jnp.int32 if f == "seed" else jnp.float32) for f in train.Hyper._fields))
    init = jax.jit(lambda h: train.init_network(setup, h, (28, 28, 1))).lower(hp1).compile().memory_analysis()
    assert init.temp_size_in_bytes > state_b  # the draws outweigh the state they make
    assert temp_b >= init.temp_size_in_bytes
    # the state's bytes are those of a real initialised network: 784-512-256-10 float32 parameters
    # (plain SGD keeps no optimizer state), the int32 step and the bool diverged flag
    real = train.init_network(setup, hp1, (28, 28, 1))
    assert state_b == sum(np.asarray(x).nbytes for x in jax.tree.leaves(real))
    n_params = 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert state_b == 4 * n_params + 4 + 1
    # the temporaries hold at least the largest kernel's random draw (784 × 512 float32)
    assert temp_b >= 784 * 512 * 4


@pytest.mark.parametrize("fraction", [0.3, 0.7, 1.0])
def test_epoch_indices_visit_every_kept_example_equally_often(fraction):
    """train_fraction f: a fixed kept subset of round(f·n), each kept example drawn floor or ceil of
    T/m times per epoch, in a fresh order each epoch (the old `subset[order % m]` drew a fixed 43%
    of them twice at f = 0.7)."""
    n, b = 1000, 32
    steps = n // b
    key = jax.random.PRNGKey(7)
    f = jnp.float32(fraction)
    idx = [np.asarray(train.epoch_indices(key, jnp.int32(e), f, n, steps, b)) for e in (1, 2, 3)]
    m = max(b, min(n, int(round(fraction * n))))
    for i in idx:
        assert i.shape == (steps * b,)
        counts = np.bincount(i, minlength=n)
        kept = np.flatnonzero(counts)
        if fraction < 1:
            assert len(kept) == m  # only (and all) kept examples
            q, r = divmod(steps * b, m)
            assert sorted(np.unique(counts[kept]).tolist()) == sorted({q, q + 1} if r else {q})
            assert np.sum(counts[kept] == q + 1) == r
        else:
            assert counts.max() == 1  # one partial pass: every example at most once
    if fraction < 1:
        assert all(set(i) == set(idx[0]) for i in idx)  # the same kept subset every epoch
    assert not np.array_equal(idx[0], idx[1]) and not np.array_equal(idx[1], idx[2])  # a fresh order
    # vmapped over networks with different fractions: the same schedules as one at a time
    fs = jnp.asarray([0.3, 0.7, 1.0], jnp.float32)
    batched = jax.vmap(lambda ff: train.epoch_indices(key, jnp.int32(1), ff, n, steps, b))(fs)
    np.testing.assert_array_equal(np.asarray(batched[{0.3: 0, 0.7: 1, 1.0: 2}[fraction]]), idx[0])


def test_reference_weight_is_at_least_the_unit_scale_initialisation():
    """A small init scale must not make ordinary learned weights look 100x blown up."""
    setup = _setup()
    hp = train.hyper_from_grid(_grid(init_scales=[0.1, 1.0, 3.0], num_seeds=1))
    ref = np.asarray(train.make_zoo_fns(setup, (28, 28, 1), 500).reference_weight(hp))
    init = jax.vmap(lambda h: train.init_network(setup, h, (28, 28, 1)))(hp)
    own = np.max([np.abs(np.asarray(x, np.float64)).reshape(3, -1).max(1) for x in jax.tree.leaves(init.params)], 0)
    # the MLP's biases start at 0, so its max |w| scales with the init scale
    np.testing.assert_allclose(own / [0.1, 1.0, 3.0], own[1], rtol=1e-6)
    np.testing.assert_allclose(ref, [own[1], own[1], own[2]], rtol=1e-6)


def test_exploded_network_is_flagged_and_matches_the_documented_rule(tmp_path, data_dir):
    """lr 0.5 with init scale 3 blows one network up to |w| ~ 3e4 with finite loss: exploded, while
    healthy networks are not; the flag and max |w| agree with numpy on the saved files."""
    from jaxweights.io import checkpoints
    from jaxweights.pipelines import train as train_pipeline

    c = config_lib.default_config()
    c.data_dir, c.model.hidden = str(data_dir), (128, 64)
    c.max_train, c.max_test, c.num_epochs, c.num_seeds = 2048, 500, 1, 2
    c.learning_rates, c.init_scales = (0.05, 0.5), (1.0, 3.0)
    df = train_pipeline.train_and_evaluate(c, tmp_path / "run", progress=False)
    with np.load(tmp_path / "run" / "params.npz") as z:
        w_max = np.max([np.abs(z[k].astype(np.float64)).reshape(len(df), -1).max(1) for k in z.files], 0)
    init = checkpoints.restore_params(tmp_path / "run", 0)
    w0 = np.max([np.abs(np.asarray(x, np.float64)).reshape(len(df), -1).max(1) for x in jax.tree.leaves(init)], 0)
    np.testing.assert_allclose(df.max_abs_weight, w_max, rtol=1e-6)
    # init scales >= 1: the yardstick is the network's own initial max |w|
    rule = ~df.diverged & ((df.test_loss > 10 * np.log(10)) | (w_max > 100 * w0) | ~np.isfinite(df.test_loss))
    np.testing.assert_array_equal(df.exploded, rule)
    blown = df[df.exploded]
    assert len(blown) >= 1 and (blown.learning_rate == 0.5).all() and (blown.init_scale == 3.0).all()
    assert np.isfinite(blown.max_abs_weight).all() and (blown.max_abs_weight > 1e3).all()
    healthy = df[df.learning_rate == 0.05]
    assert not healthy.exploded.any() and not healthy.diverged.any() and (healthy.test_acc > 0.5).all()
    # trained in 2 chunks of 4, 3 networks vmapped at a time: the same flags and max |w|
    c.chunk_size, c.vmap_chunk = 4, 3
    chunked = train_pipeline.train_and_evaluate(c, tmp_path / "chunked", progress=False)
    assert (tmp_path / "chunked" / "chunks" / "01").is_dir()
    np.testing.assert_array_equal(chunked.exploded, df.exploded)
    np.testing.assert_allclose(chunked.max_abs_weight, df.max_abs_weight, rtol=1e-4)
