"""`jaxweights train` end to end: the run-directory contract, resume, refusals and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxweights import cli
from jaxweights.io import checkpoints
from tests.zoo import REPO, train


def test_run_directory_contract(tmp_path, data_dir):
    assert train(tmp_path, data_dir, "--config.num_epochs=2", "--config.learning_rates=(0.05,10000.0)") == 0
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["num_epochs"] == 2 and cfg["model"]["hidden"] == [16] and cfg["learning_rates"] == [0.05, 10000.0]
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.columns) == [
        "network",
        "seed",
        "learning_rate",
        "init_scale",
        "weight_decay",
        "label_noise",
        "train_fraction",
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "diverged",
        "exploded",
        "max_abs_weight",
    ]
    assert len(m) == 4 * 2 and sorted(m.epoch.unique()) == [1, 2]
    last = m[m.epoch == 2].set_index("network")
    assert not last.diverged[[0, 1]].any() and last.diverged[[2, 3]].any()
    assert (last.test_acc[[0, 1]] > 0.4).all()  # 16 steps on 512 images
    with np.load(run / "params.npz") as z:
        shapes = {k: z[k].shape for k in z.files}
        assert shapes == {
            "Dense_0/bias": (4, 16),
            "Dense_0/kernel": (4, 784, 16),
            "Dense_1/bias": (4, 10),
            "Dense_1/kernel": (4, 16, 10),
        }
        assert np.isfinite(z["Dense_0/kernel"]).all()  # diverged networks are frozen, finite
        final = z["Dense_0/kernel"]
    ckpt = checkpoints.Checkpoints(run)
    assert ckpt.epochs() == [0, 1, 2]
    restored = ckpt.manager.restore(2)
    np.testing.assert_array_equal(np.asarray(restored["params"]["Dense_0"]["kernel"]), final)


def test_resume_after_interruption_gives_identical_results(tmp_path, data_dir):
    args = ("--config.num_epochs=3", "--config.learning_rates=(0.05,)")
    assert train(tmp_path, data_dir, *args, workdir="full") == 0
    assert train(tmp_path, data_dir, *args, workdir="cut") == 0
    cut = tmp_path / "cut"
    # Simulate a crash after epoch 1: later checkpoints, final params and later metric rows gone.
    import shutil

    for e in (2, 3):
        shutil.rmtree(cut / "checkpoints" / str(e))
    (cut / "params.npz").unlink()
    m = pd.read_csv(cut / "metrics.csv")
    m[m.epoch <= 1].to_csv(cut / "metrics.csv", index=False)
    assert train(tmp_path, data_dir, *args, workdir="cut") == 0
    assert (cut / "metrics.csv").read_bytes() == (tmp_path / "full" / "metrics.csv").read_bytes()
    with np.load(cut / "params.npz") as a, np.load(tmp_path / "full" / "params.npz") as b:
        for k in b.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_workdir_with_another_config_is_refused(tmp_path, data_dir, capsys):
    assert train(tmp_path, data_dir, "--config.num_epochs=1") == 0
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    assert train(tmp_path, data_dir, "--config.num_epochs=1", "--config.learning_rates=(0.2,)") == 2
    err = capsys.readouterr().err
    assert "holds a run of a different config" in err and "learning_rates" in err
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before  # nothing lost
    assert train(tmp_path, data_dir, "--config.num_epochs=1", "--config.learning_rates=(0.2,)", "--overwrite") == 0
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").learning_rate.unique().tolist() == [0.2]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--config.num_seeds=0"], "config.num_seeds: must be a positive integer"),
        (["--config.optimizer=lion"], "config.optimizer: unknown optimizer 'lion'"),
        (["--config.learning_rates=()"], "config.learning_rates: empty grid"),
        (["--config.learning_rates=(-1.0,)"], "config.learning_rates: values must be > 0"),
        (["--config.label_noises=(1.5,)"], "config.label_noises: values must lie in [0, 1]"),
        (["--config.no_such_key=3"], "no_such_key"),
        (["--config.dataset=imagenet"], "imagenet"),
        (["--config.model.name=resnet"], "model.name: unknown model 'resnet'"),
        (["--config.model.name=vit", "--config.model.patch_size=5"], "model.hidden: not an option of model 'vit'"),
        (["--config.batch_size=4096"], "config.batch_size: 4096 is larger than the 512 training examples"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, data_dir, capsys, extra, message):
    assert train(tmp_path, data_dir, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_impossible_vit_patch_size(tmp_path, data_dir, capsys):
    argv = [
        "train",
        "--config",
        str(REPO / "configs/mnist_vit.py:quick"),
        "--workdir",
        str(tmp_path / "v"),
        "--data_dir",
        str(data_dir),
        "--config.model.patch_size=5",
    ]
    assert cli.main(argv) == 2
    assert "config.model.patch_size: 5 does not divide the 28×28 images" in capsys.readouterr().err
    assert not (tmp_path / "v" / "metrics.csv").exists()


def test_missing_config_file_and_workdir(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "r")]) == 2
    assert "nope.py" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(REPO / "configs/quickstart.py")]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2


def test_static_groups_train_one_after_another(tmp_path, data_dir):
    groups = "--config.groups=({'model.hidden': (8,)}, {'model.hidden': (12,), 'optimizer': 'adam'})"
    assert train(tmp_path, data_dir, "--config.num_epochs=1", "--config.learning_rates=(0.01,)", groups) == 0
    run = tmp_path / "run"
    m = pd.read_csv(run / "metrics.csv", dtype={"group": str})
    assert m.group.tolist() == ["00", "00", "01", "01"] and m.network.tolist() == [0, 1, 2, 3]
    assert m["optimizer"].tolist()[2:] == ["adam", "adam"]
    with np.load(run / "groups" / "01" / "params.npz") as z:
        assert z["Dense_0/kernel"].shape == (2, 784, 12)


def test_console_script_runs_the_quickstart_config(tmp_path, data_dir):
    out = subprocess.run(
        [
            "jaxweights",
            "train",
            "--config",
            str(REPO / "configs/quickstart.py:quick"),
            "--workdir",
            str(tmp_path / "q"),
            "--data_dir",
            str(data_dir),
            "--config.max_train=1024",
            "--noprogress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=None,
        timeout=300,
        executable=str(Path(sys.executable).parent / "jaxweights"),
    )
    assert out.returncode == 0, out.stderr
    assert "trained 30 networks" in out.stdout
    assert "mnist: loaded from" in out.stderr  # the data source is reported in the log


def test_a_repeated_override_takes_the_last_value():
    """absl would join repeated tuple overrides ((16,) then (32,) gave (16, 32)): the last one wins."""
    fv = cli._parse(
        "train",
        [
            "--config",
            str(REPO / "configs/quickstart.py"),
            "--workdir",
            "w",
            "--config.model.hidden=(16,)",
            "--config.num_seeds=3",
            "--config.model.hidden",
            "(32, 8)",
            "--config.num_seeds=5",
        ],
    )
    assert tuple(fv.config.model.hidden) == (32, 8) and fv.config.num_seeds == 5
    assert fv.config.learning_rates == (0.001, 0.01, 0.1, 0.5, 2.0)  # untouched keys keep the file's value
