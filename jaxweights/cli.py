"""The `jaxweights` command: a thin layer over the library.

    jaxweights train   --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value ...]
                       [--data_dir DIR] [--overwrite] [--no-progress]
    jaxweights analyze --workdir DIR [--metrics a,b] [--block_size K]

User errors (bad config keys or values, missing or corrupted data, a workdir holding another
run) print one line naming the key, file or value and exit with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

USAGE = """usage: jaxweights COMMAND [options]

commands:
  train    --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...] [--data_dir DIR] [--overwrite]
           train a zoo of networks and write its run directory
  analyze  --workdir DIR
           statistics, node strength and distances of a trained zoo, into DIR/analysis/

Run `jaxweights COMMAND --help` for a command's options.
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    from absl import flags
    from jaxweights.config import ConfigError
    from jaxweights.data import DataError
    from jaxweights.run import RunError
    from jaxweights.analysis import AnalysisError
    return (ConfigError, DataError, RunError, AnalysisError, flags.Error, FileNotFoundError, NotADirectoryError,
            PermissionError, IsADirectoryError)


def _flag_values(command: str, argv: list[str]):
    from absl import flags
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run directory.", flag_values=fv)
    if command == "train":
        from ml_collections import config_flags
        config_flags.DEFINE_config_file("config", None, "Config file (a Python file with get_config).",
                                        flag_values=fv, lock_config=False, sys_argv=argv,
                                        accept_new_attributes=True)  # checked by config.validate
        flags.DEFINE_string("data_dir", None, "Folder with the dataset files (overrides config.data_dir).",
                            flag_values=fv)
        flags.DEFINE_bool("overwrite", False, "Discard what --workdir holds instead of resuming.", flag_values=fv)
        flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
    elif command == "analyze":
        flags.DEFINE_list("metrics", None, "Distance metrics to compute (default: all built-in).", flag_values=fv)
        flags.DEFINE_integer("block_size", 64, "Rows and columns of the N×N distance blocks.", flag_values=fv)
    flags.DEFINE_bool("help", False, "Show this help.", flag_values=fv, short_name="h")
    return fv


def _parse(command: str, args: Sequence[str]):
    from absl import flags
    argv = [f"jaxweights {command}", *args]
    fv = _flag_values(command, argv)
    try:
        fv(argv)
    except flags.Error:
        raise
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks
        key = str(e).strip("\"'")
        raise flags.Error(f"--config.{key}: the config has no key {key!r}") from None
    except (TypeError, ValueError, SyntaxError) as e:
        raise flags.Error(f"bad --config override: {e}") from None
    if fv.help:
        print(f"usage: jaxweights {command} [options]\n")
        print(fv.main_module_help() or fv.get_help())
        raise SystemExit(0)
    if not fv.workdir:
        raise flags.Error("--workdir: required")
    return fv


def cmd_train(args: Sequence[str]) -> int:
    from absl import flags
    fv = _parse("train", args)
    if fv["config"].value is None:
        raise flags.Error("--config: required (a Python file such as configs/quickstart.py)")
    try:
        config = fv.config
        config.keys()
    except OSError as e:  # ml_collections defers a failed load until first use
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise flags.Error(f"--config: cannot load {fv['config'].value!r}: {lines[-1]}") from None
    if fv.data_dir:
        with config.unlocked():
            config.data_dir = fv.data_dir
    from jaxweights import run
    df = run.train_and_evaluate(config, fv.workdir, overwrite=fv.overwrite, progress=fv.progress)
    last = df[df.epoch == df.epoch.max()]
    ok = last[~last.diverged.astype(bool)]
    print(f"trained {len(last)} networks into {fv.workdir}: best test accuracy "
          f"{ok.test_acc.max():.4f}, median {ok.test_acc.median():.4f}, {int(last.diverged.sum())} diverged")
    return 0


def cmd_analyze(args: Sequence[str]) -> int:
    fv = _parse("analyze", args)
    from jaxweights import analysis
    out = analysis.analyze_workdir(fv.workdir, metrics=fv.metrics, block_size=fv.block_size)
    print(f"analysis written to {out}")
    return 0


COMMANDS = {"train": cmd_train, "analyze": cmd_analyze}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"jaxweights: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname).1s %(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[command](args)
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jaxweights {command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxweights {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
