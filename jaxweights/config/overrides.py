"""The one config-override applier, and the command line's "last override wins" rule.

Overrides are given as dotted keys (``{"model.hidden": (64,), "optimizer": "adam"}``, as in
``config.groups``) or as nested dicts merged into the config's sections
(``{"model": {"hidden": (64,)}}``, as in a study's ``overrides``); both may be mixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from jaxweights.config.schema import ConfigError

__all__ = ["apply_overrides", "dotted_items", "last_overrides"]


def dotted_items(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested override dicts as one dict of dotted keys: ``{"model": {"hidden": x}} -> {"model.hidden": x}``.

    Args:
      overrides: dotted keys and/or nested dicts (``ConfigDict`` included).
      prefix: prepended to every key (used by the recursion).

    Returns:
      Dotted key -> value, in the given order.
    """
    out: dict[str, Any] = {}
    for key, value in dict(overrides).items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(dotted_items(dict(value), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Mapping[str, Any],
    *,
    where: str = "config.groups",
    keep_groups: bool = False,
    new_keys: bool = False,
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with overrides applied (static groups, study overrides, command-line values).

    Lists become tuples. Keys under ``model`` may be new (a model's options depend on the model);
    other keys must exist in ``config`` unless ``new_keys``.

    Args:
      config: the config to start from (left unchanged).
      overrides: dotted keys and/or nested dicts (see the module docstring).
      where: what the overrides are, named in errors (e.g. "config.groups").
      keep_groups: keep ``config.groups``; by default the copy has none (a group's own config).
      new_keys: accept keys the config lacks (``validate`` judges them later).

    Returns:
      The new config.

    Raises:
      ConfigError: an unknown key, naming it.
    """
    c = ml_collections.ConfigDict(config.to_dict())
    if not keep_groups:
        c.groups = ()
    for dotted, value in dotted_items(overrides).items():
        *parents, leaf = dotted.split(".")
        node = c
        for p in parents:
            if not isinstance(node.get(p), ml_collections.ConfigDict):  # absent, or not a section
                if not new_keys or p in node:
                    raise ConfigError(f"{where}: unknown key {dotted!r}")
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        if leaf not in node and not new_keys and not (parents and parents[0] == "model"):
            raise ConfigError(f"{where}: unknown key {dotted!r}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return c


def last_overrides(args: Sequence[str]) -> list[str]:
    """``args`` with only the last of repeated ``--config.KEY`` overrides (absl would join tuples: (16,)+(32,)).

    Handles ``--config.KEY=VALUE`` and ``--config.KEY VALUE``; everything else is kept as it is.

    Args:
      args: command-line arguments.

    Returns:
      The arguments, earlier repeats of an override dropped.
    """
    units, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--config.") and "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--"):
            units.append((a[2:], [a, args[i + 1]]))
            i += 2
            continue
        units.append((a[2:].split("=", 1)[0] if a.startswith("--config.") else None, [a]))
        i += 1
    last = {key: n for n, (key, _) in enumerate(units) if key}
    return [t for n, (key, toks) in enumerate(units) if key is None or last[key] == n for t in toks]
