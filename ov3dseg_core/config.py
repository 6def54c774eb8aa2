"""YAML configuration files mapped onto (nested) dataclasses, with unknown keys rejected."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration file or value that does not fit its dataclass."""


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, or the shipped config ``ov3dseg_core/configs/<name>.yaml``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"no config file {str(name_or_path)!r} and no shipped config of that name (shipped: {known})")


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into dataclass-typed fields.

    Unknown keys raise ConfigError naming the key and the accepted ones; missing keys take the defaults.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; accepted: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints.get(key, Any), value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return from_dict(arg, value, where)
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]):
            items = [from_dict(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
            return origin(items)
        return origin(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able data."""
    return dataclasses.asdict(obj)


def load_config(cls: type[T], name_or_path: str | Path, section: str | None = None) -> T:
    """Load a YAML file (or a shipped config name) into dataclass ``cls``, optionally from one top-level section."""
    data = load_yaml(name_or_path)
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, section or "")
