"""Read the tensors of a torch checkpoint whose pickle also holds arbitrary objects, without running their code.

Released checkpoints often fail ``torch.load(weights_only=True)`` only because of objects around the weights:
Lightning's ``hyper_parameters`` (``functools.partial`` network factories, omegaconf configs, torchmetrics
objects) or a NumPy ``best_iou``. This module is a ``pickle_module`` for ``torch.load(weights_only=False)`` whose
unpickler resolves only the globals that rebuild tensors and ordered dicts; every other global becomes
:class:`Skipped`, an inert stand-in that accepts and drops whatever the pickle hands it, so no code named by the
file is imported or called. Tensors come back intact; skipped objects are listed by ``load_tensors``.
"""
from __future__ import annotations

import contextvars
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}
"""(module, name) pairs resolved for real: what ``torch.save`` writes for a dict of tensors and parameters."""

_skipped: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("skipped_globals", default=None)


class Skipped:
    """Stand-in for a pickled object outside ``ALLOWED_GLOBALS``: construction, state and items are ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class Unpickler(pickle.Unpickler):
    """Resolves ``ALLOWED_GLOBALS`` only (torch's wrapper handles storage types before asking); the rest is Skipped."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        skipped = _skipped.get()
        if skipped is not None:
            skipped.add(f"{module}.{name}")
        return Skipped


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`Unpickler` (torch's legacy-format reader calls it)."""
    return Unpickler(file, **kwargs).load()


def load_tensors(path: str | Path) -> tuple[Any, list[str]]:
    """``torch.load`` of ``path`` on the CPU through this module: (the object, sorted names of skipped globals)."""
    skipped: set[str] = set()
    token = _skipped.set(skipped)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__])
    finally:
        _skipped.reset(token)
    return data, sorted(skipped)
