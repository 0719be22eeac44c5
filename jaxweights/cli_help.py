"""Help texts of the `jaxweights` command: the synopsis of each command and ``COMMAND --help``.

absl's own help lists the module path, ``(default: 'None')`` for flags without a default and its
``--flagfile``/``--undefok`` flags; this one lists only the command's flags, their real defaults and,
for the commands that read a config, the ``--config.KEY=VALUE`` override syntax, ``:quick`` and, once
``--config`` is given, every key of that config with its value.
"""

from __future__ import annotations

import re
import textwrap

from absl import flags

from jaxweights.config import dotted_items

__all__ = ["COMMAND_SYNOPSES", "command_help", "usage"]

# command -> (arguments, what it does)
COMMAND_SYNOPSES = {
    "train": (
        "--config configs/NAME.py[:quick] --workdir DIR [--config.KEY=VALUE ...] [--data_dir DIR] [--overwrite]",
        "train a zoo of networks and write its run directory",
    ),
    "analyze": (
        "--workdir DIR",
        "statistics, node strength and distances of a trained zoo, into DIR/analysis/; then "
        "optimal vs suboptimal networks: tests, figures, report.html and summary.json; and the "
        "learning dynamics over the per-epoch checkpoints (RWC, CKA, probes, modularity)",
    ),
    "study": (
        "--config configs/studies/optimal_vs_suboptimal.py[:quick] --workdir DIR [--config.KEY=VALUE ...]",
        "train and analyse every dataset × model zoo of the study; one combined report",
    ),
    "analyze-params": (
        "PATH... --out DIR [--layout auto|torch|flax]",
        "the same for networks trained elsewhere (orbax, Flax msgpack, .npz, .safetensors)",
    ),
    "prune": (
        "--workdir DIR [--layers Dense_1,...] [--data_dir DIR]",
        "remove the MLP hidden layers flagged by modularity, retrain, report the accuracy change",
    ),
}
_WIDTH = 100
_COLUMN = 26  # where the descriptions start
_METAVARS = {"workdir": "DIR", "out": "DIR", "data_dir": "DIR", "config": "FILE[:ARG]", "layers": "A,B,..."}
_REQUIRED = {"workdir", "out"}


def usage() -> str:
    """The text of ``jaxweights --help``: every command, its main arguments and what it does."""
    lines = ["usage: jaxweights COMMAND [options]", "", "commands:"]
    for command, (args, about) in COMMAND_SYNOPSES.items():
        lines.append(f"  {command:<8} {args}" if len(command) <= 8 else f"  {command} {args}")
        lines += textwrap.wrap(about, _WIDTH, initial_indent=" " * 11, subsequent_indent=" " * 11)
    lines += ["", "Run `jaxweights COMMAND --help` for a command's options and their defaults."]
    return "\n".join(lines)


def _entry(left: str, text: str) -> list[str]:
    """One option: ``left`` in the first column, ``text`` wrapped in the second."""
    pad = " " * _COLUMN
    first = f"  {left}"
    body = textwrap.wrap(text, _WIDTH - _COLUMN) or [""]
    if len(first) >= _COLUMN - 1:
        return [first] + [pad + b for b in body]
    return [first.ljust(_COLUMN) + body[0]] + [pad + b for b in body[1:]]


def _describe(flag: flags.Flag) -> tuple[str, str]:
    """The left column and the text of a flag, its default and accepted values included."""
    kind = flag.flag_type()
    text = re.sub(r"^<[^>]*>: ", "", flag.help).rstrip(".") + "."  # absl prefixes an enum's values
    if flag.boolean:
        left = f"--[no]{flag.name}"
        if flag.default is not None:
            text += f" (default: {'on' if flag.default else 'off'})"
        return left, text
    enum = getattr(flag.parser, "enum_values", None)
    if enum:
        metavar = "|".join(enum)
    elif flag.name in _METAVARS:
        metavar = _METAVARS[flag.name]
    elif "list" in kind:
        metavar = "A,B,..."
    elif "int" in kind:
        metavar = "N"
    elif "float" in kind:
        metavar = "X"
    else:
        metavar = "VALUE"
    if flag.name in _REQUIRED:
        text += " (required)"
    elif flag.default not in (None, "", []):
        default = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
        text += f" (default: {default})"
    return f"--{flag.name} {metavar}", text


def _override_entry(command: str) -> list[str]:
    """The ``--config.KEY=VALUE`` entry."""
    example = "--config.num_seeds=2 --config.model.hidden='(32, 16)'"
    if command == "study":
        example = "--config.datasets=\"('mnist',)\" --config.models=\"('mlp',)\""
    return _entry(
        "--config.KEY=VALUE",
        f"Override one key of the config, e.g. {example} (tuples quoted); repeatable, the last value "
        "of a key wins. `jaxweights " + command + " --config FILE --help` lists the keys and their values.",
    )


def command_help(command: str, fv: flags.FlagValues, config=None, source: str | None = None) -> str:
    """The text of ``jaxweights COMMAND --help``.

    Args:
      command: one of `COMMAND_SYNOPSES`.
      fv: the command's parsed flags.
      config: the loaded ``--config`` (train, study), or None.
      source: the ``--config`` value it was loaded from.

    Returns:
      The usage line, what the command does, and each flag with its default and accepted values.
    """
    args, about = COMMAND_SYNOPSES[command]
    lines = [f"usage: jaxweights {command} {args} [options]", ""]
    lines += textwrap.wrap(about[0].upper() + about[1:] + ".", _WIDTH) + ["", "options:"]
    seen = {}
    for module_flags in fv.flags_by_module_dict().values():
        for flag in module_flags:
            seen.setdefault(flag.name, flag)
    for name in sorted(seen):
        flag = seen[name]
        if name == "help":
            continue
        if name == "config":
            where = "configs/studies/NAME.py" if command == "study" else "configs/NAME.py"
            lines += _entry(
                f"--config {_METAVARS['config']}",
                f"{flag.help.rstrip('.')} (required): a Python file whose get_config(arg) returns it, e.g. "
                f"{where}; {where}:quick passes ARG 'quick', which shrinks every shipped config to a smoke run "
                "(fewer seeds, epochs and examples).",
            )
            lines += _override_entry(command)
            continue
        lines += _entry(*_describe(flag))
    lines += _entry("-h, --help", "Show this help.")
    if config is not None:
        lines += ["", f"keys of {source} and their values (override with --config.KEY=VALUE):"]
        for key, value in dotted_items(config.to_dict()).items():
            lines += _entry(key, repr(value))
    return "\n".join(lines)
