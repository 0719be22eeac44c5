"""The one checkpoint restore: a zoo trained on 8 simulated devices is read back on 1."""

import logging

import jax
import numpy as np
import pytest

from jaxweights import config as config_lib
from jaxweights import data as data_lib
from jaxweights import train
from jaxweights import train as train_lib
from jaxweights.io import checkpoints
from tests.zoo import finish, subprocess_on, tiny

N = 8


def _config(data_dir):
    return tiny(data_dir, num_seeds=N, num_epochs=1, max_train=256, max_test=200)


@pytest.fixture(scope="module")
def run8(tmp_path_factory, data_dir):
    """A tiny zoo trained on 8 simulated devices (its checkpoints record 8 devices)."""
    out = tmp_path_factory.mktemp("eight") / "run"
    finish(
        subprocess_on(
            f"""
            import jax
            from jaxweights import data as data_lib
            from jaxweights.pipelines import train as train_pipeline
            from jaxweights import train as train_lib
            assert jax.device_count() == 8
            c = tiny({str(data_dir)!r}, num_seeds={N}, num_epochs=1, max_train=256, max_test=200)
            c.model.hidden = (8,)
            train_pipeline.train_and_evaluate(c, {str(out)!r}, progress=False)
            """,
            devices=8,
        )
    )
    return out


def test_checkpoint_of_eight_devices_needs_a_target(run8):
    """The setup reproduces the bug: restoring without a target asks for the writer's 8 devices."""
    import orbax.checkpoint as ocp

    assert jax.device_count() == 1
    with pytest.raises(ValueError, match="Topology mismatch"):
        ocp.StandardCheckpointer().restore(run8 / "checkpoints" / "1" / "default")


def test_restore_params_on_one_device(run8, data_dir, caplog):
    final = dict(np.load(run8 / "params.npz"))
    with caplog.at_level(logging.INFO):
        got = checkpoints.restore_params(run8)  # the latest epoch
    # orbax's "Metadata file does not exist" for the item folder, which never has one, is not shown
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
    flat = {f"{layer}/{name}": v for layer, leaves in got.items() for name, v in leaves.items()}
    assert sorted(flat) == sorted(final)  # parameters only: no optimizer moments, no step
    for k, v in flat.items():
        assert type(v) is np.ndarray and v.shape[0] == N
        np.testing.assert_array_equal(v, final[k], err_msg=k)
    # epoch 0 is the initialisation: the same as initialising the zoo here, on one device
    c = _config(data_dir)
    c.model.hidden = (8,)
    setup = train_lib.make_setup(c, data_lib.load_dataset(c))
    hp = train.hyper_from_grid(config_lib.hyperparameter_grid(c))
    init = jax.jit(jax.vmap(lambda h: train.init_network(setup, h, (28, 28, 1))))(hp).params
    first = checkpoints.restore_params(run8 / "checkpoints", epoch=0)
    for layer in init:
        for name in init[layer]:
            np.testing.assert_allclose(first[layer][name], np.asarray(init[layer][name]), rtol=1e-6, atol=1e-7)
    # the same through every way of naming the checkpoint
    for path, epoch in ((run8 / "checkpoints" / "1", None), (run8 / "checkpoints" / "1" / "default", None)):
        again = checkpoints.restore_params(path, epoch)
        np.testing.assert_array_equal(again["Dense_1"]["kernel"], final["Dense_1/kernel"])
    assert checkpoints.Checkpoints(run8).restore_params(0)["Dense_0"]["bias"].shape == (N, 8)


def test_restore_params_errors_name_the_path(run8, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint of epoch 7"):
        checkpoints.restore_params(run8, epoch=7)
    with pytest.raises(checkpoints.CheckpointError, match=str(tmp_path)):
        checkpoints.restore_params(tmp_path)


def test_full_state_restores_on_one_device(run8):
    """Resuming needs the whole state: `Checkpoints.restore` with a host target ignores the writer's devices."""
    ckpt = checkpoints.Checkpoints(run8)
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(run8 / "checkpoints" / "1" / "default").item_metadata.tree
    like = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta, is_leaf=lambda m: hasattr(m, "shape"))
    state = ckpt.restore(1, like)
    ckpt.close()
    np.testing.assert_array_equal(state["params"]["Dense_0"]["kernel"], np.load(run8 / "params.npz")["Dense_0/kernel"])
    assert int(np.asarray(state["step"]).max()) == 256 // 64  # one epoch of 4 steps per network


def test_last_epoch_keeps_each_networks_last_epoch():
    """A constructed table: networks 0-1 trained 3 epochs, network 2 (another group) only 2."""
    import pandas as pd

    from jaxweights.io import rundir

    m = pd.DataFrame({"network": [0, 1, 2, 0, 1, 2, 0, 1], "epoch": [1, 1, 1, 2, 2, 2, 3, 3], "test_acc": range(8)})
    last = rundir.last_epoch(m)
    assert last[["network", "epoch", "test_acc"]].values.tolist() == [[2, 2, 5], [0, 3, 6], [1, 3, 7]]
    assert list(last.index) == [5, 6, 7]  # the table's own rows and index


def test_zoo_of_eight_devices_is_analysed_dynamics_included_on_one(run8, data_dir, tmp_path):
    """`jaxweights analyze` of the 8-device run on this 1-device process: before the one restore it
    stopped with orbax's "Topology mismatch" (exit 1) as soon as the dynamics read a checkpoint."""
    import pandas as pd

    from jaxweights import cli

    assert jax.device_count() == 1
    argv = [
        "analyze",
        "--workdir",
        str(run8),
        "--metrics",
        "wasserstein",
        "--probe_size",
        "60",
        "--noreport",
        "--dynamics",
    ]
    assert cli.main([*argv, "--data_dir", str(data_dir)]) == 0
    out = run8 / "analysis"
    rwc = pd.read_csv(out / "rwc.csv")
    assert sorted(rwc.network.unique()) == list(range(N)) and set(rwc.epoch) == {1}
    # RWC of epoch 1, recomputed from the restored snapshots in float64: ||w1 - w0||_1 / ||w0||_1
    w0 = checkpoints.restore_params(run8, epoch=0)["Dense_0"]["kernel"].astype(np.float64)
    w1 = checkpoints.restore_params(run8, epoch=1)["Dense_0"]["kernel"].astype(np.float64)
    want = np.abs(w1 - w0).sum((1, 2)) / np.abs(w0).sum((1, 2))
    got = rwc[rwc.layer == "Dense_0"].sort_values("network").rwc_l1_ratio.to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert (out / "cka.npz").exists() and (out / "stats.csv").exists()
