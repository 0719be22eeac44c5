"""Learning dynamics: CKA, modularity and RWC against direct references, and a real MNIST zoo end to end."""

import itertools
import json
import shutil

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from networkx.algorithms.community import modularity as nx_modularity
from scipy.stats import ortho_group
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from jaxweights import cli, dynamics, rundir, strength
from tests.test_cli import REPO

# ------------------------------------------------------------------ references


def np_linear_cka(x, y):
    """Kornblith et al. 2019, eq. (feature form): ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), centred columns."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_hsic_u_statistic(k, l):
    """Unbiased HSIC as the U-statistic over distinct 4-tuples (Song et al. 2012, Theorem 2)."""
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def np_hsic_unbiased(k, l):
    """Song et al. 2012, eq. 5, in closed form."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt) + one @ kt @ one * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def np_minibatch_cka(x, y, b):
    """Nguyen et al. 2021: HSIC₁ averaged over consecutive minibatches of size b."""
    m = x.shape[0] // b
    h = np.zeros(3)
    for i in range(m):
        xi, yi = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        k, l = xi @ xi.T, yi @ yi.T
        h += [np_hsic_unbiased(k, l), np_hsic_unbiased(k, k), np_hsic_unbiased(l, l)]
    return h[0] / np.sqrt(h[1] * h[2])


def np_rwc(prev, cur):
    """Numpy loop: (||Δw||₁/||w||₁, mean of |Δw|/|w| over w != 0, zeros left out)."""
    num = den = acc = 0.0
    count = zeros = 0
    for a, b in zip(prev.ravel(), cur.ravel()):
        num += abs(b - a)
        den += abs(a)
        if a == 0:
            zeros += 1
        else:
            acc += abs(b - a) / abs(a)
            count += 1
    return num / den if den else np.nan, acc / count if count else np.nan, zeros


# ------------------------------------------------------------------ CKA


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20))
    y = x @ rng.normal(size=(20, 30)) + 0.5 * rng.normal(size=(60, 30))
    return x, y


def test_linear_cka_equals_numpy(x64, feats):
    x, y = feats
    assert float(dynamics.cka_linear(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(np_linear_cka(x, y), rel=1e-10)


def test_unbiased_hsic_equals_u_statistic_and_closed_form(x64):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    k, l = x @ x.T, y @ y.T
    ours = float(dynamics.hsic_unbiased(jnp.asarray(k), jnp.asarray(l)))
    assert ours == pytest.approx(np_hsic_u_statistic(k, l), rel=1e-9)
    assert ours == pytest.approx(np_hsic_unbiased(k, l), rel=1e-9)


def test_minibatch_cka_equals_numpy(x64, feats):
    x, y = feats
    ours = float(dynamics.cka_minibatch(jnp.asarray(x), jnp.asarray(y), 20))
    assert ours == pytest.approx(np_minibatch_cka(x, y, 20), rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_identity_orthogonal_and_scaling_invariance(x64, feats, unbiased):
    x, y = feats
    cka = (
        (lambda a, b: dynamics.cka_minibatch(jnp.asarray(a), jnp.asarray(b), 20))
        if unbiased
        else (lambda a, b: dynamics.cka_linear(jnp.asarray(a), jnp.asarray(b)))
    )
    base = float(cka(x, y))
    assert float(cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(30, random_state=3)
    assert float(cka(x, y @ q)) == pytest.approx(base, rel=1e-10)
    assert float(cka(7.5 * x, 0.01 * y)) == pytest.approx(base, rel=1e-10)
    assert 0.0 < base < 1.0


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_equals_pairwise_loop(x64, unbiased):
    rng = np.random.default_rng(2)
    reps = [rng.normal(size=(40, d)) for d in (5, 8, 13)]
    reps[2][:, :5] += 2 * reps[0]
    if unbiased:
        grams = jnp.stack([dynamics._minibatch_grams(jnp.asarray(r), 10) for r in reps])
        ref = [[np_minibatch_cka(a, b, 10) for b in reps] for a in reps]
    else:
        grams = jnp.stack([dynamics.gram(jnp.asarray(r)) for r in reps])
        ref = [[np_linear_cka(a, b) for b in reps] for a in reps]
    np.testing.assert_allclose(np.asarray(dynamics.cka_matrix(grams, unbiased)), np.asarray(ref), rtol=1e-9)


def np_minibatch_cka_centred(x, y, b):
    """Nguyen et al. 2021 in float64, each minibatch's features centred first (allowed: see the offset test)."""
    h = np.zeros(3)
    for i in range(x.shape[0] // b):
        xi, yi = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        xi, yi = xi - xi.mean(0), yi - yi.mean(0)
        k, l = xi @ xi.T, yi @ yi.T
        h += [np_hsic_unbiased(k, l), np_hsic_unbiased(k, k), np_hsic_unbiased(l, l)]
    return h[0] / np.sqrt(h[1] * h[2])


def test_unbiased_hsic_is_invariant_to_a_constant_feature_offset(x64):
    """Why centring the features is allowed for the unbiased HSIC: Song et al.'s estimator on the
    uncentred Gram matrices (U-statistic and closed form, float64 at offsets where float64 is still
    exact enough) does not change when a constant vector is added to every example's features."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    base = np_hsic_u_statistic(x @ x.T, y @ y.T)
    xo, yo = x + rng.normal(size=4) * 3, y + rng.normal(size=3) * 3
    assert np_hsic_u_statistic(xo @ xo.T, yo @ yo.T) == pytest.approx(base, rel=1e-9)
    assert np_hsic_unbiased(xo @ xo.T, yo @ yo.T) == pytest.approx(base, rel=1e-9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert np_hsic_unbiased(xc @ xc.T, yc @ yc.T) == pytest.approx(base, rel=1e-9)
    x, y = rng.normal(size=(60, 20)), rng.normal(size=(60, 30))
    ours = float(dynamics.cka_minibatch(jnp.asarray(x + 5.0), jnp.asarray(y - 2.0), 20))
    assert ours == pytest.approx(np_minibatch_cka(x + 5.0, y - 2.0, 20), rel=1e-8)  # uncentred float64 formula


@pytest.mark.parametrize("mean", [0.0, 1e2, 1e3, 1e4])
def test_cka_in_float32_equals_float64_reference_at_large_feature_means(mean):
    """Blown-up networks have activations with large means: float32 CKA must still match float64.

    Uncentred float32 Gram matrices gave unbiased CKA 1.58 at mean 1e2 and NaN at 1e3. Measured
    error with centred features: below 2e-7 at every mean (10 seeds); tolerance 1e-5."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 30))
    y = x @ rng.normal(size=(30, 40)) + 2 * rng.normal(size=(200, 40))
    off = mean * rng.uniform(0.5, 1.5, size=40)
    xs, ys = (x + off[:30]).astype(np.float32), (y + off).astype(np.float32)  # what float32 activations hold
    x64_, y64_ = xs.astype(np.float64), ys.astype(np.float64)
    lin = lambda a, b: float(dynamics.cka_linear(jnp.asarray(a), jnp.asarray(b)))
    unb = lambda a, b: float(dynamics.cka_minibatch(jnp.asarray(a), jnp.asarray(b), 50))
    assert lin(xs, ys) == pytest.approx(np_linear_cka(x64_, y64_), abs=1e-5)
    assert unb(xs, ys) == pytest.approx(np_minibatch_cka_centred(x64_, y64_, 50), abs=1e-5)
    q = ortho_group.rvs(40, random_state=7).astype(np.float32)
    for cka in (lin, unb):
        assert cka(xs, xs) == pytest.approx(1.0, abs=1e-5)
        base = cka(xs, ys)
        assert cka(xs, ys @ q) == pytest.approx(base, abs=1e-5)  # orthogonal transform
        assert cka(3.0 * xs, 0.25 * ys) == pytest.approx(base, abs=1e-5)  # isotropic scaling
        assert cka(xs + np.float32(1e3), ys) == pytest.approx(base, abs=1e-5)  # constant offset
    # The matrix form used for layer x layer, epoch x epoch and network x network CKA agrees.
    for unbiased, ref in ((False, np_linear_cka(x64_, y64_)), (True, np_minibatch_cka_centred(x64_, y64_, 50))):
        g = jnp.stack(
            [
                dynamics._minibatch_grams(jnp.asarray(a), 50) if unbiased else dynamics.gram(jnp.asarray(a))
                for a in (xs, ys)
            ]
        )
        assert float(dynamics.cka_matrix(g, unbiased)[0, 1]) == pytest.approx(ref, abs=1e-5)


# ------------------------------------------------------------------ modularity


def test_knn_graph_and_modularity_equal_sklearn_and_networkx(mnist_slice):
    x_tr, y_tr = mnist_slice[0][:300], mnist_slice[1][:300]
    x = x_tr.reshape(300, -1).astype(np.float32) / 255.0
    a = np.asarray(dynamics.knn_graph(jnp.asarray(x), 3))
    # sklearn: the 3 nearest other samples by cosine distance.
    idx = NearestNeighbors(n_neighbors=4, metric="cosine").fit(x).kneighbors(x, return_distance=False)
    a_dir = np.zeros((300, 300))
    for i, row in enumerate(idx):
        a_dir[i, [j for j in row if j != i][:3]] = 1
    np.testing.assert_array_equal(a, (a_dir + a_dir.T) / 2)
    g = nx.from_numpy_array(a)
    comms = [set(np.flatnonzero(y_tr == c).tolist()) for c in range(10)]
    ref = nx_modularity(g, comms, weight="weight")
    ours = float(dynamics.modularity(jnp.asarray(a), jnp.asarray(y_tr), 10))
    assert ours == pytest.approx(ref, abs=1e-6)
    assert ours > 0.3  # raw MNIST pixels already cluster by digit
    # The neighbour-list form used for whole zoos gives the same number.
    assert float(dynamics.knn_modularity(jnp.asarray(x), jnp.asarray(y_tr), 10, 3)) == pytest.approx(ref, abs=1e-6)


def test_modularity_of_a_representation_without_signal_is_nan(mnist_slice):
    """A dead (all-zero) or constant layer, or NaN/inf activations: NaN, not a number that looks real
    (the k-NN graph of identical points only shows how ties are broken: −0.22 on these images)."""
    x = mnist_slice[0][:200].reshape(200, -1).astype(np.float32) / 255.0
    y = jnp.asarray(mnist_slice[1][:200])
    q = lambda r: float(dynamics.knn_modularity(jnp.asarray(r, jnp.float32), y, 10, 3))
    assert q(x) > 0.3  # the real images: a real reading (equal to networkx in the test above)
    assert q(x * np.float32(1e20)) == pytest.approx(q(x), abs=1e-6)  # huge but finite: squares overflow float32
    const = np.tile(np.linspace(-1, 2, x.shape[1], dtype=np.float32), (200, 1))
    with_nan, with_inf = x.copy(), x.copy()
    with_nan[3, 5], with_inf[7, 1] = np.nan, np.inf
    cases = {"zero": np.zeros_like(x), "constant": const, "nan": with_nan, "inf": with_inf}
    for name, r in cases.items():
        assert np.isnan(q(r)), name
    for name, code in (
        ("zero", dynamics.NO_SIGNAL),
        ("constant", dynamics.NO_SIGNAL),
        ("nan", dynamics.NON_FINITE),
        ("inf", dynamics.NON_FINITE),
    ):
        assert int(dynamics.representation_status(jnp.asarray(cases[name]))) == code, name
    assert int(dynamics.representation_status(jnp.asarray(x))) == dynamics.OK
    # the pruning rule skips the NaN layer instead of reading a plateau into it
    assert dynamics.pruning_candidates([0.1, np.nan, 0.3, 0.5], ["input", "Dense_0", "Dense_1", "Dense_2"]) == []


def test_pruning_candidates_rule():
    layers = ["input", "Dense_0", "Dense_1", "Dense_2", "Dense_3"]
    assert dynamics.pruning_candidates([0.1, 0.2, 0.3, 0.4, 0.5], layers, tol=0.01) == []
    assert dynamics.pruning_candidates([0.1, 0.3, 0.305, 0.25, 0.6], layers, tol=0.01) == ["Dense_1", "Dense_2"]
    assert dynamics.pruning_candidates([0.5, 0.4, 0.45, 0.9, 0.1], layers, tol=0.01) == ["Dense_0"]  # never the output


# ------------------------------------------------------------------ RWC


def test_rwc_equals_numpy_loop_with_zero_weights():
    rng = np.random.default_rng(4)
    snaps = []
    for e in range(3):
        k0 = rng.normal(size=(2, 6, 5)).astype(np.float32)
        k0[0, :2] = 0.0  # zero weights in network 0
        k1 = rng.normal(size=(2, 5, 3)).astype(np.float32)
        if e == 0:
            k1[1] = 0.0  # an all-zero kernel in network 1
        snaps.append(
            {
                "Dense_0/kernel": k0,
                "Dense_0/bias": np.zeros((2, 5), np.float32),
                "Dense_1/kernel": k1,
                "Dense_1/bias": np.zeros((2, 3), np.float32),
            }
        )
    df = dynamics.relative_weight_change(snaps, [0, 1, 2])
    assert len(df) == 2 * 2 * 2
    for row in df.itertuples():
        prev, cur = (
            snaps[row.epoch - 1][f"{row.layer}/kernel"][row.network].astype(np.float64),
            snaps[row.epoch][f"{row.layer}/kernel"][row.network].astype(np.float64),
        )
        l1, me, zeros = np_rwc(prev, cur)
        np.testing.assert_allclose(row.rwc_l1_ratio, l1, rtol=1e-5)
        np.testing.assert_allclose(row.rwc_mean_elementwise, me, rtol=1e-5)
        assert row.zero_weights == zeros
    assert np.isnan(df.query("network == 1 and layer == 'Dense_1' and epoch == 1").rwc_l1_ratio).all()


# ------------------------------------------------------------------ a real MNIST zoo end to end


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("dyn")
    argv = [
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(tmp / "run"),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        "--config.max_train=1024",
        "--config.max_test=400",
        "--config.model.hidden=(32,16)",
        "--config.batch_size=64",
        "--config.num_seeds=2",
        "--config.init_scales=(1.0,)",
        "--config.num_epochs=2",
        "--config.learning_rates=(0.05,0.001)",
    ]
    assert cli.main(argv) == 0
    out = dynamics.write_dynamics(
        tmp / "run",
        tmp / "run" / "analysis",
        probe_size=200,
        cka_batch=50,
        probe_steps=200,
        num_planes=2,
        resolution=8,
        data_dir=str(data_dir),
    )
    return tmp / "run", out


def test_end_to_end_files_and_shapes(zoo):
    run, out = zoo
    for f in (
        "rwc.csv",
        "stats_over_epochs.csv",
        "modularity.csv",
        "cka.npz",
        "probes.csv",
        "pruning.json",
        "figures/rwc.png",
        "figures/rwc.csv",
        "figures/modularity_depth.png",
        "figures/stats_over_epochs.png",
    ):
        assert (out / f).exists(), f
    n, e, layers = 4, 3, ["input", "Dense_0", "Dense_1", "Dense_2"]
    with np.load(out / "cka.npz") as z:
        assert list(z["layers"]) == layers and list(z["epochs"]) == [0, 1, 2]
        assert z["linear_layers"].shape == (n, 4, 4) and z["unbiased_epochs"].shape == (n, 4, e, e)
        assert z["linear_networks"].shape == (4, n, n)
        for k in ("linear_layers", "unbiased_layers"):
            np.testing.assert_allclose(np.diagonal(z[k], axis1=1, axis2=2), 1.0, atol=1e-4)
            np.testing.assert_allclose(z[k], np.swapaxes(z[k], 1, 2), atol=1e-5)
        # Input representations are the same images for every network and epoch.
        np.testing.assert_allclose(z["linear_networks"][0], 1.0, atol=1e-4)
        np.testing.assert_allclose(z["linear_epochs"][:, 0], 1.0, atol=1e-4)
    mod = pd.read_csv(out / "modularity.csv")
    assert len(mod) == n * e * 4 and mod.modularity.between(-0.5, 1).all() and mod.reason.isna().all()
    probes = pd.read_csv(out / "probes.csv")
    assert len(probes) == n * e * 3
    last = probes[(probes.epoch == 2) & (probes.network == 0)]
    assert (last.probe_acc > 0.5).all()  # lr 0.05: a trained network's layers are linearly readable
    assert (last.region_agreement_final == 1.0).all()
    rwc = pd.read_csv(out / "rwc.csv")
    assert len(rwc) == n * 2 * 3 and (rwc.rwc_l1_ratio > 0).all()
    # lr 0.05 moves weights more than lr 0.001 (networks 0, 1 vs 2, 3; grid order lr-major).
    per_net = rwc.groupby("network").rwc_l1_ratio.mean()
    assert per_net[[0, 1]].min() > per_net[[2, 3]].max()


def test_end_to_end_rwc_and_stats_equal_snapshots(zoo):
    run, out = zoo
    epochs, snaps = dynamics.load_snapshots(run)
    assert epochs == [0, 1, 2]
    final = rundir.flatten_params(rundir.load_params(run / "params.npz"))
    for k, v in final.items():
        np.testing.assert_array_equal(snaps[-1][k], v)
    rwc = pd.read_csv(out / "rwc.csv")
    for row in rwc.sample(6, random_state=0).itertuples():
        l1, me, zeros = np_rwc(
            snaps[row.epoch - 1][f"{row.layer}/kernel"][row.network].astype(np.float64),
            snaps[row.epoch][f"{row.layer}/kernel"][row.network].astype(np.float64),
        )
        np.testing.assert_allclose([row.rwc_l1_ratio, row.rwc_mean_elementwise], [l1, me], rtol=1e-4)
    st = pd.read_csv(out / "stats_over_epochs.csv")
    one = st[(st.epoch == 1) & (st.statistic == "std") & (st.layer == "Dense_1/kernel")].sort_values("network")
    np.testing.assert_allclose(one.value, snaps[1]["Dense_1/kernel"].reshape(4, -1).std(1), rtol=1e-4)
    ns = strength.node_strength(snaps[2])
    fl = st[(st.epoch == 2) & (st.statistic == "layer_fluctuation") & (st.layer == "Dense_0")].sort_values("network")
    np.testing.assert_allclose(fl.value, ns["Dense_0"].astype(np.float64).std(1), rtol=1e-5)


def test_capture_equals_manual_forward_and_vmap_equals_loop(zoo, data_dir):
    run, out = zoo
    setup, xp, yp, _, _ = dynamics.probe_data(run, 200, str(data_dir))
    epochs, snaps = dynamics.load_snapshots(run)
    p = snaps[-1]
    reps = dynamics.capture_zoo(setup.model, p, xp[:50], chunk=3)
    assert list(reps) == ["input", "Dense_0", "Dense_1", "Dense_2"]
    x = np.asarray(xp[:50], np.float64).reshape(50, -1)
    for net in range(4):
        h0 = np.maximum(x @ p["Dense_0/kernel"][net] + p["Dense_0/bias"][net], 0)
        h1 = np.maximum(h0 @ p["Dense_1/kernel"][net] + p["Dense_1/bias"][net], 0)
        logits = h1 @ p["Dense_2/kernel"][net] + p["Dense_2/bias"][net]
        np.testing.assert_allclose(reps["Dense_0"][net], h0, atol=1e-4)
        np.testing.assert_allclose(reps["Dense_2"][net], logits, atol=1e-3)
        one = dynamics.capture(setup.model, rundir.unflatten_params({k: v[net] for k, v in p.items()}), xp[:50])
        for k in reps:
            np.testing.assert_allclose(reps[k][net], one[k], rtol=1e-5, atol=1e-5)
    # Modularity written for the last epoch equals networkx on the graph of the captured representation.
    full = dynamics.capture_zoo(setup.model, p, xp)
    a = np.asarray(dynamics.knn_graph(full["Dense_1"][0], 3))
    comms = [set(np.flatnonzero(np.asarray(yp) == c).tolist()) for c in range(10)]
    mod = pd.read_csv(out / "modularity.csv")
    q = mod.query("network == 0 and epoch == 2 and layer == 'Dense_1'").modularity.item()
    assert q == pytest.approx(nx_modularity(nx.from_numpy_array(a), comms, weight="weight"), abs=1e-5)
    # The JAX probe reads a layer about as well as scikit-learn's multinomial logistic regression.
    probes = pd.read_csv(out / "probes.csv")
    _, xe, ye = dynamics.probe_data(run, 200, str(data_dir))[2:]
    tr, te = np.asarray(full["Dense_0"][0]), np.asarray(dynamics.capture_zoo(setup.model, p, xe)["Dense_0"][0])
    mu, sd = tr.mean(0), tr.std(0) + 1e-6
    sk = LogisticRegression(max_iter=2000).fit((tr - mu) / sd, np.asarray(yp)).score((te - mu) / sd, np.asarray(ye))
    ours = probes.query("network == 0 and epoch == 2 and layer == 'Dense_0'").probe_acc.item()
    assert abs(ours - sk) < 0.08


def test_rwc_every_k_steps_replays_the_run(zoo, data_dir):
    run, out = zoo
    per_epoch = pd.read_csv(out / "rwc.csv")
    steps = 1024 // 64
    df = dynamics.rwc_every_k_steps(run, steps, data_dir=str(data_dir))  # one boundary per epoch
    assert sorted(df.epoch.unique()) == [1, 2] and (df.step == steps).all()
    m = per_epoch.merge(df, on=["network", "layer", "epoch"], suffixes=("_epoch", "_k"))
    assert len(m) == len(per_epoch)
    np.testing.assert_allclose(m.rwc_l1_ratio_k, m.rwc_l1_ratio_epoch, rtol=1e-5)
    fine = dynamics.rwc_every_k_steps(run, 4, epochs=[2], data_dir=str(data_dir))
    assert len(fine) == 4 * 3 * (steps // 4) and sorted(fine.step.unique()) == [4, 8, 12, 16]
    assert (fine.rwc_l1_ratio > 0).all()
    with pytest.raises(dynamics.DynamicsError, match="every"):
        dynamics.rwc_every_k_steps(run, 0)


def test_chunked_equals_all_at_once(zoo, data_dir):
    run, _ = zoo
    setup, xp, yp, _, _ = dynamics.probe_data(run, 200, str(data_dir))
    params = rundir.flatten_params(rundir.load_params(run / "params.npz"))
    names1, q1 = dynamics.modularity_curves(setup.model, params, xp, yp, 10, chunk=1)
    names4, q4 = dynamics.modularity_curves(setup.model, params, xp, yp, 10, chunk=4)
    assert names1 == names4
    np.testing.assert_allclose(q1, q4, atol=1e-6)


def _with_alarm(seconds, fn):
    """Runs fn; a hang (the old rejection loop of choose_triples) becomes a test failure."""
    import signal

    def boom(*_):
        raise TimeoutError(f"did not finish in {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_choose_triples_is_bounded_and_names_missing_classes():
    labels = np.repeat(np.arange(10), 20)  # grouped by class, as cifar10.npz's test split
    with pytest.raises(dynamics.DynamicsError):  # one class only: ends with an error, never hangs
        _with_alarm(20, lambda: dynamics.choose_triples(np.zeros(50, int), 2))
    t = _with_alarm(20, lambda: dynamics.choose_triples(labels, 50, seed=3, num_classes=10))
    assert t.shape == (50, 3) and all(len(set(labels[r].tolist())) == 3 for r in t)
    np.testing.assert_array_equal(t, dynamics.choose_triples(labels, 50, seed=3, num_classes=10))  # seeded
    for few in (np.zeros(50, int), np.repeat([0, 4], 25)):  # fewer than 3 classes: an error naming the others
        with pytest.raises(dynamics.DynamicsError, match=r"missing: \[.*1, 2, 3.*9\]"):
            _with_alarm(20, lambda: dynamics.choose_triples(few, 2, num_classes=10))


def test_probe_and_held_out_sets_are_stratified_on_class_grouped_cifar10(tmp_path, data_dir):
    """cifar10.npz's test split is stored grouped by class: the first images are all airplanes."""
    from jaxweights import config as config_lib

    with np.load(data_dir / "cifar10.npz") as z:
        y_all, x_all = z["y_test"].reshape(-1).astype(int), z["x_test"]
    assert (y_all[:500] == y_all[0]).all()  # the trap the old front slices fell into
    c = config_lib.default_config()
    with c.unlocked():
        c.dataset, c.max_train, c.max_test, c.batch_size = "cifar10", 256, 400, 64
    rundir.write_json(tmp_path / "config.json", c.to_dict())
    setup, xp, yp, xe, ye = dynamics.probe_data(tmp_path, 200, str(data_dir))
    yp, ye = np.asarray(yp), np.asarray(ye)
    assert xp.shape[0] == 200 and xe.shape[0] == 200
    for y in (yp, ye):  # every class, in proportion (20 each, the split being balanced), not grouped
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 20))
        assert (np.diff(y) != 0).sum() > 100
    # the images are real test images with their own labels; probe and held-out sets are disjoint
    mean, std = np.asarray(setup.mean, np.float32), np.asarray(setup.std, np.float32)
    raw = lambda a: np.rint(np.asarray(a) * std + mean).astype(np.uint8)  # undo the standardisation
    key = {x.tobytes(): i for i, x in enumerate(x_all)}
    ip = [key[r.tobytes()] for r in raw(xp)]
    ie = [key[r.tobytes()] for r in raw(xe)]
    np.testing.assert_array_equal(y_all[ip], yp)
    np.testing.assert_array_equal(y_all[ie], ye)
    assert not set(ip) & set(ie)
    # seeded: the same draw again, another seed another draw
    assert np.array_equal(np.asarray(dynamics.probe_data(tmp_path, 200, str(data_dir), seed=0)[2]), yp)
    assert not np.array_equal(np.asarray(dynamics.probe_data(tmp_path, 200, str(data_dir), seed=2)[1]), xp)
    _with_alarm(20, lambda: dynamics.choose_triples(yp, 8, num_classes=10))


def test_bad_networks_do_not_change_healthy_readings_and_get_nan_with_reasons(zoo, data_dir):
    """A NaN network, an exploded one (every kernel x30: finite, huge activations) and a dead one
    (Dense_1 zeroed) beside the 4 healthy networks: the healthy networks' CKA, modularity and
    probes are those `write_dynamics` wrote for the healthy zoo alone; the bad ones get NaN
    (excluded or non-finite) and the dead layers' modularity NaN with its reason."""
    run, out = zoo
    setup, xp, yp, xe, ye = dynamics.probe_data(run, 200, str(data_dir))
    epochs, snaps = dynamics.load_snapshots(run)
    bad_snaps = []
    for snap in snaps:
        nan, big, dead = ({k: v[:1].copy() for k, v in snap.items()} for _ in range(3))
        nan["Dense_0/kernel"][:] = np.nan
        for k in big:
            big[k] *= 30.0 if k.endswith("kernel") else 1.0
        dead["Dense_1/kernel"][:], dead["Dense_1/bias"][:] = 0.0, 0.0
        bad_snaps.append({k: np.concatenate([snap[k], nan[k], big[k], dead[k]]) for k in snap})
    exclude = np.array([False] * 4 + [True, True, False])
    cka, mod, pr, _ = dynamics.representation_dynamics(  # the settings of the `zoo` fixture
        setup,
        bad_snaps,
        epochs,
        xp,
        yp,
        xe,
        ye,
        cka_batch=50,
        probe_steps=200,
        num_planes=2,
        resolution=8,
        exclude_N=exclude,
    )
    with np.load(out / "cka.npz") as z:
        for key in ("linear_networks", "unbiased_networks"):
            np.testing.assert_allclose(cka[key][:, :4, :4], z[key], rtol=1e-5, atol=1e-6, err_msg=key)
            assert np.isnan(cka[key][:, 4:6]).all() and np.isnan(cka[key][:, :, 4:6]).all(), key
            assert np.isfinite(cka[key][0, 6, :4]).all()  # the dead network is not excluded: its input is real
        for key in ("linear_layers", "linear_epochs", "unbiased_epochs"):
            np.testing.assert_allclose(cka[key][:4], z[key], rtol=1e-5, atol=1e-6, err_msg=key)
    healthy = lambda t: t[t.network < 4].reset_index(drop=True)
    ref_mod, ref_pr = pd.read_csv(out / "modularity.csv"), pd.read_csv(out / "probes.csv")
    np.testing.assert_allclose(healthy(mod).modularity, ref_mod.modularity, atol=1e-6)
    assert healthy(mod).reason.eq("").all()
    for col in ("probe_acc", "probe_train_acc", "region_agreement_final"):
        np.testing.assert_allclose(healthy(pr)[col], ref_pr[col], atol=1e-6, err_msg=col)
    # the NaN network: non-finite representations from Dense_0 on: NaN probes and modularity, with the reason
    p = pr[pr.network == 4]
    assert p.probe_acc.isna().all() and p.probe_train_acc.isna().all() and p.region_agreement_final.isna().all()
    m = mod[mod.network == 4]
    hidden = m[m.layer != "input"]
    assert hidden.modularity.isna().all() and (hidden.reason == dynamics.REASONS[dynamics.NON_FINITE]).all()
    assert m[m.layer == "input"].modularity.notna().all() and (m[m.layer == "input"].reason == "").all()
    # the dead network: Dense_1 is all zero (no signal), Dense_2 the bias alone (constant)
    d = mod[(mod.network == 6) & mod.layer.isin(["Dense_1", "Dense_2"])]
    assert d.modularity.isna().all() and (d.reason == dynamics.REASONS[dynamics.NO_SIGNAL]).all()
    # the exploded network keeps its own (finite) per-network readings; only across-network ones are NaN
    assert mod[mod.network == 5].modularity.notna().all()


def test_summaries_use_the_callers_optimal_and_exclude_masks(zoo):
    """dynamics.json is over optimal_N & ~exclude_N exactly, recomputed here with pandas; no rule of its own."""
    run, out = zoo
    rwc, mod, probes = (pd.read_csv(out / f) for f in ("rwc.csv", "modularity.csv", "probes.csv"))
    with np.load(out / "cka.npz") as z:
        cka = {k: z[k] for k in z.files}
    optimal, exclude = np.array([True, False, True, True]), np.array([False, False, False, True])
    s = dynamics.summarize(rwc, mod, probes, cka, optimal, ["Dense_1"], exclude_N=exclude, optimal_rule="top 25%")
    assert s["n_optimal"] == 2 and s["n_excluded"] == 1 and s["excluded"] == [3] and s["optimal_rule"] == "top 25%"
    good = [0, 2]
    for row in s["rwc"]["per_layer"]:
        v = rwc[(rwc.layer == row["layer"]) & rwc.network.isin(good) & (rwc.epoch == 2)]
        assert row["last_epoch"] == pytest.approx(v.rwc_l1_ratio.median())
    for row in s["modularity"]["per_layer"]:
        v = mod[(mod.layer == row["layer"]) & (mod.epoch == 2) & mod.network.isin(good)]
        assert row["modularity"] == pytest.approx(v.modularity.mean())
    for li, row in enumerate(s["cka"]["per_layer"]):
        assert row["across_networks"] == pytest.approx(cka["linear_networks"][li][0, 2])
    none = dynamics.summarize(rwc, mod, probes, cka, np.zeros(4, bool), [])  # no optimal network: NaN, no fallback
    assert none["n_optimal"] == 0 and all(np.isnan(r["last_epoch"]) for r in none["rwc"]["per_layer"])
    with pytest.raises(dynamics.DynamicsError, match="optimal_N: a boolean mask of the 4 networks"):
        dynamics.summarize(rwc, mod, probes, cka, np.array([1, 0, 1, 1]), [])
    with pytest.raises(dynamics.DynamicsError, match="exclude_N"):
        dynamics.summarize(rwc, mod, probes, cka, optimal, [], exclude_N=np.zeros(3, bool))


def test_plane_points_corners():
    a, b, c = (jnp.full((2, 2, 1), v, jnp.float32) for v in (0.0, 1.0, 3.0))
    pts = np.asarray(dynamics.plane_points(a, b, c, resolution=2, margin=0.0))
    np.testing.assert_allclose(pts[:, 0, 0, 0], [0.0, 3.0, 1.0, 4.0])  # a, c, b, b + c − a


def test_prune_cli(zoo, data_dir, capsys):
    run, out = zoo
    assert (
        cli.main(["prune", "--workdir", str(run), "--layers", "Dense_1", "--data_dir", str(data_dir), "--noprogress"])
        == 0
    )
    report = pd.read_csv(run / "pruned" / "prune.csv")
    m = pd.read_csv(run / "metrics.csv")
    np.testing.assert_allclose(report.test_acc_original, m[m.epoch == 2].sort_values("network").test_acc)
    np.testing.assert_allclose(report.delta, report.test_acc_pruned - report.test_acc_original)
    with np.load(run / "pruned" / "params.npz") as z:
        assert z["Dense_0/kernel"].shape == (4, 784, 32) and z["Dense_1/kernel"].shape == (4, 32, 10)
    info = json.loads((run / "pruned" / "prune.json").read_text())
    assert info["hidden_before"] == [32, 16] and info["hidden_after"] == [32]
    assert "pruned zoo" in capsys.readouterr().out
    assert cli.main(["prune", "--workdir", str(run), "--layers", "Dense_2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Dense_2" in err[0] and "not a hidden layer" in err[0]


def test_prune_candidates_average_the_callers_optimal_networks(zoo, data_dir):
    """With masks, the zoo curve is the mean of those networks' final modularity (as modularity.csv has it)."""
    from jaxweights import prune

    run, out = zoo
    optimal, exclude = np.array([True, True, False, True]), np.array([False, False, False, True])
    layers, info = prune.candidate_layers(
        run, probe_size=200, data_dir=str(data_dir), optimal_N=optimal, exclude_N=exclude
    )
    assert info["networks"] == [0, 1]
    mod = pd.read_csv(out / "modularity.csv")
    ref = mod[(mod.epoch == 2) & mod.network.isin([0, 1])].groupby("depth").modularity.mean().to_numpy()
    np.testing.assert_allclose(info["curve"], ref, atol=1e-5)
    assert layers == dynamics.pruning_candidates(ref, info["depth_names"], info["tol"])
    with pytest.raises(dynamics.DynamicsError, match="optimal_N"):
        prune.candidate_layers(run, probe_size=200, data_dir=str(data_dir), optimal_N=np.ones(3, bool))


# ------------------------------------------------------------------ wired into `jaxweights analyze`

ZOO_ARGS = [
    "--config.max_train=1024",
    "--config.max_test=400",
    "--config.model.hidden=(32,16)",
    "--config.batch_size=64",
    "--config.num_seeds=2",
    "--config.init_scales=(1.0,)",
    "--config.num_epochs=2",
    "--config.learning_rates=(0.05,0.001)",
]


def test_analyze_writes_dynamics_tables_report_sections_and_summary(zoo, data_dir, tmp_path, capsys):
    run, _ = zoo
    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("analysis", "pruned"))
    assert (
        cli.main(
            [
                "analyze",
                "--workdir",
                str(work),
                "--metrics",
                "ks",
                "--permutations",
                "200",
                "--bootstrap",
                "100",
                "--probe_size",
                "200",
                "--data_dir",
                str(data_dir),
            ]
        )
        == 0
    )
    out = work / "analysis"
    for f in (
        "rwc.csv",
        "stats_over_epochs.csv",
        "modularity.csv",
        "cka.npz",
        "probes.csv",
        "dynamics.json",
        "figures/rwc.png",
        "figures/modularity_depth.png",
        "figures/stats_over_epochs.png",
        "stats.csv",
    ):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    d = s["dynamics"]
    assert d == json.loads((out / "dynamics.json").read_text())
    # The summary's numbers are those of the tables, over the networks the caller marked optimal
    # (listed in pruning.json; every network when none are given).
    good = np.asarray(json.loads((out / "pruning.json").read_text())["networks"])
    assert d["n_optimal"] == len(good) and d["epochs"] == [0, 1, 2]
    rwc = pd.read_csv(out / "rwc.csv")
    for row in d["rwc"]["per_layer"]:
        v = rwc[(rwc.layer == row["layer"]) & rwc.network.isin(good)]
        assert row["first_epoch"] == pytest.approx(v[v.epoch == 1].rwc_l1_ratio.median())
        assert row["last_epoch"] == pytest.approx(v[v.epoch == 2].rwc_l1_ratio.median())
    mod = pd.read_csv(out / "modularity.csv")
    for row in d["modularity"]["per_layer"]:
        v = mod[(mod.layer == row["layer"]) & (mod.epoch == 2) & mod.network.isin(good)]
        assert row["modularity"] == pytest.approx(v.modularity.mean())
    with np.load(out / "cka.npz") as z:
        m = z["linear_networks"][2][np.ix_(good, good)]
        assert d["cka"]["per_layer"][2]["across_networks"] == pytest.approx(m[~np.eye(len(good), dtype=bool)].mean())
    html = (out / "report.html").read_text()
    for title in (
        "Learning dynamics: how much does each layer move?",
        "Representations: CKA and linear probes",
        "Modularity over depth and pruning candidates",
    ):
        assert title in html
    assert html.count("data:image/png;base64,") == len(s["figures"]) + 4  # rwc, stats, CKA, modularity
    # --nodynamics: none of it, and the previous analysis is replaced whole.
    assert (
        cli.main(
            [
                "analyze",
                "--workdir",
                str(work),
                "--metrics",
                "ks",
                "--permutations",
                "200",
                "--bootstrap",
                "100",
                "--nodynamics",
            ]
        )
        == 0
    )
    assert not (out / "rwc.csv").exists() and "dynamics" not in json.loads((out / "summary.json").read_text())


def test_analyze_without_snapshots_skips_by_default_and_refuses_when_asked(tmp_path, data_dir, capsys):
    argv = [
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(tmp_path / "run"),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        *ZOO_ARGS,
        "--config.keep_checkpoints=1",
    ]
    assert cli.main(argv) == 0
    assert (
        cli.main(
            [
                "analyze",
                "--workdir",
                str(tmp_path / "run"),
                "--metrics",
                "ks",
                "--permutations",
                "100",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "run" / "analysis" / "summary.json").read_text())
    assert "1 checkpoint(s)" in s["dynamics"]["skipped"] and "keep_checkpoints=0" in s["dynamics"]["skipped"]
    assert not (tmp_path / "run" / "analysis" / "rwc.csv").exists()
    capsys.readouterr()
    assert cli.main(["analyze", "--workdir", str(tmp_path / "run"), "--metrics", "ks", "--dynamics"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and "keep_checkpoints=0" in err[0]
    assert (tmp_path / "run" / "analysis" / "summary.json").exists()  # the previous analysis is kept


def test_chunked_run_and_memory_blocks_equal_the_whole_zoo(zoo, data_dir, tmp_path):
    run, out = zoo
    argv = [
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(tmp_path / "chunked"),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        *ZOO_ARGS,
        "--config.chunk_size=3",
    ]
    assert cli.main(argv) == 0
    assert [p.name for p in dynamics.snapshot_dirs(tmp_path / "chunked")] == ["00", "01"]
    kw = dict(
        probe_size=200, cka_batch=50, probe_steps=200, num_planes=2, resolution=8, data_dir=str(data_dir), figures=False
    )
    # memory_mb=1: one network per block, so the across-network CKA is assembled from 4 blocks.
    dyn = dynamics.write_dynamics(tmp_path / "chunked", tmp_path / "dyn", memory_mb=1, **kw)
    for f in ("rwc.csv", "modularity.csv", "probes.csv"):
        a, b = pd.read_csv(out / f), pd.read_csv(dyn / f)
        assert a.shape == b.shape and (a.network.to_numpy() == b.network.to_numpy()).all(), f
        num = a.select_dtypes("number").columns
        np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-3, atol=2e-3, err_msg=f)
    with np.load(out / "cka.npz") as za, np.load(dyn / "cka.npz") as zb:
        for k in ("linear_networks", "unbiased_networks", "linear_epochs", "linear_layers"):
            np.testing.assert_allclose(zb[k], za[k], atol=2e-3, err_msg=k)
    st_a, st_b = pd.read_csv(out / "stats_over_epochs.csv"), pd.read_csv(dyn / "stats_over_epochs.csv")
    key = ["epoch", "network", "layer", "statistic"]
    m = st_a[st_a.statistic == "std"].merge(st_b[st_b.statistic == "std"], on=key)
    assert len(m) == (st_a.statistic == "std").sum()
    np.testing.assert_allclose(m.value_y, m.value_x, rtol=1e-4)
    epochs, snaps = dynamics.load_snapshots(tmp_path / "chunked")
    assert epochs == [0, 1, 2] and snaps[0]["Dense_0/kernel"].shape == (4, 784, 32)
    # a chunk that lost an epoch's snapshot is refused by both readers, naming it
    import shutil

    shutil.rmtree(tmp_path / "chunked" / "chunks" / "01" / "checkpoints" / "1")
    for read in (
        lambda: dynamics.load_snapshots(tmp_path / "chunked"),
        lambda: dynamics.write_dynamics(tmp_path / "chunked", tmp_path / "dyn2", **kw),
    ):
        with pytest.raises(dynamics.DynamicsError, match=r"chunks/01/checkpoints: epochs \[0, 2\] differ"):
            read()
