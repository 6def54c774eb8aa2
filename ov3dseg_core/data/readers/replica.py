"""Replica as rendered for NICE-SLAM: <scene>/results/frame%06d.jpg, depth%06d.png, <scene>/traj.txt.

traj.txt holds one row-major 4x4 T_world_camera per line (OpenCV optical convention, camera -> world).
``cam_params.json`` (in the scene folder or its parent) gives {"camera": {w, h, fx, fy, cx, cy, scale}};
without it NICE-SLAM's published values apply (1200x680, f = 600, c = (599.5, 339.5), depth scale 6553.5).
The scene mesh ``<parent>/<scene>_mesh.ply``, when present, becomes the (unlabelled) point cloud.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ov3dseg_core.data.frames import LazyFrames, RGBDFrame, Scene
from ov3dseg_core.data.image_files import read_color, read_u16
from ov3dseg_core.data.ply import read_ply_vertices
from ov3dseg_core.geometry.camera import PinholeCamera, depth_to_metres
from ov3dseg_core.registry import REGISTRY

DEFAULT_CAMERA = PinholeCamera(1200, 680, 600.0, 600.0, 599.5, 339.5)
DEFAULT_DEPTH_SCALE = 6553.5


def detect(path: Path) -> bool:
    return (path / "results").is_dir() and (path / "traj.txt").exists()


def read_cam_params(path: str | Path) -> tuple[PinholeCamera, float]:
    """NICE-SLAM cam_params.json -> (camera, depth scale in units per metre)."""
    cam = json.loads(Path(path).read_text())["camera"]
    camera = PinholeCamera(int(cam["w"]), int(cam["h"]), float(cam["fx"]), float(cam["fy"]), float(cam["cx"]),
                           float(cam["cy"]))
    return camera, float(cam.get("scale", DEFAULT_DEPTH_SCALE))


@REGISTRY.register("dataset", "replica")
def open_replica(path: str | Path, fps: float = 30.0) -> Scene:
    """Read a NICE-SLAM Replica scene folder; stamps are synthetic (frame i at i / fps seconds)."""
    path = Path(path)
    colors = sorted((path / "results").glob("frame*.jpg")) or sorted((path / "results").glob("frame*.png"))
    depths = sorted((path / "results").glob("depth*.png"))
    if not depths or len(colors) != len(depths):
        raise FileNotFoundError(f"{path / 'results'}: {len(colors)} frame* and {len(depths)} depth* images")
    poses = np.array((path / "traj.txt").read_text().split(), dtype=np.float64)
    if poses.size % 16 or poses.size // 16 < len(depths):
        raise ValueError(f"{path / 'traj.txt'}: {poses.size} numbers, need 16 per frame for {len(depths)} frames")
    poses = poses.reshape(-1, 4, 4)
    params = next((p for p in (path / "cam_params.json", path.parent / "cam_params.json") if p.exists()), None)
    camera, depth_scale = read_cam_params(params) if params else (DEFAULT_CAMERA, DEFAULT_DEPTH_SCALE)

    def load(i: int) -> RGBDFrame:
        return RGBDFrame(color=read_color(colors[i]), depth=depth_to_metres(read_u16(depths[i]), depth_scale),
                         camera=camera, pose=poses[i].copy(), stamp_ns=int(round(i * 1e9 / fps)))

    mesh = path.parent / f"{path.name}_mesh.ply"
    points = mesh_colors = None
    if mesh.exists():
        v = read_ply_vertices(mesh)
        points = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
        if "red" in v.dtype.names:
            mesh_colors = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    return Scene(name=path.name, frames=LazyFrames(load, len(depths)), points=points, colors=mesh_colors)
