r"""Fault injection: a run killed or damaged at each phase, resumed, compared byte for byte with an uninterrupted one.

    python benchmarks/fault_injection.py --data_dir DIR                  # every case
    python benchmarks/fault_injection.py --data_dir DIR --cases kill:checkpoint-write,damage:flipped-checkpoint
    python benchmarks/fault_injection.py --data_dir DIR --out /tmp/fi --keep

Trains `configs/quickstart.py:quick` (30 MLPs on 4096 MNIST images) for 3 epochs in chunks of 16
networks (two chunks: checkpoints, metrics and parameters per chunk, then combined) once without
interruption: the reference. Then, each case on a fresh run directory:

- kill:PHASE starts `jaxweights train` (or `analyze`), watches the run directory and sends SIGKILL
  the moment the phase is seen: start-up (config.json written, no checkpoint yet), inside a
  checkpoint write (orbax's `*.orbax-checkpoint-tmp*` folder appears), between epochs (a chunk's
  metrics.csv holds epoch 2, its checkpoint 2 does not exist yet), between chunks (chunk 00
  finished, chunk 01 not started), during a params.npz write (its temporary file appears), and
  during analyze (the analysis' temporary folder holds stats.csv). The same command is then run
  again to the end.
- damage:WHAT damages a copy of the reference (flipped bytes in or truncation of the latest
  checkpoint of a run killed before its last epoch, its _METADATA deleted, metrics.csv rows cut or
  the file deleted, a chunk's params.npz truncated, every checkpoint damaged) and runs `train` again.

A case passes when the command ends with the expected exit status (0, or 2 with one error line when
nothing intact is left) and every metrics.csv, params.npz and metrics record of the run directory
(and the analysis, for analyze) equals the reference's byte for byte. Prints a table: case,
outcome (exit statuses, warning lines), identical?, seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = [
    "--config",
    str(REPO / "configs/quickstart.py:quick"),
    "--config.num_epochs=3",
    "--config.chunk_size=16",
    "--noprogress",
]
ANALYZE_ARGS = ["--metrics", "wasserstein,ks", "--nodynamics", "--noreport"]
RESULT = re.compile(r"(^|/)(metrics\.csv|params\.npz|checkpoints/metrics\.jsonl)$")


# ============================== running the command line ==============================


def command(kind: str, workdir: Path, data_dir: Path, args: list[str]) -> list[str]:
    """The `jaxweights` command line of a train or analyze run."""
    extra = TRAIN_ARGS + args if kind == "train" else ANALYZE_ARGS
    return [
        sys.executable,
        "-m",
        "jaxweights.cli",
        kind,
        "--workdir",
        str(workdir),
        "--data_dir",
        str(data_dir),
        *extra,
    ]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Starts a command, its stderr to a temporary file (read with `stderr`)."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    proc.errfile = err
    return proc


def stderr(proc: subprocess.Popen) -> str:
    proc.errfile.seek(0)
    return proc.errfile.read().decode(errors="replace")


def run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> tuple[int, str]:
    """Runs a command to its end; (exit status, stderr)."""
    proc = start(cmd, env)
    proc.wait(timeout=timeout)
    return proc.returncode, stderr(proc)


def kill_when(proc: subprocess.Popen, workdir: Path, seen: Callable[[Path], bool], timeout: float = 600) -> bool:
    """SIGKILLs `proc` as soon as `seen(workdir)` holds; False when the command ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            hit = seen(workdir)
        except OSError:  # a folder renamed between listing and reading
            hit = False
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    return False


def environment(cache: Path) -> dict[str, str]:
    """The environment of every command: one persistent compilation cache, so restarts do not recompile."""
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )


def results(workdir: Path, analysis: bool = False) -> dict[str, bytes]:
    """The bytes of every metrics.csv, params.npz and metrics record of a run (or of its analysis)."""
    if analysis:
        root = workdir / "analysis"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and RESULT.search(str(p.relative_to(workdir)))
    }


def warning_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("W ") and "jaxweights]" in ln]


# ============================== phases ==============================


def _any(workdir: Path, pattern: str) -> bool:
    return any(True for _ in workdir.glob(pattern))


def _last_epoch(path: Path) -> int:
    try:
        lines = path.read_text().strip().splitlines()
        col = lines[0].split(",").index("epoch")
        return int(lines[-1].split(",")[col]) if len(lines) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


PHASES: dict[str, Callable[[Path], bool]] = {
    "start-up": lambda w: (w / "config.json").exists() and not _any(w, "**/checkpoints/0"),
    "checkpoint-write": lambda w: _any(w, "chunks/00/checkpoints/2.orbax-checkpoint-tmp*"),
    "between-epochs": lambda w: (
        _last_epoch(w / "chunks/00/metrics.csv") == 2 and not (w / "chunks/00/checkpoints/2").exists()
    ),
    "between-chunks": lambda w: (w / "chunks/00/params.npz").exists() and not (w / "chunks/01/checkpoints/0").exists(),
    "params-write": lambda w: _any(w, "chunks/01/.params.npz.*.tmp") or _any(w, ".params.npz.*.tmp"),
    "analyze": lambda w: _any(w, ".analysis-*/stats.csv"),
}


# ============================== damage ==============================


def _latest_chunk(run: Path) -> Path:
    chunks = sorted(p for p in (run / "chunks").glob("[0-9]*") if p.is_dir())
    return chunks[-1] if chunks else run


def make_partial(run: Path, epochs: int) -> Path:
    """A finished run turned into one killed before its last chunk's last checkpoint; returns that chunk."""
    chunk = _latest_chunk(run)
    shutil.rmtree(chunk / "checkpoints" / str(epochs))
    for p in {chunk / "params.npz", run / "params.npz", run / "metrics.csv"}:
        p.unlink(missing_ok=True)
    return chunk


def _data_file(chunk: Path, epoch: int) -> Path:
    files = [p for p in (chunk / "checkpoints" / str(epoch) / "default").rglob("d/*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(path: Path, n: int = 64) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid : mid + n] = bytes(x ^ 0xFF for x in b[mid : mid + n])
    path.write_bytes(bytes(b))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _cut_rows(path: Path, rows: int = 7) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: max(1, len(lines) - rows)]))


def damage_flipped(run: Path, epochs: int) -> int:
    _flip(_data_file(make_partial(run, epochs), epochs - 1))
    return 0


def damage_truncated(run: Path, epochs: int) -> int:
    _truncate(_data_file(make_partial(run, epochs), epochs - 1), 0.3)
    return 0


def damage_metadata(run: Path, epochs: int) -> int:
    (make_partial(run, epochs) / "checkpoints" / str(epochs - 1) / "default" / "_METADATA").unlink()
    return 0


def damage_cut_rows(run: Path, epochs: int) -> int:
    for p in run.rglob("metrics.csv"):
        _cut_rows(p)
    return 0


def damage_deleted_metrics(run: Path, epochs: int) -> int:
    for p in run.rglob("metrics.csv"):
        p.unlink()
    return 0


def damage_chunk_params(run: Path, epochs: int) -> int:
    _truncate(sorted(run.glob("chunks/*/params.npz"))[0])
    return 0


def damage_nothing_intact(run: Path, epochs: int) -> int:
    chunk = make_partial(run, epochs)
    for step in (chunk / "checkpoints").glob("[0-9]*"):
        (step / "default" / "_METADATA").unlink()
    return 2  # the exit status expected


DAMAGES: dict[str, Callable[[Path, int], int]] = {
    "flipped-checkpoint": damage_flipped,
    "truncated-checkpoint": damage_truncated,
    "deleted-_METADATA": damage_metadata,
    "cut-metrics-rows": damage_cut_rows,
    "deleted-metrics.csv": damage_deleted_metrics,
    "truncated-chunk-params.npz": damage_chunk_params,
    "no-intact-checkpoint": damage_nothing_intact,
}


# ============================== cases ==============================


def reference(out: Path, data_dir: Path, env: dict[str, str], args: list[str]) -> tuple[Path, float]:
    """The uninterrupted run (and its analysis, for the analyze case); (run directory, seconds)."""
    ref = out / "reference"
    t0 = time.perf_counter()
    rc, err = run(command("train", ref, data_dir, args), env)
    if rc != 0:
        raise SystemExit(f"the reference run failed:\n{err[-3000:]}")
    return ref, time.perf_counter() - t0


def kill_case(
    phase: str, ref: Path, out: Path, data_dir: Path, env: dict[str, str], args: list[str]
) -> tuple[str, bool, str]:
    """Kills a run at `phase`, runs it again to the end; (outcome, identical, details)."""
    w = out / f"kill-{phase}"
    shutil.rmtree(w, ignore_errors=True)
    seen = PHASES[phase]
    if phase == "analyze":
        shutil.copytree(ref, w)
        ref_analysis = out / "reference-analysis"
        if not ref_analysis.exists():
            shutil.copytree(ref, ref_analysis)
            rc, err = run(command("analyze", ref_analysis, data_dir, args), env)
            if rc != 0:
                return f"reference analysis exit {rc}", False, err[-2000:]
        proc = start(command("analyze", w, data_dir, args), env)
        if not kill_when(proc, w, seen):
            return f"not reached (exit {proc.returncode})", False, stderr(proc)[-2000:]
        rc, err = run(command("analyze", w, data_dir, args), env)
        same = rc == 0 and results(w, analysis=True) == results(ref_analysis, analysis=True)
        return f"killed, re-run exit {rc}", same, err[-2000:] if rc else ""
    proc = start(command("train", w, data_dir, args), env)
    if not kill_when(proc, w, seen):
        return f"not reached (exit {proc.returncode})", False, stderr(proc)[-2000:]
    rc, err = run(command("train", w, data_dir, args), env)
    warned = warning_lines(err)
    same = rc == 0 and results(w) == results(ref)
    outcome = f"killed, resumed exit {rc}" + (f", {len(warned)} warning(s)" if warned else "")
    return outcome, same, "\n".join(warned) if rc == 0 else err[-2000:]


def damage_case(
    what: str, ref: Path, out: Path, data_dir: Path, env: dict[str, str], args: list[str], epochs: int
) -> tuple[str, bool, str]:
    """Damages a copy of the reference, runs train again; (outcome, identical, details)."""
    w = out / f"damage-{what}"
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(ref, w)
    want = DAMAGES[what](w, epochs)
    rc, err = run(command("train", w, data_dir, args), env)
    warned = warning_lines(err)
    if want == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("jaxweights train: error:")]
        ok = rc == 2 and len(lines) == 1 and "Traceback" not in err
        return f"exit {rc}, {'one error line' if ok else 'NOT one line'}", ok, lines[0] if lines else err[-2000:]
    same = rc == 0 and results(w) == results(ref)
    outcome = f"exit {rc}" + (f", {len(warned)} warning(s)" if warned else "")
    return outcome, same, "\n".join(warned) if rc == 0 else err[-2000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder with mnist.npz")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--cases", default=None, help="comma-separated kill:PHASE / damage:WHAT (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args(argv)
    out = Path(a.out or tempfile.mkdtemp(prefix="fault-injection-"))
    out.mkdir(parents=True, exist_ok=True)
    env = environment(out / "xla-cache")
    args = [f"--config.num_epochs={a.epochs}"]
    cases = a.cases.split(",") if a.cases else [f"kill:{k}" for k in PHASES] + [f"damage:{k}" for k in DAMAGES]
    ref, seconds = reference(out, Path(a.data_dir), env, args)
    rows = [("reference (uninterrupted)", "exit 0", "-", seconds, "")]
    for case in cases:
        kind, name = case.split(":", 1)
        t0 = time.perf_counter()
        if kind == "kill":
            outcome, same, details = kill_case(name, ref, out, Path(a.data_dir), env, args)
        else:
            outcome, same, details = damage_case(name, ref, out, Path(a.data_dir), env, args, a.epochs)
        rows.append((case, outcome, "yes" if same else "NO", time.perf_counter() - t0, details))
        print(f"{case}: {outcome}, identical: {'yes' if same else 'NO'}", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'case':<{width}}  {'outcome':<40} {'identical?':<10} {'seconds':>7}")
    for case, outcome, same, secs, _ in rows:
        print(f"{case:<{width}}  {outcome:<40} {same:<10} {secs:7.1f}")
    for case, _, _, _, details in rows:
        if details:
            print(f"\n{case}:\n  " + details.replace("\n", "\n  "))
    if not a.keep and not a.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(r[2] in ("yes", "-") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
