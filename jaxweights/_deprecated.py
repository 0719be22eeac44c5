"""Old flat module names, kept importable for one release.

Version 0.2 laid the package out by data-flow stage (`config`, `data`, `models`, `train`, `io`, `weights`,
`dynamics`, `claims`, `report`, `pipelines`). The flat modules of 0.1 (`jaxweights.stats`, `jaxweights.analysis`, ...)
no longer exist as files; importing one gives a module whose attributes are looked up, in order, in the modules that
now hold them, with a `DeprecationWarning` naming the new place. These aliases go in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module -> the modules that now hold its public names, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "jaxweights.presets": ("jaxweights.config.presets",),
    "jaxweights.rundir": (
        "jaxweights.io.rundir",
        "jaxweights.io.atomic",
        "jaxweights.io.checkpoints",
        "jaxweights.models.paths",
    ),
    "jaxweights.importers": ("jaxweights.io.importers", "jaxweights.pipelines.analyze_params"),
    "jaxweights.stats": (
        "jaxweights.weights.stats",
        "jaxweights.weights.compute",
        "jaxweights.models.paths",
        "jaxweights.train.sharding",
    ),
    "jaxweights.strength": ("jaxweights.weights.strength",),
    "jaxweights.distances": ("jaxweights.weights.distances",),
    "jaxweights.groups": ("jaxweights.claims.groups",),
    "jaxweights.figures": ("jaxweights.report.figures", "jaxweights.report.style"),
    "jaxweights.analysis": ("jaxweights.pipelines.analyze", "jaxweights.claims"),
    "jaxweights.run": ("jaxweights.pipelines.train", "jaxweights.train", "jaxweights.data"),
    "jaxweights.study": ("jaxweights.pipelines.study",),
    "jaxweights.prune": ("jaxweights.pipelines.prune",),
}


class _AliasModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(
                    f"{self.__name__}.{name} moved to {target}.{name}; the old name goes in the next release",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(
            f"module {self.__name__!r} has no attribute {name!r} (it moved in 0.2: see {MOVED[self.__name__]})"
        )


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name only when no real module of that name exists (it sits last on `sys.meta_path`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _AliasModule(spec.name)

    def exec_module(self, module):
        module.__doc__ = (
            f"Deprecated alias: the names of {module.__name__} now live in {', '.join(MOVED[module.__name__])}."
        )


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
