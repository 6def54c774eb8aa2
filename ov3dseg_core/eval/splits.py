"""Base/novel category splits, loaded from the YAML data files in ov3dseg_core/splits/.

A split file holds ``name``, ``dataset``, ``classes`` (the dataset's categories in id order), ``base``, ``novel`` and
``ignore`` (class names). ``base``, ``novel`` and ``ignore`` partition ``classes``. Ground-truth points of ``ignore``
classes are skipped and predictions of them count as misses, as PLA does with its ``ignore_class_idx`` (e.g. ScanNet's
"other furniture", leaving the 19 evaluated classes). Splits are matched to a scene's label names by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ov3dseg_core.labels import IGNORE_LABEL

SPLIT_DIR = Path(__file__).resolve().parent.parent / "splits"


class SplitError(ValueError):
    """A split file that is missing, malformed or inconsistent, or that does not fit a scene's label names."""


@dataclass(frozen=True)
class Split:
    name: str
    dataset: str
    classes: tuple[str, ...]
    base: tuple[str, ...]
    novel: tuple[str, ...]
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"split {self.name!r}"
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise SplitError(f"{where}: duplicate class names {dup}")
        if not self.base or not self.novel:
            raise SplitError(f"{where}: base and novel must both be non-empty")
        groups = {"base": self.base, "novel": self.novel, "ignore": self.ignore}
        for key, names in groups.items():
            unknown = sorted(set(names) - set(self.classes))
            if unknown:
                raise SplitError(f"{where}: {key} names {unknown} are not in its class list")
            if len(set(names)) != len(names):
                raise SplitError(f"{where}: duplicate names in {key}")
        for a, b in (("base", "novel"), ("base", "ignore"), ("novel", "ignore")):
            both = sorted(set(groups[a]) & set(groups[b]))
            if both:
                raise SplitError(f"{where}: {both} are in both {a} and {b}")
        missing = [c for c in self.classes if c not in set(self.base) | set(self.novel) | set(self.ignore)]
        if missing:
            raise SplitError(f"{where}: classes {missing} are in none of base, novel, ignore")

    @property
    def evaluated(self) -> list[str]:
        """The base and novel classes in class-list order (what the metrics are computed over)."""
        keep = set(self.base) | set(self.novel)
        return [c for c in self.classes if c in keep]

    def label_lookup(self, label_names: Sequence[str]) -> np.ndarray:
        """(L + 1,) int64 table: scene label id -> index into ``evaluated`` (IGNORE_LABEL for ignored classes);
        the last entry maps IGNORE_LABEL to itself, so ``table[ids]`` works on ids in [-1, L)."""
        unknown = [n for n in label_names if n not in self.classes]
        if unknown:
            raise SplitError(f"split {self.name!r} ({self.dataset}) has no classes {unknown}; "
                             f"its classes are {list(self.classes)}")
        return name_mapping(label_names, self.evaluated)


def name_mapping(source_names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """(S + 1,) int64 table mapping ids of ``source_names`` to ids of ``target_names`` by name (IGNORE_LABEL where
    the target lacks the name); the last entry maps IGNORE_LABEL to itself, so ``table[ids]`` works on [-1, S)."""
    index = {name: i for i, name in enumerate(target_names)}
    return np.array([index.get(n, IGNORE_LABEL) for n in source_names] + [IGNORE_LABEL], dtype=np.int64)


def available_splits() -> list[str]:
    """Names of the shipped split files."""
    return sorted(p.stem for p in SPLIT_DIR.glob("*.yaml"))


def load_split(name_or_path: str | Path) -> Split:
    """A shipped split by name (e.g. ``scannet_b15n4``) or a split YAML file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SPLIT_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SplitError(f"no split {str(name_or_path)!r}; shipped splits: {', '.join(available_splits())}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    required = ("name", "dataset", "classes", "base", "novel")
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise SplitError(f"{path}: a split file needs the keys {list(required)} (and optionally 'ignore')")
    extra = sorted(set(data) - set(required) - {"ignore"})
    if extra:
        raise SplitError(f"{path}: unknown keys {extra}")
    lists = {}
    for key in ("classes", "base", "novel", "ignore"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SplitError(f"{path}: {key} must be a list of class names")
        lists[key] = tuple(value)
    return Split(name=str(data["name"]), dataset=str(data["dataset"]), **lists)
