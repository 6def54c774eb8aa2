"""Ray-cast sensors: a structured-light RGB-D camera and a spinning LiDAR (Open3D RaycastingScene, CPU, threaded).

The camera renders, per pixel, the first surface along the ray through the pixel centre: depth along the optical
axis, a Lambertian colour lit by one point light (with shadows) plus ambient light, and ground-truth class and
instance ids. A structured-light noise model then perturbs the depth (axial Gaussian noise growing with z^2) and
drops pixels at grazing incidence, at depth edges, at random and outside the working range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.sim.shapes import TriMesh

_INVALID = int(o3d.t.geometry.RaycastingScene.INVALID_ID)


@dataclass(frozen=True)
class DepthNoiseModel:
    """Structured-light depth errors (defaults after Nguyen et al. 2012 for the Kinect v1).

    sigma(z) = scale * (sigma_base + sigma_quad * (z - z_offset)^2) metres. ``scale`` 0 disables noise and all
    dropout (depth is then exact inside [min_range, max_range]). Dropout probabilities (times ``scale``, capped at
    1): ramping from 0 at ``grazing_start_deg`` to 1 at 90 deg incidence; ``edge_dropout`` where a 4-neighbour's
    depth differs by more than ``edge_relative`` * z; ``random_dropout`` everywhere.
    """

    scale: float = 1.0
    sigma_base: float = 0.0012
    sigma_quad: float = 0.0019
    z_offset: float = 0.4
    min_range: float = 0.3
    max_range: float = 6.0
    grazing_start_deg: float = 70.0
    edge_dropout: float = 0.5
    edge_relative: float = 0.05
    random_dropout: float = 0.005
    color_noise: float = 2.0
    """Standard deviation of the RGB noise in 8-bit levels (times ``scale``)."""

    def sigma(self, z: np.ndarray) -> np.ndarray:
        """Axial noise standard deviation (metres) at depth ``z`` (metres)."""
        return self.scale * (self.sigma_base + self.sigma_quad * (z - self.z_offset) ** 2)


@dataclass(frozen=True)
class LidarModel:
    """Spinning multi-beam LiDAR: ``beams`` rings evenly over ``vertical_fov_deg`` (min, max elevation), one column
    every ``horizontal_resolution_deg``; ranges outside [min_range, max_range] metres are dropped; Gaussian range
    noise ``noise_std`` metres."""

    beams: int = 16
    vertical_fov_deg: tuple[float, float] = (-15.0, 15.0)
    horizontal_resolution_deg: float = 0.4
    min_range: float = 0.2
    max_range: float = 30.0
    noise_std: float = 0.01

    def directions(self) -> tuple[np.ndarray, np.ndarray]:
        """(unit ray directions (R, 3) float32 in the LiDAR frame, ring index (R,) uint16), ring-major."""
        if self.beams < 1 or not 0 < self.horizontal_resolution_deg <= 360:
            raise ValueError(f"LiDAR needs beams >= 1 and a horizontal resolution in (0, 360] deg, got {self}")
        elevation = np.deg2rad(np.linspace(*self.vertical_fov_deg, self.beams))
        azimuth = np.deg2rad(np.arange(0.0, 360.0, self.horizontal_resolution_deg))
        e, a = np.meshgrid(elevation, azimuth, indexing="ij")
        d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
        ring = np.repeat(np.arange(self.beams, dtype=np.uint16), len(azimuth))
        return d.astype(np.float32), ring


@dataclass(frozen=True)
class Light:
    """Point light at ``position`` (3,) metres, map frame, with ambient and diffuse weights; ``shadows`` casts a
    shadow ray per pixel."""

    position: tuple[float, float, float]
    ambient: float = 0.35
    diffuse: float = 0.75
    shadows: bool = True


@dataclass
class RGBDView:
    """One rendered camera frame: color (H, W, 3) uint8; depth (H, W) float32 metres with sensor noise and dropout
    (0 = invalid); depth_clean (H, W) float32 exact depth inside the working range; labels / instances (H, W) int32
    ground truth of the first surface hit (IGNORE_LABEL = no surface / ceiling for labels, -1 = none for
    instances); surface_points (M, 3) float32 map-frame points of the pixels with depth_clean > 0, row-major."""

    color: np.ndarray
    depth: np.ndarray
    depth_clean: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    surface_points: np.ndarray


@dataclass
class LidarScan:
    """One LiDAR revolution: points (N, 3) float32 metres in the LiDAR frame, intensity (N,) float32 in [0, 1],
    ring (N,) uint16, labels / instances (N,) int32 ground truth; stamp_ns int."""

    stamp_ns: int
    points: np.ndarray
    intensity: np.ndarray
    ring: np.ndarray
    labels: np.ndarray
    instances: np.ndarray


def shade(albedo: np.ndarray, points: np.ndarray, normals: np.ndarray, light: Light, lit: np.ndarray) -> np.ndarray:
    """Lambertian radiance (N, 3) float32 in [0, 1]: albedo (N, 3) at points (N, 3) with unit normals (N, 3) on the
    side being looked at, lit by ``light`` where ``lit`` (N,) bool (ambient light only elsewhere)."""
    to_light = np.asarray(light.position, np.float32) - points
    distance2 = np.einsum("ij,ij->i", to_light, to_light)
    cos = np.einsum("ij,ij->i", normals, to_light) / np.sqrt(np.maximum(distance2, 1e-12))
    direct = np.maximum(cos, 0.0) * lit / (1.0 + distance2 / 25.0)  # gentle fall-off: half at 5 m
    intensity = (light.ambient + light.diffuse * direct).astype(np.float32)
    return np.clip(albedo * intensity[:, None], 0.0, 1.0)


class RaycastWorld:
    """A TriMesh loaded into an Open3D RaycastingScene, with its per-triangle attributes for look-ups."""

    def __init__(self, mesh: TriMesh):
        self.mesh = mesh
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                                 o3d.core.Tensor(mesh.triangles.astype(np.uint32)))

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hits of rays (N, 3) + (N, 3) float32 (map frame).

        Returns (t (N,) float32 hit distance in units of the direction length, inf = miss; triangle (N,) int64, -1
        = miss; normal (N, 3) float32 unit face normal turned against the ray).
        """
        rays = np.empty((len(directions), 6), np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = directions
        hits = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = hits["t_hit"].numpy()
        triangle = hits["primitive_ids"].numpy().astype(np.int64)
        triangle[triangle == _INVALID] = -1
        normal = hits["primitive_normals"].numpy()
        normal *= np.where(np.einsum("ij,ij->i", normal, directions) > 0, -1.0, 1.0).astype(np.float32)[:, None]
        return t, triangle, normal

    def lit(self, points: np.ndarray, normals: np.ndarray, light: Light) -> np.ndarray:
        """(N,) bool: whether the straight segment from each surface point to the light is free."""
        origins = points + 1e-3 * normals
        rays = np.empty((len(points), 6), np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = np.asarray(light.position, np.float32) - origins
        return ~self.scene.test_occlusions(o3d.core.Tensor(rays), tnear=0.0, tfar=0.999).numpy()

    def render_rgbd(self, camera: PinholeCamera, T_world_camera: np.ndarray, light: Light,
                    noise: DepthNoiseModel, rng: np.random.Generator) -> RGBDView:
        """Render one RGB-D frame from the optical-frame pose T_world_camera (4, 4)."""
        if camera.is_distorted:
            raise ValueError("the simulated camera is rectified: give a camera without distortion")
        h, w = camera.height, camera.width
        R = np.asarray(T_world_camera[:3, :3], np.float32)
        u = (np.arange(w, dtype=np.float32) - np.float32(camera.cx)) / np.float32(camera.fx)
        v = (np.arange(h, dtype=np.float32) - np.float32(camera.cy)) / np.float32(camera.fy)
        # ray through pixel (u, v): R @ (u, v, 1), so that t along it is the depth
        directions = (u[None, :, None] * R[:, 0] + (v[:, None, None] * R[:, 1] + R[:, 2])).reshape(-1, 3)
        origin = np.asarray(T_world_camera[:3, 3], np.float32)
        t, triangle, normal = self.cast(np.broadcast_to(origin, directions.shape), directions)
        hit = triangle >= 0
        z = np.where(hit, t, np.float32(0.0))
        in_range = hit & (z >= noise.min_range) & (z <= noise.max_range)
        tri = np.where(hit, triangle, 0)  # misses are masked below
        labels = np.where(hit, self.mesh.labels[tri], IGNORE_LABEL).astype(np.int32)
        instances = np.where(hit, self.mesh.instances[tri], -1).astype(np.int32)

        points = origin + directions * z[:, None]
        lit = self.lit(points, normal, light) & hit if light.shadows else hit
        color = shade(self.mesh.colors[tri], points, normal, light, lit) * (np.float32(255.0) * hit[:, None])
        color += rng.standard_normal(color.shape, dtype=np.float32) * np.float32(noise.color_noise * noise.scale)

        depth = z + rng.standard_normal(z.shape, dtype=np.float32) * noise.sigma(z).astype(np.float32)
        cos_incidence = np.abs(np.einsum("ij,ij->i", normal, directions)) / np.sqrt(
            np.einsum("ij,ij->i", directions, directions))
        drop = self._dropout(z.reshape(h, w), cos_incidence, noise, rng).reshape(-1)
        depth = np.where(in_range & ~drop, depth, np.float32(0.0))
        return RGBDView(np.clip(np.rint(color), 0, 255).astype(np.uint8).reshape(h, w, 3), depth.reshape(h, w),
                        np.where(in_range, z, np.float32(0.0)).reshape(h, w), labels.reshape(h, w),
                        instances.reshape(h, w), points[in_range])

    @staticmethod
    def _dropout(z: np.ndarray, cos_incidence: np.ndarray, noise: DepthNoiseModel,
                 rng: np.random.Generator) -> np.ndarray:
        """(H, W) bool pixels the structured-light sensor loses (see DepthNoiseModel)."""
        angle = np.degrees(np.arccos(np.clip(cos_incidence, 0.0, 1.0))).reshape(z.shape)
        p_grazing = np.clip((angle - noise.grazing_start_deg) / (90.0 - noise.grazing_start_deg), 0.0, 1.0)
        edge = np.zeros(z.shape, bool)
        for a, b in ((np.s_[1:, :], np.s_[:-1, :]), (np.s_[:, 1:], np.s_[:, :-1])):
            jump = np.abs(z[a] - z[b]) > noise.edge_relative * np.minimum(z[a], z[b])
            edge[a] |= jump
            edge[b] |= jump
        keep = (1.0 - p_grazing) * (1.0 - noise.edge_dropout * edge) * (1.0 - noise.random_dropout)
        p_drop = np.clip(noise.scale * (1.0 - keep), 0.0, 1.0)
        return rng.random(z.shape) < p_drop

    def scan_lidar(self, T_world_lidar: np.ndarray, model: LidarModel, rng: np.random.Generator,
                   stamp_ns: int = 0) -> LidarScan:
        """One revolution from pose T_world_lidar (4, 4), all rays from that pose (no motion distortion)."""
        d_lidar, ring = model.directions()
        R = np.asarray(T_world_lidar[:3, :3], np.float32)
        origin = np.asarray(T_world_lidar[:3, 3], np.float32)
        directions = d_lidar @ R.T
        t, triangle, normal = self.cast(np.broadcast_to(origin, directions.shape), directions)
        r = t + rng.normal(0.0, model.noise_std, t.shape).astype(np.float32)
        keep = (triangle >= 0) & (t >= model.min_range) & (t <= model.max_range)
        tri = triangle[keep]
        albedo = self.mesh.colors[tri] @ np.array([0.299, 0.587, 0.114], np.float32)
        cos = np.abs(np.einsum("ij,ij->i", normal[keep], directions[keep]))
        return LidarScan(int(stamp_ns), (d_lidar[keep] * r[keep, None]).astype(np.float32),
                         (albedo * cos).astype(np.float32), ring[keep], self.mesh.labels[tri].astype(np.int32),
                         self.mesh.instances[tri].astype(np.int32))
