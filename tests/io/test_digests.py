"""Checkpoint digests: orbax alone restores a flipped byte silently; every restore here checks it.

One tiny 3-epoch run is shared by the module (treat it as read-only: copy it to damage it).
"""

import errno
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest

from jaxweights import cli
from jaxweights.io import checkpoints, digests, metrics_record
from tests.conftest import FINISHED_RUN_ARGS
from tests.zoo import train

EPOCHS = FINISHED_RUN_ARGS  # the arguments of the shared reference run


@pytest.fixture
def ref(finished_run):
    """A finished tiny run (10 networks, 3 epochs, checkpoints 0-3; shared, read-only)."""
    return finished_run


@pytest.fixture
def run(ref, tmp_path):
    """A copy of the reference run, to damage."""
    shutil.copytree(ref, tmp_path / "run")
    return tmp_path / "run"


def largest_data_file(run, epoch):
    """The OCDBT data file holding most of a checkpoint's arrays."""
    files = (run / "checkpoints" / str(epoch) / "default").rglob("d/*")
    return max((p for p in files if p.is_file()), key=lambda p: p.stat().st_size)


def flip(path, n=64):
    """Inverts n bytes in the middle of a file."""
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid : mid + n] = bytes(x ^ 0xFF for x in b[mid : mid + n])
    path.write_bytes(bytes(b))


def test_orbax_restores_flipped_bytes_silently_and_the_digest_catches_them(run):
    """The reason for digests: orbax reads 64 inverted bytes back as other numbers, without an error."""
    ckpt = checkpoints.Checkpoints(run)
    before = ckpt.manager.restore(3)["params"]
    flip(largest_data_file(run, 3))
    ckpt = checkpoints.Checkpoints(run)
    after = ckpt.manager.restore(3)["params"]  # orbax alone: no error...
    changed = sum(int((np.asarray(before[k]["kernel"]) != np.asarray(after[k]["kernel"])).sum()) for k in before)
    assert changed > 0  # ...and different numbers
    with pytest.raises(
        checkpoints.DamagedCheckpoint, match=r"checkpoint epoch 3 is damaged \(params/.* does not match"
    ):
        checkpoints.restore_params(run, 3)
    like = ckpt.manager.restore(2)
    with pytest.raises(checkpoints.DamagedCheckpoint, match="does not match its digest"):
        ckpt.restore(3, like)
    assert checkpoints.restore_params(run, 2)["Dense_0"]["kernel"].shape == (10, 784, 16)  # the others are intact


def test_the_digest_is_the_sha256_of_each_arrays_bytes(ref):
    """Recomputed here with hashlib from params.npz (the final parameters = the last checkpoint's)."""
    digest = checkpoints.step_digest(ref / "checkpoints" / "3")
    assert digest["epoch"] == 3 and len(digest["metrics"]) == 3
    with np.load(ref / "params.npz") as z:
        for k in z.files:
            a = z[k]
            want = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
            assert digest["arrays"][f"params/{k}"] == want
    assert {"step", "diverged"} <= set(digest["arrays"])  # the whole train state, not only the parameters
    # the metrics entries are the sha256 of each epoch's rows in the record
    record = metrics_record.read(ref / "checkpoints" / metrics_record.RECORD)
    assert sorted(record) == [1, 2, 3]
    assert digest["metrics"] == [hashlib.sha256(record[e].encode()).hexdigest() for e in (1, 2, 3)]
    assert checkpoints.step_digest(ref / "checkpoints" / "0")["metrics"] == []


def test_npz_digests_of_chunks_equal_those_of_the_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    a = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(3, dtype=np.int32)}
    b = {"w": rng.normal(size=(2, 4)).astype(np.float32), "b": np.arange(2, dtype=np.int32)}
    np.savez(tmp_path / "a.npz", **a)
    np.savez(tmp_path / "b.npz", **b)
    np.savez(tmp_path / "ab.npz", **{k: np.concatenate([a[k], b[k]]) for k in a})
    both = digests.npz_digests([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert both == digests.npz_digests([tmp_path / "ab.npz"])
    assert both["w"]["sha256"] == hashlib.sha256(np.concatenate([a["w"], b["w"]]).tobytes()).hexdigest()
    assert both["w"]["shape"] == [5, 4]
    data = (tmp_path / "ab.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable .npz"):
        digests.npz_digests([tmp_path / "cut.npz"])
    # a flipped byte inside a member's data: zipfile's CRC-32 check refuses it
    with zipfile.ZipFile(tmp_path / "ab.npz") as z:
        offset = z.getinfo("w.npy").header_offset + 200
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="member w is not readable"):
        digests.npz_digests([tmp_path / "flip.npz"])


@pytest.mark.parametrize("damage", ["truncated", "no _METADATA"])
def test_damaged_checkpoints_are_refused_by_restore_params(run, damage):
    if damage == "truncated":
        f = largest_data_file(run, 2)
        f.write_bytes(f.read_bytes()[:1000])
        reason = "unreadable"
    else:
        (run / "checkpoints" / "2" / "default" / "_METADATA").unlink()
        reason = "_METADATA"
    with pytest.raises(checkpoints.DamagedCheckpoint, match=f"checkpoint epoch 2 is damaged .*{reason}"):
        checkpoints.restore_params(run, 2)
    ckpt = checkpoints.Checkpoints(run)
    with pytest.raises(checkpoints.DamagedCheckpoint, match=reason):
        ckpt.restore(2, ckpt.manager.restore(1))


def test_analyze_dynamics_over_a_damaged_checkpoint_is_one_line(run, data_dir, capsys):
    f = largest_data_file(run, 2)
    f.write_bytes(f.read_bytes()[:1000])
    argv = ["analyze", "--workdir", str(run), "--metrics", "wasserstein", "--noreport", "--dynamics"]
    assert cli.main([*argv, "--probe_size", "60", "--data_dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint epoch 2 is damaged" in err[0] and str(run) in err[0], err


def _full_disk(kind):
    """Raises what a full disk gives inside an array write."""
    if kind == "tensorstore":  # the message TensorStore gives (a ValueError)
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.Dense_0.kernel/0" in OCDBT database: '
            "Failed to write 1207197 bytes to file 14: No space left on device [os_error_code='28']"
        )
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("kind", ["tensorstore", "oserror"])
def test_a_full_disk_inside_a_checkpoint_write_is_one_line_then_resumes(
    ref, tmp_path, data_dir, monkeypatch, capsys, kind
):
    """The disk fills up while orbax writes the arrays of checkpoint 2 (in its writer thread)."""
    from orbax.checkpoint._src.serialization import serialization

    real = serialization.async_serialize_from_host

    async def write(rslices, tensorstore_spec, **kwargs):
        if "/2.orbax-checkpoint-tmp" in json.dumps(tensorstore_spec):
            _full_disk(kind)
        return await real(rslices, tensorstore_spec, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(serialization, "async_serialize_from_host", write)
        assert train(tmp_path, data_dir, *EPOCHS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot write checkpoint {tmp_path / 'run' / 'checkpoints' / '2'}" in err[0]
    assert "no space left" in err[0].lower()
    assert checkpoints.Checkpoints(tmp_path / "run").epochs() == [0, 1]
    assert train(tmp_path, data_dir, *EPOCHS) == 0  # space again: resumes and ends as the reference
    for name in ("metrics.csv", "params.npz"):
        assert (tmp_path / "run" / name).read_bytes() == (ref / name).read_bytes(), name
