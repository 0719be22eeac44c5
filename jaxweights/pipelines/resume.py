"""Resuming a chunk of a run: the newest intact checkpoint, its metrics rows, and what is derived from them.

A chunk's run directory holds checkpoints with digests (`io.checkpoints`), the metrics record
(`io.metrics_record`) and the files derived from them: `metrics.csv` (the record's rows up to the
last epoch) and `params.npz` (the parameters of the last checkpoint). A resume starts from the
newest checkpoint that reads back as its digest says and whose epochs' metrics rows are intact
(in the record, or else in `metrics.csv`); damaged checkpoints are named in one warning line and
deleted. A finished chunk is checked without training: `params.npz` against the last checkpoint's
digest, `metrics.csv` against the record; an intact file is never written again.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import pandas as pd

from jaxweights import train
from jaxweights.io import atomic, checkpoints, digests, metrics_record

log = logging.getLogger("jaxweights")

Parse = Callable[[pd.DataFrame], pd.DataFrame]  # a metrics table as read by pandas -> the dtypes it was written with


def header(columns: list[str]) -> str:
    """The `metrics.csv` header line of a table with these columns.

    Args:
      columns: the table's columns.

    Returns:
      The CSV header, with its newline.
    """
    return pd.DataFrame(columns=columns).to_csv(index=False)


def rows_text(df: pd.DataFrame) -> str:
    """The CSV rows (no header) of one epoch's metrics, as `metrics.csv` and the record hold them."""
    return df.to_csv(index=False, header=False)


def csv_rows(path: Path, parse: Parse) -> dict[int, str]:
    """The rows of each epoch found in a `metrics.csv` (none when it is missing or not a table).

    Args:
      path: the `metrics.csv`.
      parse: restores the dtypes the rows were written with (`train_chunk.float32_metrics`).

    Returns:
      {epoch: its rows as CSV text}; rows cut or damaged give a text whose sha256 differs.
    """
    try:
        df = parse(pd.read_csv(path))
        return {int(e): rows_text(g) for e, g in df.groupby("epoch", sort=True)}
    except Exception:  # noqa: BLE001 - a missing, cut or damaged table has no usable rows
        return {}


def table(text: str, parse: Parse) -> pd.DataFrame:
    """A metrics table from its CSV text, with the dtypes it was written with."""
    return parse(pd.read_csv(io.StringIO(text)))


def _rows_of(digest: dict[str, Any], record: dict[int, str], from_csv: Callable[[], dict[int, str]]) -> list[str]:
    """The metrics rows of epochs 1..E that match a checkpoint's digest, from the record or else metrics.csv.

    Raises:
      ValueError: an epoch's rows match in neither (the message names the epoch).
    """
    rows = []
    for epoch, sha in enumerate(digest["metrics"], 1):
        got = record.get(epoch)
        if got is None or digests.sha256_text(got) != sha:
            got = from_csv().get(epoch)
            if got is None or digests.sha256_text(got) != sha:
                raise ValueError(
                    f"the metrics rows of epoch {epoch} are lost from {metrics_record.RECORD} and metrics.csv"
                )
        rows.append(got)
    return rows


class _CsvRows:
    """`csv_rows` of a file, read once when first needed."""

    def __init__(self, path: Path, parse: Parse):
        self.path, self.parse, self.rows = path, parse, None

    def __call__(self) -> dict[int, str]:
        if self.rows is None:
            self.rows = csv_rows(self.path, self.parse)
        return self.rows


def resume_point(
    ckpt: checkpoints.Checkpoints,
    workdir: Path,
    head: str,
    parse: Parse,
    restore: Callable[[int], Any],
) -> tuple[int, Any, list[str], dict[str, Any] | None]:
    """The newest intact checkpoint of a chunk, restored, with the metrics rows up to its epoch.

    Checkpoints are tried from the newest: one that cannot be read, has no digest, reads back
    different arrays, or whose epochs' metrics rows are lost is damaged. The damaged ones are
    named in one warning line and deleted (they are written again as training continues); the
    record and `metrics.csv` are then rebuilt to hold exactly the rows up to the epoch resumed from.

    Args:
      ckpt: the chunk's checkpoints.
      workdir: the chunk's run directory.
      head: its `metrics.csv` header.
      parse: restores a read table's dtypes (`train_chunk.float32_metrics`).
      restore: restores (and checks, see `Checkpoints.restore`) the state of an epoch.

    Returns:
      (epoch, state, rows of epochs 1..epoch, digest of that checkpoint or None when the
      checkpoints were written before digests existed).

    Raises:
      CheckpointError: no checkpoint is intact (one line naming each and why).
    """
    main = jax.process_index() == 0
    record_path = ckpt.directory / metrics_record.RECORD
    from_csv = _CsvRows(workdir / "metrics.csv", parse)
    if not ckpt.verified():  # written before digests: trusted, as then
        epoch = ckpt.latest_epoch()
        log.warning("%s: checkpoints written without digests (an earlier version): restored unchecked", ckpt.directory)
        found = from_csv()
        rows = [found[e] for e in range(1, epoch + 1) if e in found]
        if main:  # the record starts here: later checkpoints carry digests
            metrics_record.write(record_path, rows)
        return epoch, restore(epoch), rows, None
    record = metrics_record.read(record_path)
    damaged: list[checkpoints.DamagedCheckpoint] = []
    for epoch in reversed(ckpt.epochs()):
        try:
            digest = ckpt.digest(epoch)
            try:
                rows = _rows_of(digest, record, from_csv)
            except ValueError as e:
                raise checkpoints.DamagedCheckpoint(ckpt.directory, epoch, str(e)) from None
            if len(rows) != epoch:
                raise checkpoints.DamagedCheckpoint(ckpt.directory, epoch, f"its digest lists {len(rows)} epochs")
            state = restore(epoch)
            break
        except checkpoints.DamagedCheckpoint as e:
            damaged.append(e)
    else:
        why = "; ".join(f"epoch {e.epoch}: {e.reason}" for e in damaged)
        raise checkpoints.CheckpointError(
            f"{ckpt.directory}: no intact checkpoint to resume from ({why}); train again with --overwrite"
        )
    if damaged:
        which = ", ".join(str(e.epoch) for e in reversed(damaged))
        why = "; ".join(f"{e.epoch}: {e.reason}" for e in reversed(damaged)) if len(damaged) > 1 else damaged[0].reason
        noun = "checkpoint epoch" if len(damaged) == 1 else "checkpoints of epochs"
        verb = "is" if len(damaged) == 1 else "are"
        log.warning("%s: %s %s %s damaged (%s); resuming from epoch %d", workdir, noun, which, verb, why, epoch)
        ckpt.discard([e.epoch for e in damaged])
    if main:
        repair(workdir, record_path, head, rows, record)
    train.sync("resumed " + str(workdir))
    return epoch, state, rows, digest


def repair(workdir: Path, record_path: Path, head: str, rows: list[str], record: dict[int, str]) -> None:
    """Makes the record and `metrics.csv` hold exactly the (checked) rows of epochs 1..E, or rows after them.

    A file that already does is left untouched; rows of epochs after E (written before a kill,
    trained again next) may stay. Lost or damaged rows up to E give one warning line per file.

    Args:
      workdir: the chunk's run directory.
      record_path: its metrics record.
      head: the `metrics.csv` header.
      rows: the rows of epochs 1..E.
      record: the record's intact lines as read (`metrics_record.read`).
    """
    want = metrics_record.text(rows).encode()
    try:
        have = record_path.read_bytes()
    except OSError:
        have = b""
    if have != want:
        lost = [str(e) for e, r in enumerate(rows, 1) if record.get(e) != r]
        if lost:
            log.warning("%s: rows of epoch(s) %s lost or damaged; written again", record_path, ", ".join(lost))
        metrics_record.write(record_path, rows)
    if not rows:  # no epoch trained yet: no table to check
        return
    path = workdir / "metrics.csv"
    want = metrics_record.table(head, rows).encode()
    try:
        have = path.read_bytes()
    except OSError:
        have = None
    if have is None or not have.startswith(want):
        what = "missing" if have is None else "missing rows or damaged"
        log.warning("%s: %s; rebuilt from checkpoints/%s (epochs 1-%d)", path, what, metrics_record.RECORD, len(rows))
        atomic.atomic_write_bytes(path, want)


def params_mismatch(path: Path, digest: dict[str, Any]) -> str | None:
    """Why a chunk's `params.npz` is not the parameters of a checkpoint; None when it is.

    Args:
      path: the `params.npz`.
      digest: the checkpoint's digest (its `params/...` arrays).

    Returns:
      A few words ("missing", "not a readable .npz (...)", "Dense_0/kernel does not match its digest"), or None.
    """
    if not path.exists():
        return "missing"
    try:
        got = digests.npz_digests([path])
    except (ValueError, OSError) as e:
        return str(e).replace(f"{path}: ", "")
    want = {k[len("params/") :]: v for k, v in digest["arrays"].items() if k.startswith("params/")}
    return digests.mismatch(want, got)


def finished_chunk(workdir: Path, head: str, parse: Parse, num_epochs: int) -> pd.DataFrame | None:
    """The metrics table of a chunk that finished training, checked; None when it must be (re)trained or repaired.

    Finished: the checkpoint of the last epoch carries a digest, `params.npz` matches it, and the
    metrics rows of every epoch match it (from the record or `metrics.csv`); then the record and
    `metrics.csv` are rebuilt if they are not intact (nothing else is written).

    Args:
      workdir: the chunk's run directory.
      head: its `metrics.csv` header.
      parse: restores a read table's dtypes.
      num_epochs: the epochs of the run.

    Returns:
      The chunk's metrics table, or None.
    """
    ckdir = workdir / "checkpoints"
    digest = checkpoints.step_digest(ckdir / str(num_epochs))
    if digest is None or digest.get("epoch") != num_epochs:
        return None
    record = metrics_record.read(ckdir / metrics_record.RECORD)
    try:
        rows = _rows_of(digest, record, _CsvRows(workdir / "metrics.csv", parse))
    except ValueError:
        return None
    if len(rows) != num_epochs:
        return None
    if params_mismatch(workdir / "params.npz", digest) is not None:  # written again from the checkpoint
        return None
    if jax.process_index() == 0:
        repair(workdir, ckdir / metrics_record.RECORD, head, rows, record)
    return table(metrics_record.table(head, rows), parse)


def combined_mismatch(parts: list[Path], out: Path) -> str | None:
    """Why a chunked group's `params.npz` is not its chunks' `params.npz` concatenated; None when it is.

    Args:
      parts: the chunks' `params.npz`, in order (checked against their checkpoints).
      out: the combined file.

    Returns:
      A few words ("missing", "not a readable .npz (...)", "Dense_0/kernel does not match its digest"), or None.
    """
    if not out.exists():
        return "missing"
    try:
        got = digests.npz_digests([out])
    except (ValueError, OSError) as e:
        return str(e).replace(f"{out}: ", "")
    want = digests.npz_digests(parts)
    if list(got) != list(want):
        return f"members {list(got)} instead of {list(want)}"
    return digests.mismatch(want, got)
