"""Reading and writing: atomic files, the run directory, orbax checkpoints, parameter files from elsewhere.

atomic       atomic_write, atomic_write_bytes, write_json, write_csv, write_npz, npz_bytes, write_if_changed
rundir       the run-directory contract: write_params, load_params, read_config, config_differences, last_epoch,
             RunDirError (a damaged or truncated file)
checkpoints  Checkpoints (per-epoch writer), restore_params (THE one parameter restore), DamagedCheckpoint
digests      sha256 digests of the arrays of a pytree or of an .npz (what every restore checks)
metrics_record  checkpoints/metrics.jsonl: each epoch's metrics rows, metrics.csv derived from it
lock         workdir_lock: one process at a time in a run directory (WorkdirLockedError)
importers    parameter files trained elsewhere: load, read, stack, ParamsError (a subpackage)
"""

from jaxweights.io import digests, importers, metrics_record
from jaxweights.io.atomic import (
    atomic_write,
    atomic_write_bytes,
    npz_bytes,
    write_csv,
    write_if_changed,
    write_json,
    write_npz,
)
from jaxweights.io.checkpoints import CheckpointError, Checkpoints, DamagedCheckpoint, item_dir, restore_params
from jaxweights.io.lock import WorkdirLockedError, workdir_lock
from jaxweights.io.rundir import (
    RunDirError,
    config_differences,
    last_epoch,
    load_params,
    read_config,
    write_params,
)

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "DamagedCheckpoint",
    "RunDirError",
    "WorkdirLockedError",
    "atomic_write",
    "atomic_write_bytes",
    "config_differences",
    "digests",
    "importers",
    "item_dir",
    "last_epoch",
    "load_params",
    "metrics_record",
    "npz_bytes",
    "read_config",
    "restore_params",
    "write_csv",
    "write_if_changed",
    "write_json",
    "write_npz",
    "workdir_lock",
    "write_params",
]
