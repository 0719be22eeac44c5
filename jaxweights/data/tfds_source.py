"""tensorflow-datasets as the last source of a dataset, failing in seconds when it cannot help.

A copy tfds already prepared is read offline. Otherwise, without a data directory, tfds would download;
offline its download only fails after minutes of retries, so a quick TCP connection to tfds' server (or
the configured HTTPS proxy) is tried first and, when it does not open, `TfdsUnavailable` says why at once.
With a data directory tfds only reads what it prepared there (`NAME/VERSION/`), never downloads.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from jaxweights.data.specs import ENV_VAR, DataError, DatasetSpec

__all__ = ["PROBE_HOST", "PROBE_TIMEOUT_S", "TFDS_NAMES", "TfdsUnavailable", "from_tfds", "network_problem"]

TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
PROBE_HOST = ("storage.googleapis.com", 443)  # tfds' mirror, the first place its downloads try
PROBE_TIMEOUT_S = 3.0


class TfdsUnavailable(DataError):
    """tensorflow-datasets has no copy of the dataset and cannot download one; the message says why."""


def _connect(address: tuple[str, int], timeout: float) -> None:
    """Opens and closes a TCP connection to ``address`` (raises OSError when it cannot)."""
    socket.create_connection(address, timeout=timeout).close()


def network_problem(address: tuple[str, int] = PROBE_HOST, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a download from ``address`` cannot start, or None when a TCP connection opens within ``timeout``.

    The connection goes to the HTTPS proxy instead when one is configured (``$https_proxy``). It runs in a
    daemon thread, so that a name lookup that hangs (an unreachable DNS server) is bounded as well.

    Args:
      address: (host, port) that the download would connect to.
      timeout: seconds to wait in all.

    Returns:
      None, or one short phrase such as "cannot reach storage.googleapis.com:443 (Name or service not known)".
    """
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(address[0]):
        parsed = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        if parsed.hostname:
            address = (parsed.hostname, parsed.port or 80)
    errors: list[BaseException] = []

    def attempt():
        try:
            _connect(address, timeout)
        except OSError as e:
            errors.append(e)

    thread = threading.Thread(target=attempt, name="jaxweights-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    where = f"{address[0]}:{address[1]}"
    if thread.is_alive():
        return f"cannot reach {where} (no answer within {timeout:g} s)"
    if errors:
        e = errors[0]
        return f"cannot reach {where} ({getattr(e, 'strerror', None) or str(e) or type(e).__name__})"
    return None


@contextlib.contextmanager
def _quiet_absl():
    """Hides tfds' absl warnings (such as "Variant folder ... has no dataset_info.json") for the duration."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, shortened at a word boundary (never mid-word)."""
    line = " ".join(str(e).split())
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def from_tfds(name: str, s: DatasetSpec, data_dir: Path | None, log: logging.Logger) -> tuple[dict, str]:
    """Reads both splits of ``name`` with ``tfds.data_source`` (a limit is drawn later from all labels).

    Args:
      name: one of `TFDS_NAMES`.
      s: its spec (the image shape of an empty split).
      data_dir: read only what tfds prepared there; None: tfds' own folder, downloading when the
        dataset is not there and the network answers.
      log: receives a warning before a download.

    Returns:
      The parts (as the file readers give them) and a description of the source.

    Raises:
      TfdsUnavailable: tfds has no copy and cannot download one (no network, or a data directory given),
        or tfds failed; the message is one line saying where tfds looked and why it gave up.
    """
    tname = TFDS_NAMES[name]
    if data_dir is not None and not any((data_dir / tname).glob("*/dataset_info.json")):
        raise TfdsUnavailable(
            f"tensorflow-datasets (nothing it prepared in {data_dir / tname}; it downloads only without a data folder)"
        )
    with _quiet_absl():
        try:
            import tensorflow_datasets as tfds  # lazy: heavy, and only needed as a last resort

            builder = tfds.builder(tname, file_format="array_record") if data_dir is None else None
            prepared = builder is None or builder.is_prepared()
        except Exception as e:  # a broken installation, an unreadable folder
            raise TfdsUnavailable(f"tensorflow-datasets ({_one_line(e)})") from e
        if not prepared:
            why = network_problem()
            if why:
                raise TfdsUnavailable(f"tensorflow-datasets (not in {builder.data_dir}; no download: {why})")
            log.warning(
                "%s: not found locally; downloading it with tensorflow-datasets into %s "
                "(give --data_dir or $%s to read local files instead)",
                name,
                builder.data_dir,
                ENV_VAR,
            )
        try:
            parts = {}
            for split in ("train", "test"):
                src = tfds.data_source(tname, split=split, data_dir=data_dir, download=data_dir is None)
                recs = [src[i] for i in range(len(src))]  # one by one: the tfds mock's __getitems__ is broken
                x = (
                    np.stack([np.asarray(r["image"]) for r in recs])
                    if recs
                    else np.zeros((0, *s.image_shape), np.uint8)
                )
                y = np.asarray([r["label"] for r in recs], dtype=np.int64)
                parts[f"x_{split}"], parts[f"y_{split}"] = (x, f"tfds:{name}/{split}"), (y, f"tfds:{name}/{split}")
        except Exception as e:  # tfds raises many types: not found, no network, a format it cannot read
            where = data_dir or "its default folder"
            raise TfdsUnavailable(f"tensorflow-datasets (data_dir={where}: {_one_line(e)})") from e
    return parts, f"tfds.data_source({tname!r}, data_dir={data_dir or 'default'})"
