"""Damaged run-directory files and bad config files: one line on stderr naming the file or argument, exit
status 2, and nothing already written lost."""

import logging
import shutil
from pathlib import Path

import pytest

from jaxweights import cli
from tests.zoo import REPO, train

CHUNKED = (
    "--config.num_epochs=1",
    "--config.learning_rates=(0.05,)",
    "--config.chunk_size=1",
    "--config.vmap_chunk=1",
)  # 2 chunks of 1, vmapped 1 at a time (no warning that the width was lowered)


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory, data_dir) -> Path:
    """A finished tiny run trained in two chunks and analysed (read-only: copy it to change it)."""
    tmp = tmp_path_factory.mktemp("chunked")
    assert train(tmp, data_dir, *CHUNKED) == 0
    run = tmp / "run"
    assert sorted(p.name for p in (run / "chunks").iterdir()) == ["00", "01", "plan.json"]
    argv = ["analyze", "--workdir", str(run), "--noreport", "--nodynamics", "--metrics", "wasserstein"]
    assert cli.main(argv) == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory, but the lock file (which a command writes while it runs)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name[0] != "."}


def one_line(capsys, *fragments: str) -> str:
    """The one line on stderr, asserted to name every fragment."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def analyze(run: Path) -> int:
    return cli.main(["analyze", "--workdir", str(run), "--nodynamics"])


def test_truncated_params_npz_in_analyze(chunked_run, tmp_path, capsys):
    run = copy_of(chunked_run, tmp_path)
    p = run / "params.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    before = snapshot(run)
    assert analyze(run) == 2
    one_line(capsys, f"{p}: cannot read", "damaged or truncated")
    assert snapshot(run) == before  # the earlier analysis/ is still there, untouched
    assert not list(run.glob(".analysis*"))


def test_garbage_params_npz_in_analyze(chunked_run, tmp_path, capsys):
    run = copy_of(chunked_run, tmp_path)
    (run / "params.npz").write_bytes(b"\x93NUMPY garbage, not a zip file\n" * 100)
    before = snapshot(run)
    assert analyze(run) == 2
    one_line(capsys, f"{run / 'params.npz'}: cannot read")
    assert snapshot(run) == before


def test_a_flipped_byte_in_params_npz_in_analyze(chunked_run, tmp_path, capsys):
    run = copy_of(chunked_run, tmp_path)
    p = run / "params.npz"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside a member's data (stored uncompressed): its CRC-32 fails
    p.write_bytes(bytes(raw))
    assert analyze(run) == 2
    one_line(capsys, f"{p}: cannot read", "CRC")


def test_truncated_chunk_params_npz_is_rebuilt_from_its_checkpoint(chunked_run, tmp_path, data_dir, caplog):
    """A finished chunked run re-run: the chunk's params.npz is checked against its last checkpoint's
    digest and written again from it (one warning line); nothing else is rewritten."""
    run = copy_of(chunked_run, tmp_path)
    chunk = run / "chunks" / "00" / "params.npz"
    chunk.write_bytes(chunk.read_bytes()[:1000])
    inode = (run / "params.npz").stat().st_ino
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert train(tmp_path, data_dir, *CHUNKED) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "jaxweights" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"{chunk}: not a readable .npz" in warned[0], warned
    assert "written again from checkpoint epoch 1" in warned[0]
    assert snapshot(run) == snapshot(chunked_run)  # every file as the uninterrupted run left it
    assert (run / "params.npz").stat().st_ino == inode  # the combined file was intact: not written again


@pytest.mark.parametrize(
    "content,message",
    [('{"dataset": "mnist", "num_ep', "not valid JSON"), ("[1, 2, 3]", "holds a JSON list, not an object")],
    ids=["not-json", "not-an-object"],
)
def test_damaged_config_json(chunked_run, tmp_path, data_dir, capsys, content, message):
    run = copy_of(chunked_run, tmp_path)
    (run / "config.json").write_text(content)
    before = snapshot(run)
    assert train(tmp_path, data_dir, *CHUNKED) == 2  # resuming reads it
    one_line(capsys, f"{run / 'config.json'}: {message}")
    assert cli.main(["prune", "--workdir", str(run)]) == 2  # so does every command that reads the run
    one_line(capsys, f"{run / 'config.json'}: {message}")
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_config_file_that_does_not_exist(tmp_path, capsys, command):
    missing = tmp_path / "configs" / "nope.py"
    assert cli.main([command, "--config", f"{missing}:quick", "--workdir", str(tmp_path / "run")]) == 2
    err = one_line(capsys, f"--config: {missing}: no such file")
    assert "object at 0x" not in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_argument_names_itself_and_the_allowed_ones(tmp_path, capsys):
    config = REPO / "configs" / "mnist_mlp.py"
    assert cli.main(["train", "--config", f"{config}:quik", "--workdir", str(tmp_path / "run")]) == 2
    one_line(capsys, f"--config {config}:quik: unknown config argument 'quik'; allowed: :quick or none")


SHIPPED = sorted((REPO / "configs").rglob("*.py"))


@pytest.mark.parametrize("config", SHIPPED, ids=[str(p.relative_to(REPO / "configs")) for p in SHIPPED])
def test_every_shipped_config_refuses_an_unknown_argument(tmp_path, capsys, config):
    command = "study" if "studies" in config.parts else "train"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("written before")
    assert cli.main([command, "--config", f"{config}:quik", "--workdir", str(tmp_path / "run")]) == 2
    one_line(capsys, f"{config}:quik", "'quik'", "allowed: :quick")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]


def test_a_syntax_error_in_a_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None:\n    return None\n")
    assert cli.main(["train", "--config", str(bad), "--workdir", str(tmp_path / "run")]) == 2
    err = one_line(capsys, f"--config {bad}:", "line 1")
    assert "override" not in err
