"""One labelled synthetic scene: room, sensor trajectory, RGB-D frames, LiDAR scans and the ground-truth cloud.

``generate_scene(seed)`` is deterministic: the seed drives independent random streams for the layout, the
trajectory, the camera noise, the LiDAR noise and the ground-truth sampling, so changing the frame count or the
sensor settings leaves the room as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.labels import SCANNET20
from ov3dseg_core.sim.layout import ROOM_TYPES, Room, generate_layout
from ov3dseg_core.sim.sensors import DepthNoiseModel, LidarModel, LidarScan, Light, RaycastWorld, RGBDView, shade
from ov3dseg_core.sim.shapes import TriMesh
from ov3dseg_core.sim.trajectory import Trajectory, plan_trajectory


@dataclass
class CameraConfig:
    """Pinhole intrinsics in pixels; None: fx = fy = 525 * width / 640 (a Kinect-like 63 deg horizontal field of
    view) and the principal point at the image centre."""

    width: int = 640
    height: int = 480
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None

    def camera(self) -> PinholeCamera:
        f = 525.0 * self.width / 640.0
        return PinholeCamera(self.width, self.height, f if self.fx is None else self.fx,
                             f if self.fy is None else self.fy,
                             (self.width - 1) / 2.0 if self.cx is None else self.cx,
                             (self.height - 1) / 2.0 if self.cy is None else self.cy)


@dataclass
class SimConfig:
    """Everything ``generate_scene`` can vary (YAML-mappable with ov3dseg_core.config.from_dict).

    camera_height (m) and camera_pitch_deg (down) are (min, max) ranges drawn per scene; clearance: least distance
    (m) from the camera path to walls and objects; max_step (m) / max_turn_deg: bounds between consecutive frames;
    gt_spacing: ground-truth surface sampling spacing (m; density 1 / spacing^2).
    """

    room_type: str | None = None
    frames: int = 30
    fps: float = 2.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    depth_noise: DepthNoiseModel = field(default_factory=DepthNoiseModel)
    lidar: LidarModel = field(default_factory=LidarModel)
    use_lidar: bool = True
    shadows: bool = True
    gt_spacing: float = 0.02
    camera_height: tuple[float, float] = (1.2, 1.6)
    camera_pitch_deg: tuple[float, float] = (10.0, 30.0)
    clearance: float = 0.3
    max_step: float = 0.25
    max_turn_deg: float = 15.0

    def validate(self) -> None:
        if self.room_type is not None and self.room_type not in ROOM_TYPES:
            raise ValueError(f"unknown room type {self.room_type!r}; room types: {', '.join(ROOM_TYPES)}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not self.gt_spacing > 0:
            raise ValueError(f"gt_spacing must be positive, got {self.gt_spacing}")
        if self.depth_noise.scale < 0:
            raise ValueError(f"depth noise scale must be >= 0, got {self.depth_noise.scale}")


@dataclass(repr=False)
class SimScene:
    """A generated scene (map frame = room frame, metres).

    frames: RGBDFrame list (pose = T_map_camera optical, labels / instances = ground truth); lidar: LidarScan list
    (empty without LiDAR), one per frame at the same stamps; points (N, 3) float32, colors (N, 3) uint8, labels (N,)
    int32 (ceiling = IGNORE_LABEL), instances (N,) int32: surface samples of the whole mesh; observed (N,) bool:
    the sample lies on a surface some camera frame sees (exact depth, in range).
    """

    seed: int
    config: SimConfig
    room: Room
    mesh: TriMesh
    trajectory: Trajectory
    camera: PinholeCamera
    light: Light
    frames: list[RGBDFrame]
    lidar: list[LidarScan]
    points: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    observed: np.ndarray
    label_names: list[str] = field(default_factory=lambda: list(SCANNET20))

    @property
    def name(self) -> str:
        return f"sim_{self.seed:05d}_{self.room.room_type}"

    def gt_cloud(self, observed_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(points, colors, labels, instances) of all surface samples or only of the observed ones."""
        keep = self.observed if observed_only else slice(None)
        return self.points[keep], self.colors[keep], self.labels[keep], self.instances[keep]

    def to_scene(self, observed_only: bool = True) -> Scene:
        """The scene in the reader abstraction (ov3dseg_core.data.frames.Scene)."""
        points, colors, labels, instances = self.gt_cloud(observed_only)
        return Scene(self.name, self.frames, list(self.label_names), points, colors, labels, instances)


def sample_surface(mesh: TriMesh, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random samples on the mesh surface, 1 / spacing^2 per m^2 on average.

    Returns (points (N, 3) float32 metres, triangle index (N,) int64).
    """
    expected = mesh.areas() / spacing ** 2
    count = np.floor(expected).astype(np.int64) + (rng.random(len(expected)) < expected % 1.0)
    triangle = np.repeat(np.arange(mesh.num_triangles), count)
    corners = mesh.corners()[triangle]
    r1 = np.sqrt(rng.random(len(triangle)))[:, None]
    r2 = rng.random(len(triangle))[:, None]
    points = (1.0 - r1) * corners[:, 0] + r1 * (1.0 - r2) * corners[:, 1] + r1 * r2 * corners[:, 2]
    return points.astype(np.float32), triangle


OBSERVED_VOXEL = 0.05
"""Cell size (m) of the visibility test: a surface sample counts as observed when a frame sees its instance in the
sample's cell."""


def _surface_keys(points: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """(N,) int64 keys of (OBSERVED_VOXEL cell, instance) for map-frame points (room coordinates, >= 0)."""
    cell = np.floor(points / OBSERVED_VOXEL).astype(np.int64) + 1
    return ((cell[:, 0] * 4096 + cell[:, 1]) * 4096 + cell[:, 2]) * 65536 + (instances.astype(np.int64) & 0xFFFF)


def _seen_keys(view: RGBDView, stride: int) -> np.ndarray:
    """Unique surface keys of every ``stride``-th row and column of a rendered view."""
    valid = view.depth_clean > 0
    rows = np.zeros(valid.shape, bool)
    rows[::stride, ::stride] = True
    pick = rows[valid]
    return np.unique(_surface_keys(view.surface_points[pick], view.instances[valid][pick]))


def generate_scene(seed: int, room_type: str | None = None, frames: int | None = None,
                   config: SimConfig | None = None, progress: bool = False) -> SimScene:
    """Generate scene number ``seed`` (``room_type`` / ``frames`` override the config's)."""
    config = SimConfig() if config is None else config
    config = replace(config, room_type=config.room_type if room_type is None else room_type,
                     frames=config.frames if frames is None else frames)
    config.validate()
    layout_rng, path_rng, camera_rng, lidar_rng, gt_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5))

    room = generate_layout(layout_rng, config.room_type)
    mesh = room.mesh()
    trajectory = plan_trajectory(
        room, path_rng, config.frames, fps=config.fps, camera_height=path_rng.uniform(*config.camera_height),
        pitch=np.deg2rad(path_rng.uniform(*config.camera_pitch_deg)), clearance=config.clearance,
        max_step=config.max_step, max_turn=np.deg2rad(config.max_turn_deg))
    world = RaycastWorld(mesh)
    w, d, h = room.size
    light = Light((w / 2, d / 2, h - 0.15), shadows=config.shadows)
    camera = config.camera.camera()

    points, triangle = sample_surface(mesh, config.gt_spacing, gt_rng)
    normals = mesh.normals()[triangle].astype(np.float32)
    towards_light = np.einsum("ij,ij->i", normals, np.asarray(light.position, np.float32) - points) < 0
    normals[towards_light] *= -1.0
    lit = world.lit(points, normals, light) if light.shadows else np.ones(len(points), bool)
    colors = np.rint(shade(mesh.colors[triangle], points, normals, light, lit) * 255.0).astype(np.uint8)

    out_frames: list[RGBDFrame] = []
    seen = []
    stride = max(1, camera.width // 320)  # pixel footprint stays below OBSERVED_VOXEL within the depth range
    poses = trajectory.T_map_optical
    for i in tqdm(range(config.frames), desc=f"sim {seed}", unit="frame", disable=not progress):
        view = world.render_rgbd(camera, poses[i], light, config.depth_noise, camera_rng)
        seen.append(_seen_keys(view, stride))
        out_frames.append(RGBDFrame(view.color, view.depth, camera, poses[i], int(trajectory.stamps_ns[i]),
                                    view.labels, view.instances))
    scans = []
    if config.use_lidar:
        scans = [world.scan_lidar(T, config.lidar, lidar_rng, int(stamp))
                 for T, stamp in zip(trajectory.T_map_lidar, trajectory.stamps_ns)]
    instances = mesh.instances[triangle].astype(np.int32)
    observed = np.isin(_surface_keys(points, instances), np.concatenate(seen))
    return SimScene(int(seed), config, room, mesh, trajectory, camera, light, out_frames, scans, points, colors,
                    mesh.labels[triangle].astype(np.int32), instances, observed)
