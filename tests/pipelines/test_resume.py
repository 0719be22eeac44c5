"""Resuming damaged run directories: the newest intact checkpoint, metrics rebuilt, finished runs left untouched.

Every case starts from a copy of one uninterrupted reference run (shared by the module) and must
end with the reference's `metrics.csv` and `params.npz`, byte for byte. A "partial" copy is the
reference without its last checkpoint and `params.npz`: a run killed after epoch 3's metrics
were written, before checkpoint 3.
"""

import logging
import re
import shutil

import pytest

from jaxweights.io import checkpoints, metrics_record
from tests.conftest import FINISHED_RUN_ARGS
from tests.io.test_digests import flip, largest_data_file
from tests.zoo import train

EPOCHS = FINISHED_RUN_ARGS  # the arguments of the shared reference run
RESULTS = ("metrics.csv", "params.npz")


@pytest.fixture
def ref(finished_run):
    """An uninterrupted tiny run: 10 networks, 3 epochs, checkpoints 0-3 (shared, read-only)."""
    return finished_run


@pytest.fixture
def finished(ref, tmp_path):
    shutil.copytree(ref, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def partial(finished):
    shutil.rmtree(finished / "checkpoints" / "3")
    (finished / "params.npz").unlink()
    return finished


def resume(run, data_dir, *extra):
    return train(run.parent, data_dir, *EPOCHS, *extra)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "jaxweights" and r.levelno == logging.WARNING]


def same_results(run, ref):
    return all((run / f).read_bytes() == (ref / f).read_bytes() for f in RESULTS)


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("flipped", r"params/\S+ does not match its digest"),
        ("truncated", "unreadable"),
        ("no _METADATA", "its default/_METADATA is missing"),
        ("no digest", "no digest"),
    ],
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(partial, ref, data_dir, caplog, damage, reason):
    if damage == "flipped":
        flip(largest_data_file(partial, 2))
    elif damage == "truncated":
        f = largest_data_file(partial, 2)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    elif damage == "no _METADATA":
        (partial / "checkpoints" / "2" / "default" / "_METADATA").unlink()
    else:
        (partial / "checkpoints" / "2" / "_CHECKPOINT_METADATA").unlink()
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(partial, data_dir) == 0
    warned = warnings(caplog)
    assert len(warned) == 1, warned
    assert f"{partial}: checkpoint epoch 2 is damaged (" in warned[0] and warned[0].endswith("resuming from epoch 1")
    assert re.search(reason, warned[0]), warned[0]
    assert same_results(partial, ref)
    assert checkpoints.Checkpoints(partial).epochs() == [0, 1, 2, 3]  # the damaged one written again


def test_no_intact_checkpoint_is_one_line_and_exit_2(partial, data_dir, capsys):
    for e in (0, 1, 2):
        (partial / "checkpoints" / str(e) / "default" / "_METADATA").unlink()
    before = (partial / "metrics.csv").read_bytes()
    assert resume(partial, data_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no intact checkpoint to resume from" in err[0] and "--overwrite" in err[0], err
    assert (partial / "metrics.csv").read_bytes() == before  # nothing deleted or rewritten


@pytest.mark.parametrize("damage", ["cut rows", "deleted", "garbage"])
def test_metrics_csv_of_a_partial_run_is_rebuilt(partial, ref, data_dir, caplog, damage):
    path = partial / "metrics.csv"
    if damage == "cut rows":
        path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:5]))  # 4 rows of epoch 1
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"\x00garbage\n" * 10)
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(partial, data_dir) == 0
    warned = warnings(caplog)
    assert len(warned) == 1 and "metrics.csv" in warned[0] and "rebuilt" in warned[0], warned
    assert same_results(partial, ref)


def test_rows_lost_from_the_record_are_taken_from_metrics_csv_and_back(partial, ref, data_dir, caplog):
    """Two copies: record line of epoch 1 damaged -> from metrics.csv; both lost for epoch 2 -> retrain from 1."""
    record = partial / "checkpoints" / metrics_record.RECORD
    lines = record.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"epoch": 1', '"epoch": 1, "x": 0').replace(",False,", ",True,", 1)  # sha fails
    record.write_text("".join(lines))
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(partial, data_dir) == 0
    assert same_results(partial, ref)
    assert record.read_bytes() == (ref / "checkpoints" / metrics_record.RECORD).read_bytes()
    assert any("rows of epoch(s) 1 lost or damaged" in w for w in warnings(caplog)), warnings(caplog)
    # epoch 2's rows lost from both copies: checkpoint 2 cannot be resumed from, checkpoint 1 can
    shutil.rmtree(partial / "checkpoints" / "3")
    (partial / "params.npz").unlink()
    lines = record.read_text().splitlines(keepends=True)
    record.write_text(lines[0])  # only epoch 1 left
    (partial / "metrics.csv").write_bytes(b"".join((ref / "metrics.csv").read_bytes().splitlines(keepends=True)[:11]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(partial, data_dir) == 0
    warned = warnings(caplog)
    assert any("checkpoint epoch 2 is damaged (the metrics rows of epoch 2 are lost" in w for w in warned), warned
    assert same_results(partial, ref)


def test_a_finished_run_re_run_is_checked_and_left_untouched(finished, ref, data_dir, capsys):
    def snapshot():  # every file but the workdir lock, which records each command that runs
        files = [p for p in finished.rglob("*") if p.is_file() and p.name != ".jaxweights.lock"]
        return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    before = snapshot()
    assert resume(finished, data_dir) == 0
    assert "is complete, checked against its checkpoints (nothing trained)" in capsys.readouterr().out
    assert snapshot() == before


@pytest.mark.parametrize("damage", ["cut rows", "deleted metrics.csv", "truncated params.npz", "flipped params.npz"])
def test_a_finished_run_with_damaged_results_is_repaired(finished, ref, data_dir, caplog, damage):
    if damage == "cut rows":
        p = finished / "metrics.csv"
        p.write_bytes(p.read_bytes()[:-100])
    elif damage == "deleted metrics.csv":
        (finished / "metrics.csv").unlink()
    else:
        p = finished / "params.npz"
        data = bytearray(p.read_bytes())
        if damage == "truncated params.npz":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
    untouched = "params.npz" if "metrics" in damage or "rows" in damage else "metrics.csv"
    inode = (finished / untouched).stat().st_ino
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(finished, data_dir) == 0
    warned = warnings(caplog)
    assert len(warned) == 1, warned
    assert ("params.npz" in warned[0]) == ("params" in damage), warned
    assert same_results(finished, ref)
    assert (finished / untouched).stat().st_ino == inode  # the intact one is not written again


def test_metrics_of_checkpoints_deleted_by_keep_checkpoints_survive(ref, tmp_path, data_dir, caplog):
    """keep_checkpoints=1 keeps only the last checkpoint; the record still holds every epoch's rows."""
    run = tmp_path / "run"
    assert train(tmp_path, data_dir, *EPOCHS, "--config.keep_checkpoints=1") == 0
    assert checkpoints.Checkpoints(run).epochs() == [3]
    (run / "metrics.csv").unlink()
    assert train(tmp_path, data_dir, *EPOCHS, "--config.keep_checkpoints=1") == 0
    assert same_results(run, ref)


def test_checkpoints_of_an_earlier_version_without_digests_still_resume(partial, ref, data_dir, caplog):
    """A run directory written before digests and the record existed: restored unchecked, as then."""
    import json

    (partial / "checkpoints" / metrics_record.RECORD).unlink()
    for meta in (partial / "checkpoints").glob("*/_CHECKPOINT_METADATA"):
        m = json.loads(meta.read_text())
        m["custom_metadata"] = {}
        meta.write_text(json.dumps(m))
    with caplog.at_level(logging.INFO, logger="jaxweights"):
        assert resume(partial, data_dir) == 0
    warned = warnings(caplog)
    assert len(warned) == 1 and "written without digests" in warned[0], warned
    assert same_results(partial, ref)
    assert metrics_record.read(partial / "checkpoints" / metrics_record.RECORD).keys() == {1, 2, 3}
