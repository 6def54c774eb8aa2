"""TUM RGB-D benchmark sequences: rgb.txt, depth.txt, groundtruth.txt (+ rgb/, depth/ PNGs, depth scale 5000).

Colour and depth are associated by nearest time stamp (within ``max_dt``, one-to-one); the ground-truth pose
(tx ty tz qx qy qz qw, T_world_camera) is interpolated at the colour stamp between its two neighbours when both
lie within ``max_dt``. A folder holding just one ``<prefix>color.png`` / ``<prefix>depth.png`` pair (as Open3D's
TUM sample) reads as a one-frame scene without pose.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ov3dseg_core.data.frames import LazyFrames, RGBDFrame, Scene
from ov3dseg_core.data.image_files import read_color, read_u16
from ov3dseg_core.geometry.camera import PinholeCamera, depth_to_metres
from ov3dseg_core.geometry.transforms import interpolate_transform, make_transform
from ov3dseg_core.registry import REGISTRY

DEPTH_SCALE = 5000.0
TUM_CAMERAS = {
    "fr1": PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "fr2": PinholeCamera(640, 480, 520.9, 521.0, 325.1, 249.7, (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "fr3": PinholeCamera(640, 480, 535.4, 539.2, 320.1, 247.6),
    "ros_default": PinholeCamera(640, 480, 525.0, 525.0, 319.5, 239.5),
}
"""Published calibrations of the three Kinects, and ROS's default set, by name."""


def detect(path: Path) -> bool:
    return path.is_dir() and (((path / "rgb.txt").exists() and (path / "depth.txt").exists())
                              or _single_pair(path) is not None)


def _single_pair(path: Path) -> tuple[Path, Path] | None:
    for color in sorted(path.glob("*color.png")):
        depth = color.with_name(color.name[: -len("color.png")] + "depth.png")
        if depth.exists():
            return color, depth
    return None


def camera_for(path: str | Path) -> PinholeCamera:
    """The Kinect calibration named by a sequence folder (``freiburgN`` / ``frN``); fr1 when unnamed."""
    match = re.search(r"(?:freiburg|fr)([123])", Path(path).resolve().name)
    return TUM_CAMERAS[f"fr{match.group(1)}" if match else "fr1"]


def read_file_list(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """A TUM list file (``# comment`` lines, then ``stamp rest...``) -> (stamps (N,) float64 s, rest strings)."""
    stamps, rest = [], []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.replace(",", " ").partition(" ")
        stamps.append(float(head))
        rest.append(tail.strip())
    return np.asarray(stamps, dtype=np.float64), rest


def associate(a: np.ndarray, b: np.ndarray, max_dt: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest-stamp matches of sorted stamp arrays -> (indices into a, indices into b).

    Each b is used at most once (by its closest a); pairs further apart than ``max_dt`` seconds are dropped.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    right = np.clip(np.searchsorted(b, a), 1, len(b) - 1) if len(b) > 1 else np.zeros(len(a), np.int64)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(b[left] - a) <= np.abs(b[right] - a), left, right)
    dt = np.abs(b[nearest] - a)
    ia = np.nonzero(dt <= max_dt)[0]
    order = np.lexsort((dt[ia], nearest[ia]))  # by b index, then by closeness
    ia = ia[order]
    keep = np.ones(len(ia), bool)
    keep[1:] = nearest[ia][1:] != nearest[ia][:-1]
    ia = np.sort(ia[keep])
    return ia, nearest[ia]


def _interpolated_poses(stamps: np.ndarray, gt_path: Path, max_dt: float) -> list[np.ndarray | None]:
    gt_t, rest = read_file_list(gt_path)
    values = np.array([r.split() for r in rest], dtype=np.float64).reshape(-1, 7)
    order = np.argsort(gt_t)
    gt_t, values = gt_t[order], values[order]
    poses: list[np.ndarray | None] = []
    idx = np.searchsorted(gt_t, stamps)
    for t, i in zip(stamps, idx):
        if i < len(gt_t) and gt_t[i] == t:
            poses.append(make_transform(values[i, :3], values[i, 3:]))
        elif 0 < i < len(gt_t) and t - gt_t[i - 1] <= max_dt and gt_t[i] - t <= max_dt:
            alpha = (t - gt_t[i - 1]) / (gt_t[i] - gt_t[i - 1])
            poses.append(interpolate_transform(make_transform(values[i - 1, :3], values[i - 1, 3:]),
                                               make_transform(values[i, :3], values[i, 3:]), alpha))
        else:
            poses.append(None)
    return poses


@REGISTRY.register("dataset", "tum")
def open_tum(path: str | Path, camera: PinholeCamera | str | None = None, max_dt: float = 0.02,
             depth_scale: float = DEPTH_SCALE) -> Scene:
    """Read a TUM RGB-D sequence folder (or a single colour/depth pair folder).

    camera: a PinholeCamera, a TUM_CAMERAS name, or None (chosen from the folder name, see camera_for).
    """
    path = Path(path)
    camera = camera_for(path) if camera is None else TUM_CAMERAS[camera] if isinstance(camera, str) else camera
    if not ((path / "rgb.txt").exists() and (path / "depth.txt").exists()):
        pair = _single_pair(path)
        if pair is None:
            raise FileNotFoundError(f"{path}: no rgb.txt/depth.txt and no *color.png/*depth.png pair")

        def load_single(_: int) -> RGBDFrame:
            return RGBDFrame(color=read_color(pair[0]), depth=depth_to_metres(read_u16(pair[1]), depth_scale),
                             camera=camera)

        return Scene(name=path.name, frames=LazyFrames(load_single, 1))
    rgb_t, rgb_files = read_file_list(path / "rgb.txt")
    depth_t, depth_files = read_file_list(path / "depth.txt")
    ia, ib = associate(rgb_t, depth_t, max_dt)
    stamps = rgb_t[ia]
    gt = path / "groundtruth.txt"
    poses = _interpolated_poses(stamps, gt, max_dt) if gt.exists() else [None] * len(ia)

    def load(i: int) -> RGBDFrame:
        return RGBDFrame(color=read_color(path / rgb_files[ia[i]]),
                         depth=depth_to_metres(read_u16(path / depth_files[ib[i]]), depth_scale),
                         camera=camera, pose=poses[i], stamp_ns=int(round(stamps[i] * 1e9)))

    return Scene(name=path.name, frames=LazyFrames(load, len(ia)))
