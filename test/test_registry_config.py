"""The component registry and the YAML -> dataclass config loader."""
import dataclasses

import pytest

from ov3dseg_core.config import ConfigError, from_dict, load_config
from ov3dseg_core.registry import Registry


def test_registry_builds_with_type_and_overrides():
    reg = Registry()

    @reg.register("head", "Linear")
    class Linear:
        def __init__(self, dim, bias=True):
            self.dim, self.bias = dim, bias

    obj = reg.build("head", {"type": "Linear", "dim": 4}, bias=False)
    assert (obj.dim, obj.bias) == (4, False)
    assert reg.names("head") == ["Linear"]


def test_registry_errors_name_the_problem():
    reg = Registry()
    reg.register("head", "A")(object)
    with pytest.raises(KeyError, match=r"unknown head 'B' \(registered: A\)"):
        reg.get("head", "B")
    with pytest.raises(KeyError, match="needs a 'type' key"):
        reg.build("head", {"dim": 3})
    with pytest.raises(KeyError, match="already registered"):
        reg.register("head", "A")(dict)


@dataclasses.dataclass
class Inner:
    size: float = 0.05


@dataclasses.dataclass
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    items: list[Inner] = dataclasses.field(default_factory=list)


def test_from_dict_recurses_and_rejects_unknown_keys():
    cfg = from_dict(Outer, {"name": "y", "inner": {"size": 0.1}, "items": [{"size": 1.0}]})
    assert cfg.inner == Inner(0.1) and cfg.items == [Inner(1.0)] and cfg.name == "y"
    with pytest.raises(ConfigError, match=r"inner: unknown keys \['colour'\]"):
        from_dict(Outer, {"inner": {"colour": 1}})


def test_load_config_reads_yaml_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("outer:\n  name: z\n  inner: {size: 0.2}\n")
    assert load_config(Outer, path, section="outer") == Outer("z", Inner(0.2))
    with pytest.raises(ConfigError, match="no config file"):
        load_config(Outer, tmp_path / "missing.yaml")
