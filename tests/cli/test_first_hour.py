"""What a new user meets first: the answer without data or network, the help texts, a mistyped key."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxweights import cli
from jaxweights.claims.summary import DEFAULT_METRICS
from jaxweights.config import closest
from tests.zoo import REPO


def test_train_without_data_and_network_fails_in_seconds(tmp_path):
    """The quick start offline: one line with where it looked and the three ways, not minutes of retries."""
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("this machine has MNIST in the system location")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "jaxweights_data_dir")}
    # every connection goes to a proxy on a closed local port: the network is unreachable for this process
    env |= {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env |= {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "jaxweights.cli", "train", "--config", str(REPO / "configs/quickstart.py:quick")]
    start = time.perf_counter()
    out = subprocess.run(
        [*argv, "--workdir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 2, out.stderr
    # no minutes of retries; the 10 s budget itself is checked on the loader in tests/data (here Python's
    # start-up and imports count too, and a loaded machine can stretch them)
    assert elapsed < 30, f"{elapsed:.1f} s"
    errors = [ln for ln in out.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and errors[0] == out.stderr.strip().splitlines()[-1], out.stderr
    msg = errors[0]
    assert msg.startswith("jaxweights train: error: mnist: dataset not found (no data folder given"), msg
    assert "/usr/share/datasets/mnist (no such directory)" in msg
    assert f"not in {tmp_path / 'tfds' / 'mnist'}" in msg and "cannot reach 127.0.0.1:9" in msg
    assert "(1) put mnist.npz" in msg and "(2) put them in /usr/share/datasets/mnist" in msg
    assert "(3) with internet access" in msg and "install tensorflow-datasets" not in msg
    assert "Retrying" not in out.stderr and "Dl Completed" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


def help_of(capsys, *argv) -> str:
    """What `jaxweights *argv --help` prints (it exits with status 0)."""
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


BOILERPLATE = ("--flagfile", "--undefok", "(default: 'None')", "(default: 'false')", "absl", "cli.py")


@pytest.mark.parametrize("command", ["train", "study"])
def test_help_of_a_config_command_teaches_overrides_and_quick(capsys, command):
    out = " ".join(help_of(capsys, command).split())
    assert f"usage: jaxweights {command} --config configs/" in out and "[:quick]" in out
    assert "--config.KEY=VALUE Override one key of the config" in out and ":quick passes ARG 'quick'" in out
    assert "--workdir DIR Run directory. (required)" in out
    assert "--[no]progress" in out and "(default: on)" in out
    for junk in BOILERPLATE:
        assert junk not in out, junk


def test_train_help_with_a_config_lists_its_keys_and_values(capsys):
    out = help_of(capsys, "train", "--config", str(REPO / "configs/quickstart.py:quick"))
    keys = out.split("their values (override with --config.KEY=VALUE):\n", 1)[1]
    rows = dict(line.split(None, 1) for line in keys.strip().splitlines())
    # the values of the :quick variant, read from configs/quickstart.py
    assert rows["num_seeds"] == "2" and rows["num_epochs"] == "1" and rows["max_train"] == "4096"
    assert rows["model.hidden"] == "(128, 64)" and rows["learning_rates"] == "(0.001, 0.01, 0.1, 0.5, 2.0)"


def test_analyze_help_names_the_real_default_metrics(capsys):
    out = " ".join(help_of(capsys, "analyze").split())
    assert f"(default: {','.join(DEFAULT_METRICS)};" in out and "energy" not in DEFAULT_METRICS
    assert "energy, exact but minutes at 256 networks, only when named" in out
    assert "all built-in" not in out
    assert "--[no]report Test the claims; write figures, report.html and summary.json. (default: on)" in out
    assert "--quantile X Optimal = top, suboptimal = bottom quantile by test accuracy. (default: 0.25)" in out
    for junk in BOILERPLATE:
        assert junk not in out, junk


def test_analyze_params_help_has_no_workdir(capsys, tmp_path):
    out = help_of(capsys, "analyze-params")
    assert "--out DIR" in out and "--layout auto|torch|flax" in out and "<auto" not in out
    assert "--workdir" not in out
    for junk in BOILERPLATE:
        assert junk not in out, junk
    assert cli.main(["analyze-params", "x.npz", "--out", str(tmp_path), "--workdir", str(tmp_path)]) == 2
    assert "workdir" in capsys.readouterr().err  # not a flag of analyze-params


def test_top_level_usage_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in cli.COMMANDS) and "[:quick]" in out and "--config.KEY=VALUE" in out


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.num_seed=2", "config.num_seed: not a config key (did you mean num_seeds or seed?); known keys"),
        ("--config.modle.hidden=(8,)", "--config.modle.hidden: the config has no key 'modle' (did you mean model?)"),
        ("--config.num_seeds.x=1", "--config.num_seeds.x: config.num_seeds is a value, not a section with keys"),
    ],
)
def test_an_unknown_config_key_suggests_the_closest(tmp_path, capsys, override, message):
    argv = ["train", "--config", str(REPO / "configs/quickstart.py:quick"), "--workdir", str(tmp_path / "r")]
    assert cli.main([*argv, "--data_dir", str(tmp_path), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_an_unknown_study_key_suggests_the_closest(tmp_path, capsys):
    argv = ["study", "--config", str(REPO / "configs/studies/optimal_vs_suboptimal.py:quick")]
    assert cli.main([*argv, "--workdir", str(tmp_path / "s"), "--config.dataset=mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jaxweights study: error: --config.dataset: the config has no key 'dataset' (did you mean datasets?)"


def test_closest():
    assert closest("num_seed", ["num_seeds", "seed", "num_epochs"]) == "did you mean num_seeds or seed?"
    assert closest("hiden", ["hidden", "activation"]) == "did you mean hidden?"
    assert closest("zzz", ["hidden", "activation"]) == ""


def test_analyze_of_a_study_folder_lists_its_zoos_and_the_commands(tmp_path, capsys):
    study = tmp_path / "study"
    for zoo in ("mnist_mlp", "mnist_cnn"):
        (study / zoo).mkdir(parents=True)
        (study / zoo / "config.json").write_text("{}")
    (study / "report.html").write_text("<html></html>")
    (study / "figures").mkdir()  # not a zoo
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    assert cli.main(["analyze", "--workdir", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{study}: not one run directory but a folder of 2 zoos (mnist_cnn, mnist_mlp)" in err
    commands = (
        f"jaxweights analyze --workdir {study / 'mnist_cnn'} && jaxweights analyze --workdir {study / 'mnist_mlp'}"
    )
    assert f"analyse them with: {commands};" in err and f"combined study report is {study / 'report.html'}" in err
    assert "no params.npz" not in err
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["analyze", "--workdir", str(empty)]) == 2
    assert f"{empty}: no params.npz" in capsys.readouterr().err


def test_summaries_say_1_network_not_1_networks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shapes = {"Dense_0/kernel": (8, 4), "Dense_0/bias": (4,), "Dense_1/kernel": (4, 3), "Dense_1/bias": (3,)}
    np.savez(tmp_path / "one.npz", **{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    argv = ["analyze-params", str(tmp_path / "one.npz"), "--out", str(tmp_path / "o"), "--nofigures"]
    assert cli.main([*argv, "--metrics", "wasserstein"]) == 0
    assert f"analysed 1 network from 1 file into {tmp_path / 'o'}" in capsys.readouterr().out
    assert [cli._count(n, "network") for n in (0, 1, 2)] == ["0 networks", "1 network", "2 networks"]


def test_train_and_analyze_end_with_what_they_wrote_and_the_next_command(
    tmp_path, data_dir, capsys, caplog, monkeypatch
):
    """`train` ends naming the `analyze` command to run; `analyze` ends with the path of report.html; while it
    runs, no step is silent for longer than the heartbeat's interval."""
    import logging

    from jaxweights.pipelines import heartbeat
    from tests.zoo import QUICK_CLAIMS, analyze, train

    monkeypatch.setattr(heartbeat, "EVERY", 0.2)  # the steps of a tiny zoo take seconds, not minutes

    assert train(tmp_path, data_dir, "--config.num_epochs=1") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    workdir = tmp_path / "run"
    assert lines[-2].startswith("trained ") and f" networks into {workdir}: best test accuracy" in lines[-2], lines
    assert lines[-1] == f"next: jaxweights analyze --workdir {workdir}"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert analyze(workdir, "--nodynamics", *QUICK_CLAIMS) == 0
    t = [r.created for r in caplog.records if r.name.startswith("jaxweights")]
    steps = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert any("networks (statistics, node strength, distances): still" in m for m in steps), steps
    assert any("claims, figures and report: still" in m for m in steps), steps
    assert max(b - a for a, b in zip(t, t[1:])) < 5, "a silent gap of 25 intervals"
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == [
        f"analysis written to {workdir / 'analysis'}",
        f"report: {workdir / 'analysis' / 'report.html'}",
    ]
    assert (workdir / "analysis" / "report.html").is_file()
