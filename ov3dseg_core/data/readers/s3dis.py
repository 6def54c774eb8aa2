"""S3DIS (Stanford 3D Indoor Spaces): per-room ``Annotations/<class>_<k>.txt`` and Pointcept's npy layout.

Raw: Area_X/<room>/Annotations/<class>_<k>.txt, one object per file, rows "x y z r g b" (metres, 0..255).
Classes outside the 13 (the odd "stairs") count as clutter, as in the common preprocessing; each annotation file
is one instance. Preprocessed (Pointcept): <room>/coord.npy, color.npy, segment.npy (0..12), instance.npy.
Point clouds only: a Scene without frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.registry import REGISTRY

S3DIS13 = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
           "board", "clutter"]
"""The 13 S3DIS semantic classes, ids 0..12 in this order."""
_NUMERIC = b"0123456789.-+eE \t\r\n"
_DROP = bytes(b for b in range(256) if b not in _NUMERIC)


def detect(path: Path) -> bool:
    return (path / "Annotations").is_dir()


def detect_preprocessed(path: Path) -> bool:
    return (path / "coord.npy").exists() and (path / "segment.npy").exists()


def read_xyzrgb_txt(path: str | Path) -> np.ndarray:
    """An S3DIS "x y z r g b" text file -> (N, 6) float64; stray non-numeric bytes (a known defect in one
    released file) are dropped."""
    values = np.array(Path(path).read_bytes().translate(None, _DROP).split(), dtype=np.float64)
    if values.size % 6:
        raise ValueError(f"{path}: {values.size} numbers, not a multiple of 6 (x y z r g b rows)")
    return values.reshape(-1, 6)


def _class_of(annotation: Path) -> int:
    name = annotation.stem.rsplit("_", 1)[0]
    return S3DIS13.index(name) if name in S3DIS13 else S3DIS13.index("clutter")


@REGISTRY.register("dataset", "s3dis")
def open_s3dis(path: str | Path, progress: bool = False) -> Scene:
    """Read a raw S3DIS room folder (points, colours, 13-class labels, instance = annotation file index)."""
    path = Path(path)
    files = sorted((path / "Annotations").glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{path / 'Annotations'}: no <class>_<k>.txt annotation files")
    tables, labels, instances = [], [], []
    for instance, f in enumerate(tqdm(files, desc=path.name, unit="object", disable=not progress)):
        table = read_xyzrgb_txt(f)
        tables.append(table)
        labels.append(np.full(len(table), _class_of(f), np.int32))
        instances.append(np.full(len(table), instance, np.int32))
    table = np.concatenate(tables)
    return Scene(name=path.name, frames=[], label_names=list(S3DIS13), points=table[:, :3].astype(np.float32),
                 colors=np.clip(np.rint(table[:, 3:6]), 0, 255).astype(np.uint8),
                 labels=np.concatenate(labels), instances=np.concatenate(instances))


@REGISTRY.register("dataset", "s3dis_preprocessed")
def open_s3dis_preprocessed(path: str | Path) -> Scene:
    """Read a Pointcept S3DIS room folder (coord/color/segment[/instance].npy)."""
    path = Path(path)
    points = np.load(path / "coord.npy").astype(np.float32)
    colors = np.clip(np.rint(np.load(path / "color.npy")), 0, 255).astype(np.uint8)
    segment = np.load(path / "segment.npy").astype(np.int64).reshape(-1)
    labels = np.where((segment >= 0) & (segment < len(S3DIS13)), segment, IGNORE_LABEL).astype(np.int32)
    instances = None
    if (path / "instance.npy").exists():
        instances = np.load(path / "instance.npy").astype(np.int32).reshape(-1)
        instances[instances < 0] = IGNORE_LABEL
    return Scene(name=path.name, frames=[], label_names=list(S3DIS13), points=points, colors=colors, labels=labels,
                 instances=instances)
