"""Relative weight change (Agrawal et al. 2020) and statistics over epochs against float64 numpy."""

import numpy as np
import pandas as pd
import pytest

from jaxweights import dynamics
from jaxweights.io import rundir
from jaxweights.models import paths
from jaxweights.weights import strength
from tests.dynamics.references import np_rwc


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
    with pytest.raises(dynamics.DynamicsError, match="two snapshots"):
        dynamics.relative_weight_change(snaps[:1])


def test_end_to_end_rwc_and_stats_equal_numpy_on_the_saved_snapshots(dynamics_zoo):
    """Every row of rwc.csv equals float64 numpy on the two saved snapshots it compares; the last
    snapshot is the run's params.npz; statistics over epochs equal numpy on each snapshot."""
    run, out = dynamics_zoo
    epochs, snaps = dynamics.load_snapshots(run)
    assert epochs == [0, 1, 2]
    final = paths.flatten(rundir.load_params(run / "params.npz"))
    assert set(snaps[-1]) == set(final)
    for k, v in final.items():
        np.testing.assert_array_equal(snaps[-1][k], v)
    rwc = pd.read_csv(out / "rwc.csv")
    assert len(rwc) == 4 * 2 * 3
    for row in rwc.itertuples():
        prev = snaps[row.epoch - 1][f"{row.layer}/kernel"][row.network].astype(np.float64)
        cur = snaps[row.epoch][f"{row.layer}/kernel"][row.network].astype(np.float64)
        l1 = np.abs(cur - prev).sum() / np.abs(prev).sum()
        nz = prev != 0
        me = (np.abs(cur - prev)[nz] / np.abs(prev)[nz]).mean()
        np.testing.assert_allclose([row.rwc_l1_ratio, row.rwc_mean_elementwise], [l1, me], rtol=1e-5)
        assert row.zero_weights == (~nz).sum() and row.depth == ["Dense_0", "Dense_1", "Dense_2"].index(row.layer)
    # lr 0.05 moves weights more than lr 0.001 (networks 0, 1 vs 2, 3; grid order lr-major).
    per_net = rwc.groupby("network").rwc_l1_ratio.mean()
    assert per_net[[0, 1]].min() > 10 * per_net[[2, 3]].max()
    st = pd.read_csv(out / "stats_over_epochs.csv")
    for e in epochs:
        one = st[(st.epoch == e) & (st.statistic == "std") & (st.layer == "Dense_1/kernel")].sort_values("network")
        np.testing.assert_allclose(one.value, snaps[e]["Dense_1/kernel"].reshape(4, -1).std(1), rtol=1e-4)
        mean = st[(st.epoch == e) & (st.statistic == "mean") & (st.layer == "Dense_0/kernel")].sort_values("network")
        np.testing.assert_allclose(
            mean.value, snaps[e]["Dense_0/kernel"].astype(np.float64).reshape(4, -1).mean(1), rtol=1e-4, atol=1e-7
        )
    ns = strength.node_strength(snaps[2])
    fl = st[(st.epoch == 2) & (st.statistic == "layer_fluctuation") & (st.layer == "Dense_0")].sort_values("network")
    np.testing.assert_allclose(fl.value, ns["Dense_0"].astype(np.float64).std(1), rtol=1e-5)


def test_rwc_every_k_steps_replays_the_run(dynamics_zoo, data_dir):
    run, out = dynamics_zoo
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
