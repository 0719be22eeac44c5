"""The `jaxweights` command: a thin layer over the library.

Each `cmd_*` returns the exit status (0); user errors raise one of `USER_ERRORS`, which `main` turns into
one line on stderr and exit status 2.

    jaxweights train   --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value ...]
                       [--data_dir DIR] [--overwrite] [--no-progress]
    jaxweights study   --config configs/studies/optimal_vs_suboptimal.py[:quick] --workdir DIR [--data_dir D]
    jaxweights analyze --workdir DIR [--metrics a,b] [--block_size K] [--quantile Q | --threshold T[,T2]]
                       [--min_accuracy A] [--include_exploded] [--include_not_learned]
                       [--chance_margin M] [--bins B] [--permutations P] [--bootstrap B] [--noreport]
                       [--[no]dynamics] [--probe_size N] [--data_dir DIR] [--multihost]
    jaxweights analyze-params PATH... --out DIR [--layout auto|torch|flax] [--stacked auto|yes|no]
                       [--metrics a,b] [--block_size K] [--layers a,b] [--nofigures]
    jaxweights prune   --workdir DIR [--layers Dense_1,...] [--data_dir DIR] [--overwrite]

User errors (bad config keys or values, missing or corrupted data, a workdir holding another
run) print one line naming the key, file or value and exit with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from jaxweights import train as train_lib
from jaxweights.claims import ClaimError
from jaxweights.claims.summary import DEFAULT_METRICS
from jaxweights.cli_help import command_help, usage
from jaxweights.config import ConfigError, apply_overrides, last_overrides
from jaxweights.data import DataError
from jaxweights.dynamics import DynamicsError
from jaxweights.io import rundir
from jaxweights.io.checkpoints import CheckpointError
from jaxweights.io.importers import ParamsError
from jaxweights.io.lock import WorkdirLockedError
from jaxweights.io.rundir import RunDirError
from jaxweights.pipelines import analyze, prune, study
from jaxweights.pipelines import params as params_pipeline
from jaxweights.pipelines import train as train_pipeline
from jaxweights.pipelines.errors import AnalysisError
from jaxweights.pipelines.train import RunError

USAGE = usage()


# The errors a user can fix; each prints one line naming the key, flag, file or value, exit status 2.
# OSError: a missing file or folder, a full or read-only disk (rundir names the file it could not write).
# CheckpointError: no intact checkpoint to resume from, a damaged checkpoint read by the dynamics.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    ConfigError,
    DataError,
    RunError,
    AnalysisError,
    ClaimError,
    ParamsError,
    DynamicsError,
    WorkdirLockedError,
    RunDirError,
    flags.Error,
    OSError,
)


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "1 network", "3 networks"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _flag_values(command: str, argv: list[str]) -> flags.FlagValues:
    """The flags of ``command``; ``--config`` (train, study) is loaded from ``argv`` with its overrides."""
    fv = flags.FlagValues()
    if command != "analyze-params":  # it reads files and writes --out
        flags.DEFINE_string("workdir", None, "Run directory.", flag_values=fv)
    if command == "train":
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Zoo config",
            flag_values=fv,
            lock_config=False,
            sys_argv=argv,
            accept_new_attributes=True,
        )  # checked by config.validate
        flags.DEFINE_string(
            "data_dir",
            None,
            "Folder with the dataset files (default: config.data_dir, else $JAXWEIGHTS_DATA_DIR, else the system "
            "location and tensorflow-datasets)",
            flag_values=fv,
        )
        flags.DEFINE_bool("overwrite", False, "Discard what --workdir holds instead of resuming.", flag_values=fv)
        flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
    elif command == "analyze-params":
        flags.DEFINE_string("out", None, "Output directory.", flag_values=fv)
        flags.DEFINE_enum(
            "layout", "auto", ["auto", "torch", "flax"], "Kernel layout and naming of the files.", flag_values=fv
        )
        flags.DEFINE_enum(
            "stacked",
            "auto",
            ["auto", "yes", "no"],
            "Whether each file holds several networks, networks axis first.",
            flag_values=fv,
        )
        flags.DEFINE_list("layers", None, "Chain order of the kernel layers for node strength.", flag_values=fv)
        flags.DEFINE_bool("figures", True, "Write figures/*.png.", flag_values=fv)
    elif command == "prune":
        flags.DEFINE_list(
            "layers", None, "Hidden layers to remove (default: the modularity candidates).", flag_values=fv
        )
        flags.DEFINE_string("data_dir", None, "Folder with the dataset files.", flag_values=fv)
        flags.DEFINE_bool("overwrite", False, "Retrain DIR/pruned from scratch.", flag_values=fv)
        flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
    if command in ("analyze", "analyze-params"):
        flags.DEFINE_list(
            "metrics",
            None,
            f"Distance metrics to compute (default: {','.join(DEFAULT_METRICS)}; energy, exact but "
            "minutes at 256 networks, only when named)",
            flag_values=fv,
        )
        flags.DEFINE_integer("block_size", 64, "Rows and columns of the N×N distance blocks.", flag_values=fv)
    if command == "study":
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Study config",
            flag_values=fv,
            lock_config=False,
            sys_argv=argv,
        )
        flags.DEFINE_string("data_dir", None, "Folder with the dataset files.", flag_values=fv)
        flags.DEFINE_bool("progress", True, "Show progress bars.", flag_values=fv)
    if command == "analyze":
        flags.DEFINE_float(
            "quantile", 0.25, "Optimal = top, suboptimal = bottom quantile by test accuracy.", flag_values=fv
        )
        flags.DEFINE_list("threshold", None, "Accuracy threshold t (or lo,hi) instead of --quantile.", flag_values=fv)
        flags.DEFINE_float(
            "min_accuracy",
            None,
            "Also leave out analysed networks below this accuracy (on top of "
            "the not-learned ones, which are left out by default).",
            flag_values=fv,
        )
        flags.DEFINE_bool(
            "include_exploded",
            False,
            "Analyse exploded networks (weights or loss blew up, still finite) instead of leaving them out.",
            flag_values=fv,
        )
        flags.DEFINE_bool(
            "include_not_learned",
            False,
            "Analyse networks within --chance_margin of chance accuracy instead of leaving them out.",
            flag_values=fv,
        )
        flags.DEFINE_float(
            "chance_margin", 0.05, "A network below chance accuracy + this margin did not learn.", flag_values=fv
        )
        flags.DEFINE_integer("bins", 4, "Equal-count accuracy bins of the complex-network comparison.", flag_values=fv)
        flags.DEFINE_integer("permutations", 2000, "Permutations of the group tests.", flag_values=fv)
        flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the confidence intervals.", flag_values=fv)
        flags.DEFINE_bool(
            "report", True, "Test the claims; write figures, report.html and summary.json.", flag_values=fv
        )
        flags.DEFINE_bool(
            "dynamics",
            None,
            "Learning dynamics (RWC, CKA, probes, modularity over epochs). Default: "
            "when the run kept per-epoch checkpoints; --dynamics requires them, --nodynamics skips.",
            flag_values=fv,
        )
        flags.DEFINE_integer("probe_size", 500, "Test images the representations are captured on.", flag_values=fv)
        flags.DEFINE_string(
            "data_dir", None, "Folder with the dataset files (default: the run's config).", flag_values=fv
        )
        flags.DEFINE_bool(
            "multihost",
            False,
            "Join a multi-host job (jax.distributed.initialize; start the same "
            "command in every process): the networks axis is split over every host's devices and "
            "process 0 writes.",
            flag_values=fv,
        )
    flags.DEFINE_bool("help", False, "Show this help.", flag_values=fv, short_name="h")
    return fv


def _config_source(args: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``args`` (``PATH`` or ``PATH:ARG``; the last one given), None without it."""
    value, it = None, iter(args)
    for a in it:
        if a in ("--config", "-config"):
            value = next(it, None)
        elif a.startswith(("--config=", "-config=")):
            value = a.split("=", 1)[1]
    return value


def _config_file_error(e: BaseException) -> BaseException | None:
    """What a config file's ``get_config`` raised, when ``e`` is ml_collections' wrapping of it, else None.

    ml_collections re-raises a ``TypeError`` or ``ValueError`` of ``get_config`` as one whose message is
    "Error whilst parsing config file:" and a traceback, and absl wraps that again; the original is at the
    end of the chain.
    """
    chain = [e]
    while chain[-1].__context__ is not None and len(chain) < 10:
        chain.append(chain[-1].__context__)
    wrapped = any(str(x).startswith("Error whilst parsing config file") for x in chain)
    return chain[-1] if wrapped and len(chain) > 1 else None


def _unknown_override(e: BaseException, args: Sequence[str]) -> str:
    """One line for ml_collections' error about an override of a key the config lacks.

    Its message is the quoted key, then, when it has one, a line 'Did you mean "KEY" instead of ...?'
    (a KeyError, sometimes inside an AttributeError); an override below a key that holds a value (not a
    section) is an AttributeError ending "Attempting to lookup: KEY.SUB".
    """
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    below = re.search(r"Attempting to lookup: (\S+)", text)
    if below:
        dotted = below.group(1)
        return f"--config.{dotted}: config.{dotted.rsplit('.', 1)[0]} is a value, not a section with keys"
    key = (re.findall(r"[A-Za-z_][\w.]*", text) or ["?"])[0]
    near = re.search(r'Did you mean "([^"]+)"', text)
    names = [a.split("=", 1)[0].removeprefix("--config.") for a in args if a.startswith("--config.")]
    dotted = next((n for n in reversed(names) if key in n.split(".")), key)
    hint = f" (did you mean {near.group(1)}?)" if near else ""
    return f"--config.{dotted}: the config has no key {key!r}{hint}"


def _parse(command: str, args: Sequence[str]) -> flags.FlagValues:
    """Parses ``args`` of ``command``, raising ``flags.Error`` naming the flag, key or config file."""
    argv = [f"jaxweights {command}", *last_overrides(args)]
    fv = _flag_values(command, argv)
    source = _config_source(args) if command in ("train", "study") else None
    if source is not None:  # before ml_collections, which defers a missing file's error and loses its name
        path = Path(source.split(":", 1)[0])
        if not path.is_file():
            raise flags.Error(f"--config: {path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        fv(argv)
    except flags.Error as e:
        cause = _config_file_error(e)
        if cause is None:
            raise
        what = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if not isinstance(cause, ConfigError):
            what = f"{type(cause).__name__}: {what}"
        raise flags.Error(f"--config {source}: {what}") from None
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks
        raise flags.Error(_unknown_override(e, args)) from None
    except SyntaxError as e:
        if e.filename and source and Path(e.filename).resolve() == Path(source.split(":", 1)[0]).resolve():
            raise flags.Error(f"--config {source}: {e}") from None  # the config file itself
        raise flags.Error(f"bad --config override: {e}") from None
    except (TypeError, ValueError) as e:
        raise flags.Error(f"bad --config override: {e}") from None
    if fv.help:
        config = fv.config if source is not None else None
        print(command_help(command, fv, config, source))
        raise SystemExit(0)
    if not fv.workdir:
        raise flags.Error("--workdir: required")
    return fv


def cmd_train(args: Sequence[str]) -> int:
    """`jaxweights train`: trains the config's zoo into --workdir (`train_pipeline.train_and_evaluate`)."""
    fv = _parse("train", args)
    if fv["config"].value is None:
        raise flags.Error("--config: required (a Python file such as configs/quickstart.py)")
    try:
        config = fv.config
        config.keys()
    except OSError as e:  # ml_collections defers a failed load until first use
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise flags.Error(f"--config: cannot load {_config_source(args)}: {lines[-1]}") from None
    if fv.data_dir:
        config = apply_overrides(config, {"data_dir": fv.data_dir}, where="--data_dir", keep_groups=True, new_keys=True)
    df = train_pipeline.train_and_evaluate(config, fv.workdir, overwrite=fv.overwrite, progress=fv.progress)
    last = rundir.last_epoch(df)
    diverged = last.diverged.astype(bool)
    exploded = last["exploded"].astype(bool) if "exploded" in last else diverged & False
    ok = last[~diverged & ~exploded]  # accuracy of the networks an analysis keeps
    done = (
        f"{fv.workdir} is complete, checked against its checkpoints (nothing trained): {_count(len(last), 'network')}"
    )
    print(
        (done if df.attrs.get("complete") else f"trained {_count(len(last), 'network')} into {fv.workdir}")
        + ": best test accuracy "
        f"{ok.test_acc.max():.4f}, median {ok.test_acc.median():.4f}, {int(diverged.sum())} diverged, "
        f"{int(exploded.sum())} exploded"
    )
    print(f"next: jaxweights analyze --workdir {fv.workdir}")
    return 0


def cmd_analyze(args: Sequence[str]) -> int:
    """`jaxweights analyze`: statistics, distances, claims, dynamics and the report of --workdir."""
    fv = _parse("analyze", args)
    if not 0 < fv.quantile <= 0.5:
        raise flags.Error(f"--quantile: {fv.quantile} must be in (0, 0.5]")
    threshold = None
    if fv.threshold:
        try:
            threshold = tuple(float(t) for t in fv.threshold)
        except ValueError:
            raise flags.Error(f"--threshold: {','.join(fv.threshold)!r} is not one or two numbers") from None
        if len(threshold) > 2:
            raise flags.Error(f"--threshold: {','.join(fv.threshold)!r} is not one or two numbers")
        threshold = threshold[0] if len(threshold) == 1 else threshold
    if fv.multihost:
        train_lib.init_distributed({"multihost": True})
    out = analyze.analyze_workdir(
        fv.workdir,
        metrics=fv.metrics,
        block_size=fv.block_size,
        report=fv.report,
        quantile=fv.quantile,
        threshold=threshold,
        min_accuracy=fv.min_accuracy,
        include_exploded=fv.include_exploded,
        include_not_learned=fv.include_not_learned,
        chance_margin=fv.chance_margin,
        bins=fv.bins,
        n_permutations=fv.permutations,
        n_boot=fv.bootstrap,
        dynamics=fv.dynamics,
        data_dir=fv.data_dir,
        dynamics_options={"probe_size": fv.probe_size},
    )
    print(f"analysis written to {out}")
    report_html = Path(out) / "report.html"
    if report_html.is_file():
        print(f"report: {report_html}")
    return 0


def cmd_analyze_params(args: Sequence[str]) -> int:
    """`jaxweights analyze-params`: the analysis of parameter files trained elsewhere."""
    argv = ["jaxweights analyze-params", *args]
    fv = _flag_values("analyze-params", argv)
    paths = fv(argv)[1:]
    if fv.help:
        print(command_help("analyze-params", fv))
        raise SystemExit(0)
    if not paths:
        raise flags.Error("PATH: give at least one parameter file (orbax checkpoint, .msgpack, .npz, .safetensors)")
    if not fv.out:
        raise flags.Error("--out: required")
    stacked = {"auto": None, "yes": True, "no": False}[fv.stacked]
    params, table = params_pipeline.analyze_files(
        paths,
        fv.out,
        layout=fv.layout,
        stacked=stacked,
        layers=fv.layers,
        metrics=fv.metrics,
        block_size=fv.block_size,
        figures=fv.figures,
    )
    n = int(table.network.max()) + 1
    print(f"analysed {_count(n, 'network')} from {_count(len(paths), 'file')} into {fv.out}")
    print(f"tables in {fv.out}" + (f", figures in {Path(fv.out) / 'figures'}" if fv.figures else ""))
    return 0


def cmd_prune(args: Sequence[str]) -> int:
    """`jaxweights prune`: removes the flagged hidden layers, retrains and reports the change."""
    fv = _parse("prune", args)
    report = prune.prune_run(
        fv.workdir, layers=fv.layers, data_dir=fv.data_dir, overwrite=fv.overwrite, progress=fv.progress
    )
    if report.empty:
        print(f"no layer of {fv.workdir} flagged for pruning; nothing retrained")
        return 0
    ok = ~report.diverged_original & ~report.diverged_pruned
    print(
        f"pruned zoo in {fv.workdir}/pruned: best test accuracy {report.test_acc_original[ok].max():.4f} -> "
        f"{report.test_acc_pruned[ok].max():.4f}, median change {report.delta[ok].median():+.4f} "
        f"over {_count(int(ok.sum()), 'network')}"
    )
    pruned = Path(fv.workdir) / "pruned"
    print(f"table: {pruned / 'prune.csv'}; next: jaxweights analyze --workdir {pruned}")
    return 0


def cmd_study(args: Sequence[str]) -> int:
    """`jaxweights study`: trains and analyses every zoo of a study config; one combined report."""
    fv = _parse("study", args)
    if fv["config"].value is None:
        raise flags.Error("--config: required (a study config such as configs/studies/optimal_vs_suboptimal.py)")
    config = fv.config
    if fv.data_dir:
        config.data_dir = fv.data_dir
    print(f"study report written to {study.run_study(config, fv.workdir, progress=fv.progress)}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "analyze": cmd_analyze,
    "analyze-params": cmd_analyze_params,
    "prune": cmd_prune,
    "study": cmd_study,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a `jaxweights` command; user errors print one line and give exit status 2.

    Args:
      argv: COMMAND and its arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status: 0 done, 2 a user error (or no command), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"jaxweights: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(levelname).1s %(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "orbax", "jax._src", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[command](args)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jaxweights {command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxweights {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
