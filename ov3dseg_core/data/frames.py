"""The one scene/frame abstraction every dataset reader returns.

A ``Scene`` holds a (lazy) sequence of posed ``RGBDFrame`` objects and, when the dataset has one, a labelled
reference point cloud. Readers never decode images up front: ``LazyFrames`` calls a per-index loader on access.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ov3dseg_core.geometry.camera import PinholeCamera, backproject_rgbd, project_points
from ov3dseg_core.geometry.transforms import invert_transform, transform_points
from ov3dseg_core.labels import IGNORE_LABEL, UNLABELLED_U16


@dataclass
class RGBDFrame:
    """One registered RGB-D frame.

    color: (H, W, 3) uint8 RGB or None; depth: (H, W) float32 metres, 0 = invalid (registered to colour);
    camera: intrinsics of both images; pose: (4, 4) float64 T_world_camera (optical frame) or None when unknown;
    stamp_ns: source time, integer nanoseconds; labels / instances: (H, W) int32 class / instance ids,
    IGNORE_LABEL (-1) = none.
    """

    color: np.ndarray | None
    depth: np.ndarray
    camera: PinholeCamera
    pose: np.ndarray | None = None
    stamp_ns: int = 0
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.depth.ndim != 2:
            raise ValueError(f"RGBDFrame depth must be (H, W), got shape {self.depth.shape}")
        h, w = self.depth.shape
        if (w, h) != (self.camera.width, self.camera.height):
            raise ValueError(f"RGBDFrame depth is {w}x{h} but the camera is {self.camera.width}x{self.camera.height}")
        if self.color is not None and self.color.shape != (h, w, 3):
            raise ValueError(f"RGBDFrame color must be ({h}, {w}, 3) like the depth, got {self.color.shape}")
        for name in ("labels", "instances"):
            image = getattr(self, name)
            if image is not None and image.shape != (h, w):
                raise ValueError(f"RGBDFrame {name} must be ({h}, {w}) like the depth, got {image.shape}")
        if self.pose is not None and np.shape(self.pose) != (4, 4):
            raise ValueError(f"RGBDFrame pose must be a (4, 4) T_world_camera, got shape {np.shape(self.pose)}")


class LazyFrames(Sequence):
    """A sequence of frames decoded on access by ``loader(index) -> RGBDFrame``; slicing stays lazy."""

    def __init__(self, loader: Callable[[int], RGBDFrame], count: int, indices: Sequence[int] | None = None):
        self._loader = loader
        self._indices = range(count) if indices is None else indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, item):  # type: ignore[override]
        if isinstance(item, slice):
            return LazyFrames(self._loader, 0, self._indices[item])
        return self._loader(self._indices[item])

    def __iter__(self) -> Iterator[RGBDFrame]:
        return (self._loader(i) for i in self._indices)


@dataclass
class Scene:
    """A dataset scene: frames (lazy) plus an optional labelled point cloud in the world frame.

    points: (N, 3) float32 metres, world frame; colors: (N, 3) uint8 RGB; labels / instances: (N,) int32,
    IGNORE_LABEL (-1) = none. ``label_names[i]`` names class id ``i`` (frame and point labels alike).
    """

    name: str
    frames: Sequence[RGBDFrame]
    label_names: list[str] = field(default_factory=list)
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is None:
            return
        n = len(self.points)
        if np.shape(self.points) != (n, 3):
            raise ValueError(f"Scene {self.name}: points must be (N, 3), got {np.shape(self.points)}")
        for name in ("colors", "labels", "instances"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Scene {self.name}: {name} has {len(value)} rows for {n} points")


def labels_to_u16(labels: np.ndarray) -> np.ndarray:
    """int class ids (IGNORE_LABEL or any negative = none) -> uint16 with UNLABELLED_U16 = none.

    Raises ValueError for ids that do not fit below UNLABELLED_U16.
    """
    labels = np.asarray(labels)
    if labels.size and labels.max() >= UNLABELLED_U16:
        raise ValueError(f"label id {int(labels.max())} does not fit a 16-bit label image (max {UNLABELLED_U16 - 1})")
    return np.where(labels < 0, UNLABELLED_U16, labels).astype(np.uint16)


def labels_from_u16(image: np.ndarray) -> np.ndarray:
    """uint16 label image (UNLABELLED_U16 = none) -> int32 with IGNORE_LABEL = none."""
    image = np.asarray(image).astype(np.int32)
    image[image == UNLABELLED_U16] = IGNORE_LABEL
    return image


def depth_to_u16_mm(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) float metres -> uint16 millimetres; invalid (<= 0, NaN/inf) and beyond 65.535 m -> 0."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    mm = np.rint(np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)


def frame_points(frame: RGBDFrame, min_range: float = 0.1, max_range: float = 10.0, stride: int = 1,
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Back-project a posed frame into the world frame.

    Returns (points (N, 3) float32 metres world frame, column-major (a view of one (3, N) array, as
    ``backproject_rgbd`` gives; ``VoxelMap.integrate`` reads it axis by axis without a copy), colors (N, 3) uint8 |
    None, labels (N,) int32 | None). Raises ValueError when the frame has no pose.
    """
    if frame.pose is None:
        raise ValueError("frame has no pose (T_world_camera); cannot place its points in the world")
    points, _, colors, labels = backproject_rgbd(frame.camera, frame.depth, frame.color, frame.labels,
                                                 min_range=min_range, max_range=max_range, stride=stride,
                                                 pose=frame.pose)
    return points, colors, labels


def depth_reprojection_error(source: RGBDFrame, target: RGBDFrame, max_range: float = 10.0) -> np.ndarray:
    """Geometric consistency of two posed frames: back-project ``source`` depth into ``target``'s camera.

    Returns (M,) float32 metres: |z predicted from source - depth measured in target| for every source point
    that lands inside the target image on a valid target depth pixel.
    """
    points_world, _, _ = frame_points(source, max_range=max_range)
    if target.pose is None:
        raise ValueError("target frame has no pose (T_world_camera)")
    points_target = transform_points(invert_transform(target.pose), points_world)
    uv, z, valid = project_points(target.camera, points_target)
    u = np.rint(uv[valid, 0]).astype(np.int64)  # pixel centres sit at integer coordinates
    v = np.rint(uv[valid, 1]).astype(np.int64)
    z = z[valid]
    inside = (u >= 0) & (u < target.camera.width) & (v >= 0) & (v < target.camera.height)
    measured = target.depth[v[inside], u[inside]]
    has_depth = measured > 0
    return np.abs(z[inside][has_depth] - measured[has_depth]).astype(np.float32)
