"""The one component registry: models, losses, encoders and readers are looked up here by (group, name).

    @REGISTRY.register("backbone", "SpUNet34C")
    class SpUNet34C(nn.Module): ...

    model = REGISTRY.build("backbone", {"type": "SpUNet34C", "in_channels": 6})

YAML configs name components by their ``type``; the remaining keys are the constructor's keyword arguments.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping


class Registry:
    """Maps (group, name) to a class or factory function."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Callable[..., Any]]] = {}

    def register(self, group: str, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``obj`` under ``group`` as ``name`` (default: its ``__name__``)."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            entries = self._entries.setdefault(group, {})
            if key in entries and entries[key] is not obj:
                raise KeyError(f"{group}/{key} is already registered by {entries[key]!r}")
            entries[key] = obj
            return obj

        return decorator

    def get(self, group: str, name: str) -> Callable[..., Any]:
        """The object registered as ``group/name``; KeyError listing the known names otherwise."""
        try:
            return self._entries[group][name]
        except KeyError:
            known = ", ".join(sorted(self._entries.get(group, {}))) or "none"
            raise KeyError(f"unknown {group} {name!r} (registered: {known})") from None

    def names(self, group: str) -> list[str]:
        return sorted(self._entries.get(group, {}))

    def groups(self) -> list[str]:
        return sorted(self._entries)

    def build(self, group: str, cfg: Mapping[str, Any] | str, **overrides: Any) -> Any:
        """Instantiate from ``{"type": name, **kwargs}`` (or just a name), with ``overrides`` on top."""
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if "type" not in cfg:
            raise KeyError(f"{group} config needs a 'type' key, got keys {sorted(cfg)}")
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        kwargs.update(overrides)
        return self.get(group, cfg["type"])(**kwargs)


REGISTRY = Registry()
