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
    "jaxweights.importers": (
        "jaxweights.io.importers",
        "jaxweights.pipelines.params",
        "jaxweights.report.params_figures",
    ),
    "jaxweights.stats": (
        "jaxweights.weights.stats",
        "jaxweights.weights.compute",
        "jaxweights.weights.binning",
        "jaxweights.weights.units",
        "jaxweights.models.paths",
        "jaxweights.train.sharding",
    ),
    "jaxweights.strength": ("jaxweights.weights.strength",),
    "jaxweights.distances": ("jaxweights.weights.distances",),
    "jaxweights.groups": ("jaxweights.claims.groups",),
    "jaxweights.figures": ("jaxweights.report.figures", "jaxweights.report.style"),
    "jaxweights.analysis": (
        "jaxweights.pipelines.analyze",
        "jaxweights.pipelines.grouping",
        "jaxweights.pipelines.errors",
        "jaxweights.pipelines.params",
        "jaxweights.claims",
    ),
    "jaxweights.run": (
        "jaxweights.pipelines.train",
        "jaxweights.pipelines.train_chunk",
        "jaxweights.train",
        "jaxweights.data",
    ),
    "jaxweights.study": ("jaxweights.pipelines.study",),
    "jaxweights.prune": ("jaxweights.pipelines.prune",),
}

# names that changed as well as moved: (old module, old name) -> "new.module:new_name"
RENAMED: dict[tuple[str, str], str] = {
    ("jaxweights.rundir", "flatten_params"): "jaxweights.models.paths:flatten",
    ("jaxweights.rundir", "unflatten_params"): "jaxweights.models.paths:unflatten",
    ("jaxweights.rundir", "execution_order"): "jaxweights.models.paths:execution_order",
    ("jaxweights.analysis", "network_groups"): "jaxweights.claims.groups:network_groups",
    ("jaxweights.analysis", "zoo_summary"): "jaxweights.pipelines.analyze:zoo_summary",
    ("jaxweights.distances", "ALL"): "jaxweights.weights.stats:ALL",
    ("jaxweights.report", "_finite"): "jaxweights.io.atomic:finite_json",
    ("jaxweights.dynamics", "report_sections"): "jaxweights.report.dynamics:report_sections",
    ("jaxweights.dynamics", "plot_rwc"): "jaxweights.report.dynamics:plot_rwc",
    ("jaxweights.dynamics", "plot_cka"): "jaxweights.report.dynamics:plot_cka",
    ("jaxweights.dynamics", "plot_modularity"): "jaxweights.report.dynamics:plot_modularity",
    ("jaxweights.dynamics", "plot_stats_over_epochs"): "jaxweights.report.dynamics:plot_stats_over_epochs",
    ("jaxweights.dynamics", "write_figures"): "jaxweights.report.dynamics:write_figures",
}


def _moved_name(old_module: str, name: str, new: str):
    module, new_name = new.split(":")
    warnings.warn(
        f"{old_module}.{name} moved to {module}.{new_name}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), new_name)


def forward(module_name: str):
    """A module-level `__getattr__` for a package whose names partly moved (the RENAMED entries of `module_name`)."""

    def __getattr__(name: str):
        new = RENAMED.get((module_name, name))
        if new is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return _moved_name(module_name, name, new)

    return __getattr__


class _AliasModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        renamed = RENAMED.get((self.__name__, name))
        if renamed:
            return _moved_name(self.__name__, name, renamed)
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
