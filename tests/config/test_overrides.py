"""The one override applier: dotted keys and nested dicts, unknown keys named, the input left alone."""

import pytest

from jaxweights import config as config_lib


def test_dotted_and_nested_overrides_give_the_same_config():
    base = config_lib.default_config()
    base.groups = ({"optimizer": "adam"},)
    a = config_lib.apply_overrides(base, {"model.hidden": [7, 3], "optimizer": "adam", "model.width": 5})
    b = config_lib.apply_overrides(base, {"model": {"hidden": [7, 3], "width": 5}, "optimizer": "adam"})
    assert a.to_dict() == b.to_dict()
    assert a.model.hidden == (7, 3) and a.model.width == 5 and a.model.name == "mlp"  # merged, lists as tuples
    assert a.groups == () and base.optimizer == "sgd" and base.model.hidden == (128, 64)  # a copy
    kept = config_lib.apply_overrides(base, {"seed": 3}, keep_groups=True)
    assert kept.seed == 3 and kept.groups == ({"optimizer": "adam"},)


@pytest.mark.parametrize("key", ["no_such_key", "model_x.hidden", "optimizer.lr"])
def test_an_unknown_key_is_named(key):
    with pytest.raises(config_lib.ConfigError, match=f"study overrides: unknown key '{key}'"):
        config_lib.apply_overrides(config_lib.default_config(), {key: 1}, where="study overrides")
    c = config_lib.apply_overrides(config_lib.default_config(), {"new_top": 1}, new_keys=True)
    assert c.new_top == 1  # accepted when asked (validate names it later)
    with pytest.raises(config_lib.ConfigError, match="config.new_top: not a config key"):
        config_lib.validate(c)


def test_last_overrides_keeps_the_last_of_each_key():
    args = ["--config", "f.py", "--config.a=1", "--config.b", "2", "--x", "--config.a", "3", "--config.b=4"]
    assert config_lib.last_overrides(args) == ["--config", "f.py", "--x", "--config.a", "3", "--config.b=4"]
