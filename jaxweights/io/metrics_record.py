"""The metrics record of a run directory: every epoch's metrics rows, kept beside the checkpoints.

`checkpoints/metrics.jsonl` gets one line per epoch, appended as the epoch ends:

    {"epoch": 3, "rows": "<that epoch's metrics.csv rows>", "sha256": "<sha256 of rows>"}

`metrics.csv` is derived from it: its header, then the rows of epochs 1, 2, ... E as recorded.
Each checkpoint's digest holds the sha256 of the rows of every epoch up to its own, so the rows
a resumed run keeps are checked against the checkpoint it resumes from; the record is never
pruned by `keep_checkpoints`. A line cut by a kill or damaged afterwards fails its sha256 and is
ignored (the rows are then taken from `metrics.csv` when they match the checkpoint's digest).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from jaxweights.io import atomic, digests

RECORD = "metrics.jsonl"


def line(epoch: int, rows: str) -> str:
    """The record's line of one epoch (with its newline).

    Args:
      epoch: the epoch.
      rows: its metrics rows as CSV text (no header).

    Returns:
      One JSON line.
    """
    return json.dumps({"epoch": int(epoch), "rows": rows, "sha256": digests.sha256_text(rows)}) + "\n"


def append(path: str | os.PathLike, epoch: int, rows: str) -> None:
    """Appends the line of one epoch to the record (flushed to disk); a line cut by a kill is removed first.

    Args:
      path: the record (`checkpoints/metrics.jsonl`); created if missing.
      epoch: the epoch.
      rows: its metrics rows as CSV text (no header).

    Raises:
      OSError: the disk refused the write; the message names `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(max(0, size - 1))
                if f.read(1) != b"\n":  # a line cut by a kill: drop it (its epoch is written again)
                    f.seek(0)
                    data = f.read()
                    f.truncate(data.rfind(b"\n") + 1)
            f.write(line(epoch, rows).encode())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def read(path: str | os.PathLike) -> dict[int, str]:
    """The intact lines of a record: each epoch's rows whose sha256 matches (a later line of an epoch wins).

    Args:
      path: the record; a missing or unreadable file has no lines.

    Returns:
      {epoch: rows}.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return {}
    out = {}
    for raw in data.split(b"\n"):
        try:
            rec = json.loads(raw)
            epoch, rows = int(rec["epoch"]), rec["rows"]
            if isinstance(rows, str) and digests.sha256_text(rows) == rec["sha256"]:
                out[epoch] = rows
        except (ValueError, TypeError, KeyError):
            continue
    return out


def text(rows: Sequence[str]) -> str:
    """The record holding `rows` (of epochs 1, 2, ...), as written line by line.

    Args:
      rows: the rows of each epoch from 1 on.

    Returns:
      The record's whole text.
    """
    return "".join(line(e, r) for e, r in enumerate(rows, 1))


def table(header: str, rows: Sequence[str]) -> str:
    """`metrics.csv` as derived from the record: the header, then each epoch's rows.

    Args:
      header: the CSV header line (with its newline).
      rows: the rows of epochs 1, 2, ... (CSV text each).

    Returns:
      The table's text.
    """
    return header + "".join(rows)


def write(path: str | os.PathLike, rows: Sequence[str]) -> None:
    """Replaces the record with the lines of epochs 1..len(rows), atomically.

    Args:
      path: the record.
      rows: the rows of epochs 1, 2, ...
    """
    atomic.atomic_write_bytes(path, text(rows).encode())
