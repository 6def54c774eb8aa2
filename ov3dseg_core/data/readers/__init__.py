"""Dataset readers, one module per format, each registered in REGISTRY group "dataset" and returning a Scene.

    scene = open_scene("scans/scene0000_00")            # format detected from the files present
    scene = open_scene("Area_1/office_1", fmt="s3dis")
    scene = REGISTRY.build("dataset", {"type": "tum", "path": "rgbd_dataset_freiburg1_xyz"})
"""
from __future__ import annotations

from pathlib import Path

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.data.readers import dataset_folder, redwood, replica, s3dis, scannet, tum
from ov3dseg_core.registry import REGISTRY

# (format name, detector) in the order tried: the more specific layouts first
_DETECTORS = (
    ("dataset_folder", dataset_folder.detect),
    ("scannet", scannet.detect),
    ("scannet_preprocessed", scannet.detect_preprocessed),
    ("s3dis_preprocessed", s3dis.detect_preprocessed),
    ("s3dis", s3dis.detect),
    ("replica", replica.detect),
    ("tum", tum.detect),
    ("redwood", redwood.detect),
)


def detect_format(path: str | Path) -> str:
    """The dataset format name of ``path`` (a folder or file); ValueError listing the known formats if none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    for name, detector in _DETECTORS:
        if detector(path):
            return name
    raise ValueError(f"cannot tell the dataset format of {path}; pass fmt= one of {REGISTRY.names('dataset')}")


def open_scene(path: str | Path, fmt: str | None = None, **options) -> Scene:
    """Open a dataset scene with the reader registered as ``fmt`` (detected when None)."""
    return REGISTRY.get("dataset", fmt or detect_format(path))(path, **options)
