"""Smooth, collision-free sensor trajectories through a furnished room.

The platform (base_link, REP-105: x forward, z up, on the floor) drives a smooth closed loop around the open floor
(a gently wobbling ellipse fitted to the free space) while its heading keeps the sensors looking across the room
interior. The camera sits on a static mount above the base; frames are spaced so that neither the step nor the
heading change between two frames exceeds its bound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3dseg_core.data.bag_writer import T_LINK_OPTICAL
from ov3dseg_core.sim.layout import Room

_DENSE_SAMPLES = 2000


@dataclass
class Trajectory:
    """Platform poses and the static sensor mounts.

    stamps_ns (K,) int64; T_map_base (K, 4, 4) float64 (z = 0, yaw only); T_base_camera: base_link ->
    camera_link (x forward, z up, pitched down); T_camera_optical: camera_link -> optical frame;
    T_base_lidar: base_link -> lidar_link.
    """

    stamps_ns: np.ndarray
    T_map_base: np.ndarray
    T_base_camera: np.ndarray
    T_camera_optical: np.ndarray
    T_base_lidar: np.ndarray

    @property
    def T_map_optical(self) -> np.ndarray:
        """(K, 4, 4) camera poses T_map_camera (optical frame)."""
        return self.T_map_base @ (self.T_base_camera @ self.T_camera_optical)

    @property
    def T_map_lidar(self) -> np.ndarray:
        """(K, 4, 4) LiDAR poses."""
        return self.T_map_base @ self.T_base_lidar


def sensor_mounts(camera_height: float, pitch: float, lidar_height: float) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """Static (T_base_camera, T_camera_optical, T_base_lidar): camera ``camera_height`` m above the base, pitched
    down by ``pitch`` rad; LiDAR level at ``lidar_height`` m."""
    T_base_camera = np.eye(4)
    c, s = np.cos(pitch), np.sin(pitch)
    T_base_camera[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]  # +pitch about y tilts x downwards
    T_base_camera[2, 3] = camera_height
    T_camera_optical = T_LINK_OPTICAL.copy()
    T_base_lidar = np.eye(4)
    T_base_lidar[2, 3] = lidar_height
    return T_base_camera, T_camera_optical, T_base_lidar


def plan_loop(room: Room, rng: np.random.Generator, clearance: float) -> np.ndarray:
    """A closed loop (M, 2) around the open floor: a gently wobbling ellipse fitted to the free cells (principal
    axes of the cells at least ``clearance`` + 2 cm from walls and objects), centred on one of a few open spots and
    scaled as large as every point keeping that distance allows (the largest loop wins). Falls back to a single
    spot (turning on the spot) where no loop fits."""
    xy, free = room.clearance_grid()
    xy, free = xy.reshape(-1, 2), free.reshape(-1)
    need = clearance + 0.02
    if free.max() < need + 0.03:
        raise RuntimeError(f"no spot in the room is {need + 0.03:.2f} m away from all objects and walls")
    free_enough = free >= need
    cells, cell_clearance = xy[free_enough], free[free_enough]
    theta = np.linspace(0.0, 2.0 * np.pi, _DENSE_SAMPLES, endpoint=False)
    wobble = 1.0 + sum(rng.uniform(0.0, 0.08) * np.sin(k * theta + rng.uniform(0.0, 2.0 * np.pi)) for k in (2, 3))
    variance, axes = np.linalg.eigh(np.cov(cells.T) if len(cells) > 2 else np.eye(2) * 1e-6)
    # semi-axes sqrt(3) sigma: the half extents of a uniform spread of free cells along each principal axis
    unit = (np.column_stack([np.cos(theta), np.sin(theta)]) * np.sqrt(3.0 * np.maximum(variance, 0.0))) @ axes.T
    unit *= wobble[:, None]
    most_open = cells[cell_clearance >= np.quantile(cell_clearance, 0.7)]
    centers = [np.average(cells, axis=0, weights=cell_clearance), xy[free.argmax()]]
    centers += list(most_open[rng.choice(len(most_open), min(6, len(most_open)), replace=False)])
    best, best_scale = None, 0.0
    for center in centers:
        for scale in np.linspace(1.0, 0.1, 19):
            if scale <= best_scale:
                break
            if room.horizontal_clearance(center + scale * unit).min() >= need:
                best, best_scale = center, scale
                break
    if best is not None:
        loop = best + best_scale * unit
        smaller = best + rng.uniform(0.75, 1.0) * best_scale * unit
        return smaller if room.horizontal_clearance(smaller).min() >= need else loop
    return np.repeat(xy[free.argmax()][None], _DENSE_SAMPLES, axis=0)


def plan_trajectory(room: Room, rng: np.random.Generator, frames: int, fps: float = 2.0, camera_height: float = 1.4,
                    pitch: float = np.deg2rad(12.0), clearance: float = 0.3, max_step: float = 0.25,
                    max_turn: float = np.deg2rad(15.0), start_ns: int = 1_700_000_000_000_000_000) -> Trajectory:
    """``frames`` poses along a free-space loop, ``1/fps`` s apart, looking across the room.

    Heading = direction to the loop centre plus a slow sweep of up to +-30 deg. Consecutive frames are at most
    ``max_step`` metres and ``max_turn`` rad apart; when the whole loop does not fit these bounds, the frames cover
    part of it. The camera stays ``clearance`` m (horizontally, hence also in 3D) away from walls and objects.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not clearance < camera_height < room.size[2] - clearance:
        raise ValueError(f"camera height {camera_height} m must keep {clearance} m from floor and ceiling "
                         f"(room height {room.size[2]:.2f} m)")
    loop = plan_loop(room, rng, clearance)
    center = loop.mean(axis=0)
    step = np.linalg.norm(np.diff(loop, axis=0, append=loop[:1]), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])  # arc length at each sample and at the closing point
    length = arc[-1]
    phase = np.concatenate([arc[:-1] / length if length > 1e-9 else np.arange(len(loop)) / len(loop), [1.0]])
    to_center = center - loop
    radial = np.where(np.linalg.norm(to_center, axis=1) > 1e-6, np.arctan2(to_center[:, 1], to_center[:, 0]),
                      2.0 * np.pi * phase[:-1])
    sweep = np.deg2rad(rng.uniform(10.0, 30.0)) * np.sin(2.0 * np.pi * 2.0 * phase[:-1] + rng.uniform(0, 2 * np.pi))
    yaw = np.unwrap(radial + sweep)
    yaw = np.append(yaw, yaw[0] + (np.round((yaw[-1] - yaw[0]) / (2 * np.pi)) * 2 * np.pi))  # closing sample
    # progress: one unit = the larger of max_step metres and max_turn radians
    progress = np.concatenate([[0.0], np.cumsum(np.maximum(step / max_step, np.abs(np.diff(yaw)) / max_turn))])
    total = progress[-1]
    increment = min(1.0, total / frames) if total > 0 else 0.0
    targets = (rng.uniform(0.0, total) + increment * np.arange(frames)) % max(total, 1e-12)
    closed = np.vstack([loop, loop[:1]])
    x = np.interp(targets, progress, closed[:, 0])
    y = np.interp(targets, progress, closed[:, 1])
    heading = np.interp(targets, progress, yaw)
    T = np.tile(np.eye(4), (frames, 1, 1))
    c, s = np.cos(heading), np.sin(heading)
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
    T[:, 0, 3], T[:, 1, 3] = x, y
    lidar_height = min(camera_height + 0.2, room.size[2] - clearance)
    stamps = start_ns + np.round(np.arange(frames) * 1e9 / fps).astype(np.int64)
    return Trajectory(stamps, T, *sensor_mounts(camera_height, pitch, lidar_height))
