"""Redwood / ICL-NUIM sequences: color/*.jpg|png, depth/*.png (uint16 mm), trajectory.log, camera json.

``trajectory.log`` (Open3D's format) holds per frame a header line "i j k" (i = frame index) and 4 rows of the
camera-to-world matrix T_world_camera (optical frame). ``camera_primesense.json`` stores the intrinsic matrix
column-major; without it the PrimeSense defaults (fx = fy = 525, cx = 319.5, cy = 239.5) apply.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ov3dseg_core.data.frames import LazyFrames, RGBDFrame, Scene
from ov3dseg_core.data.image_files import read_color, read_u16
from ov3dseg_core.geometry.camera import PinholeCamera, depth_to_metres
from ov3dseg_core.registry import REGISTRY

PRIMESENSE_DEFAULT = PinholeCamera(width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def detect(path: Path) -> bool:
    return (path / "depth").is_dir() and (path / "color").is_dir() and any(path.glob("*.log"))


def read_trajectory_log(path: str | Path) -> dict[int, np.ndarray]:
    """Open3D/Redwood .log trajectory -> {frame index: (4, 4) float64 T_world_camera}."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) % 5:
        raise ValueError(f"{path}: {len(rows)} non-empty lines; a .log trajectory has 5 per frame")
    poses = {}
    for k in range(0, len(rows), 5):
        header, matrix = rows[k], rows[k + 1:k + 5]
        if len(header) != 3 or any(len(r) != 4 for r in matrix):
            raise ValueError(f"{path}: block at line {k + 1} is not 'i j k' + 4 rows of 4 numbers")
        poses[int(header[0])] = np.array(matrix, dtype=np.float64)
    return poses


def read_camera_json(path: str | Path) -> PinholeCamera:
    """Open3D PinholeCameraIntrinsic JSON (width, height, column-major intrinsic_matrix)."""
    data = json.loads(Path(path).read_text())
    K = np.array(data["intrinsic_matrix"], dtype=np.float64).reshape(3, 3).T
    return PinholeCamera.from_K(K, int(data["width"]), int(data["height"]))


@REGISTRY.register("dataset", "redwood")
def open_redwood(path: str | Path, camera: PinholeCamera | None = None, depth_scale: float = 1000.0,
                 fps: float = 30.0, trajectory: str = "trajectory.log") -> Scene:
    """Read a Redwood/ICL-NUIM folder. Stamps are synthetic: frame i at i / fps seconds.

    Frames without a trajectory entry (or all frames, when the trajectory file is absent) have pose None.
    """
    path = Path(path)
    colors = sorted(p for p in (path / "color").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    depths = sorted(p for p in (path / "depth").iterdir() if p.suffix.lower() == ".png")
    if not depths:
        raise FileNotFoundError(f"{path / 'depth'}: no depth PNGs")
    if colors and len(colors) != len(depths):
        raise ValueError(f"{path}: {len(colors)} colour images but {len(depths)} depth images")
    if camera is None:
        json_files = sorted(path.glob("camera*.json"))
        camera = read_camera_json(json_files[0]) if json_files else PRIMESENSE_DEFAULT
    poses = read_trajectory_log(path / trajectory) if (path / trajectory).exists() else {}

    def load(i: int) -> RGBDFrame:
        depth = depth_to_metres(read_u16(depths[i]), depth_scale=depth_scale)
        color = read_color(colors[i]) if colors else None
        return RGBDFrame(color=color, depth=depth, camera=camera, pose=poses.get(i), stamp_ns=int(round(i * 1e9 / fps)))

    return Scene(name=path.name, frames=LazyFrames(load, len(depths)), label_names=[])
