"""Version 0.1's public names still import for one release, from their old modules, with a warning."""

import importlib
import json
import warnings
from pathlib import Path

import pytest

from jaxweights import _deprecated

# every public top-level name of the 0.1 modules (read from their source when the layout changed)
OLD = json.loads((Path(__file__).parent / "deprecated_names_0_1.json").read_text())


@pytest.mark.parametrize("module", sorted(OLD))
def test_every_public_name_of_0_1_still_imports(module):
    mod = importlib.import_module(module)
    moved = module in _deprecated.MOVED  # a flat module that no longer exists as a file
    for name in OLD[module]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = getattr(mod, name)
        assert value is not None, f"{module}.{name}"
        if moved:
            assert any(issubclass(w.category, DeprecationWarning) and name in str(w.message) for w in caught), name


def test_an_old_name_is_the_new_object_and_the_warning_names_the_new_place():
    from jaxweights.models import paths
    from jaxweights.weights import compute

    with pytest.warns(
        DeprecationWarning, match=r"jaxweights\.stats\.compute_statistics moved to jaxweights\.weights\.compute"
    ):
        from jaxweights.stats import compute_statistics
    assert compute_statistics is compute.compute_statistics
    with pytest.warns(DeprecationWarning, match=r"rundir\.flatten_params moved to jaxweights\.models\.paths\.flatten"):
        from jaxweights.rundir import flatten_params
    assert flatten_params is paths.flatten
    with pytest.raises(AttributeError, match="moved in 0.2"):
        _ = importlib.import_module("jaxweights.stats").no_such_name
