"""The whole pipeline on a real MNIST zoo: write_dynamics' tables against float64 numpy, scikit-learn-free
references and networkx; bad networks, caller masks, chunked runs and memory blocks."""

import json
import shutil

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from networkx.algorithms.community import modularity as nx_modularity

from jaxweights import cli, dynamics
from tests.conftest import DYNAMICS_OPTIONS, DYNAMICS_ZOO_ARGS, REPO
from tests.dynamics.references import (
    np_knn_adjacency,
    np_linear_cka,
    np_minibatch_cka_centred,
    np_mlp_forward,
)

LAYERS = ["input", "Dense_0", "Dense_1", "Dense_2"]


def test_end_to_end_files_shapes_and_cka_modularity_equal_references(dynamics_zoo, data_dir):
    """cka.npz equals linear CKA (Kornblith et al. 2019) and minibatch CKA (Nguyen et al. 2021) computed in
    float64 numpy on a float64 numpy forward pass of the saved snapshots, layer x layer, epoch x epoch and
    network x network; modularity.csv equals networkx on a numpy k-NN graph of the captured representations."""
    run, out = dynamics_zoo
    for f in ("rwc.csv", "stats_over_epochs.csv", "modularity.csv", "cka.npz", "probes.csv", "pruning.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "dynamics.json").read_text())["n_networks"] == 4
    n, e = 4, 3
    setup, xp, yp, _, _ = dynamics.probe_data(run, DYNAMICS_OPTIONS["probe_size"], str(data_dir))
    epochs, snaps = dynamics.load_snapshots(run)
    fw = [[np_mlp_forward(s, net, np.asarray(xp)) for net in range(n)] for s in snaps]  # [epoch][network]
    b = DYNAMICS_OPTIONS["cka_batch"]
    with np.load(out / "cka.npz") as z:
        assert list(z["layers"]) == LAYERS and list(z["epochs"]) == [0, 1, 2]
        assert z["linear_layers"].shape == (n, 4, 4) and z["unbiased_epochs"].shape == (n, 4, e, e)
        assert z["linear_networks"].shape == (4, n, n)
        for net in (0, 2):
            last = fw[-1][net]
            ref = [[np_linear_cka(last[a], last[c]) for c in LAYERS] for a in LAYERS]
            np.testing.assert_allclose(z["linear_layers"][net], ref, atol=1e-4)
            ref = [[np_minibatch_cka_centred(last[a], last[c], b) for c in LAYERS] for a in LAYERS]
            np.testing.assert_allclose(z["unbiased_layers"][net], ref, atol=1e-4)
            for li, layer in enumerate(LAYERS):
                ref = [[np_linear_cka(fw[i][net][layer], fw[j][net][layer]) for j in range(e)] for i in range(e)]
                np.testing.assert_allclose(z["linear_epochs"][net, li], ref, atol=1e-4)
        for li, layer in enumerate(LAYERS):
            ref = [[np_linear_cka(fw[-1][i][layer], fw[-1][j][layer]) for j in range(n)] for i in range(n)]
            np.testing.assert_allclose(z["linear_networks"][li], ref, atol=1e-4)
        ref = np_minibatch_cka_centred(fw[-1][0]["Dense_1"], fw[-1][3]["Dense_1"], b)
        assert z["unbiased_networks"][2, 0, 3] == pytest.approx(ref, abs=1e-4)
        assert z["linear_epochs"][0, 1, 0, 2] < 0.99  # Dense_0 moved in training: not the identity
    mod = pd.read_csv(out / "modularity.csv")
    assert len(mod) == n * e * 4 and mod.reason.isna().all()
    comms = [set(np.flatnonzero(np.asarray(yp) == c).tolist()) for c in range(10)]
    for ep, s in zip(epochs, snaps):
        reps = dynamics.capture_zoo(setup.model, s, xp)
        for net in (0, 3):
            for layer in LAYERS:
                g = nx.from_numpy_array(np_knn_adjacency(np.asarray(reps[layer][net]), 3))
                q = mod.query("network == @net and epoch == @ep and layer == @layer").modularity.item()
                assert q == pytest.approx(nx_modularity(g, comms, weight="weight"), abs=1e-5), (ep, net, layer)


def test_bad_networks_do_not_change_healthy_readings_and_get_nan_with_reasons(dynamics_zoo, data_dir):
    """A NaN network, an exploded one (every kernel x30: finite, huge activations) and a dead one
    (Dense_1 zeroed) beside the 4 healthy networks: the healthy networks' CKA, modularity and
    probes are those `write_dynamics` wrote for the healthy zoo alone; the bad ones get NaN
    (excluded or non-finite) and the dead layers' modularity NaN with its reason."""
    run, out = dynamics_zoo
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
    opts = {k: v for k, v in DYNAMICS_OPTIONS.items() if k != "probe_size"}  # the settings of the zoo's tables
    cka, mod, pr, _ = dynamics.representation_dynamics(
        setup, bad_snaps, epochs, xp, yp, xe, ye, exclude_N=exclude, **opts
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


def test_summaries_use_the_callers_optimal_and_exclude_masks(dynamics_zoo):
    """dynamics.json is over optimal_N & ~exclude_N exactly, recomputed here with pandas; no rule of its own."""
    run, out = dynamics_zoo
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


def test_chunked_run_and_memory_blocks_equal_the_whole_zoo(dynamics_zoo, data_dir, tmp_path):
    run, out = dynamics_zoo
    argv = [
        "train",
        "--config",
        str(REPO / "configs/quickstart.py"),
        "--workdir",
        str(tmp_path / "chunked"),
        "--data_dir",
        str(data_dir),
        "--noprogress",
        *DYNAMICS_ZOO_ARGS,
        "--config.chunk_size=3",
    ]
    assert cli.main(argv) == 0
    assert [p.name for p in dynamics.snapshot_dirs(tmp_path / "chunked")] == ["00", "01"]
    kw = dict(DYNAMICS_OPTIONS, data_dir=str(data_dir))
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
    shutil.rmtree(tmp_path / "chunked" / "chunks" / "01" / "checkpoints" / "1")
    for read in (
        lambda: dynamics.load_snapshots(tmp_path / "chunked"),
        lambda: dynamics.write_dynamics(tmp_path / "chunked", tmp_path / "dyn2", **kw),
    ):
        with pytest.raises(dynamics.DynamicsError, match=r"chunks/01/checkpoints: epochs \[0, 2\] differ"):
            read()
