"""k-NN graph modularity (Lu et al. 2022) against scikit-learn and networkx; pruning rule; no recompiles."""

import importlib

import chex
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from networkx.algorithms.community import modularity as nx_modularity
from sklearn.neighbors import NearestNeighbors

from jaxweights import dynamics
from jaxweights.io import rundir
from jaxweights.models import paths
from tests.dynamics.references import np_knn_adjacency

# the module (the package's `modularity` attribute is the function of that name)
modularity_module = importlib.import_module("jaxweights.dynamics.communities")


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


@pytest.fixture(scope="module")
def final_zoo(dynamics_zoo, data_dir):
    run, _ = dynamics_zoo
    setup, xp, yp, _, _ = dynamics.probe_data(run, 200, str(data_dir))
    return setup, xp, yp, paths.flatten(rundir.load_params(run / "params.npz"))


def test_modularity_curves_chunked_equal_all_at_once_and_compile_once(final_zoo, monkeypatch):
    """`modularity_curves` is called per run by `prune`: its program is built once, so three calls trace
    each representation shape (input, Dense_0, Dense_1, Dense_2) once at most."""
    setup, xp, yp, params = final_zoo
    chex.clear_trace_counter()
    traced = chex.assert_max_traces(modularity_module._zoo_modularity, n=4)
    monkeypatch.setattr(modularity_module, "_zoo_modularity", traced)
    names1, q1 = dynamics.modularity_curves(setup.model, params, xp, yp, 10, chunk=1)
    names4, q4 = dynamics.modularity_curves(setup.model, params, xp, yp, 10, chunk=4)
    _, again = dynamics.modularity_curves(setup.model, params, xp, yp, 10, chunk=4)
    assert names1 == names4 == ["input", "Dense_0", "Dense_1", "Dense_2"]
    np.testing.assert_allclose(q1, q4, atol=1e-6)
    np.testing.assert_array_equal(again, q4)
    # every entry equals networkx on the float64 numpy k-NN graph of the same representation
    reps = dynamics.capture_zoo(setup.model, params, xp)
    comms = [set(np.flatnonzero(np.asarray(yp) == c).tolist()) for c in range(10)]
    for li, name in enumerate(names1):
        for net in (0, 3):
            a = np_knn_adjacency(np.asarray(reps[name][net]), 3)
            ref = nx_modularity(nx.from_numpy_array(a), comms, weight="weight")
            assert q1[net, li] == pytest.approx(ref, abs=1e-5), (name, net)
