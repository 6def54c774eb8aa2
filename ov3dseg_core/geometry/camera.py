"""Pinhole camera model (optional OpenCV plumb_bob / rational_polynomial distortion), depth back-projection and
point projection.

Camera frames are optical frames (x right, y down, z forward). Pixel (u, v) is the centre of column u, row v, so an
image covers [-0.5, W - 0.5] x [-0.5, H - 0.5] in continuous pixel coordinates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from ov3dseg_core.geometry.transforms import as_transform

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")
"""CameraInfo distortion models understood here (coefficients k1, k2, p1, p2, k3[, k4, k5, k6])."""

UNDISTORT_ITERATIONS = 20
"""Fixed-point iterations used to invert the distortion when precomputing the pixel rays."""

UNDISTORT_TOLERANCE_PX = 0.01
"""Largest re-distortion error (pixels) accepted for the pixel rays; larger means the model is not invertible."""


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of an image of ``width`` x ``height`` pixels; focal lengths and principal point in pixels.

    ``distortion``: OpenCV coefficients (k1, k2, p1, p2[, k3[, k4, k5, k6]]); empty or all zero for a rectified image.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive integers, got {self.width} x {self.height}")
        values = np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float64)
        if not np.all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics must be finite with fx, fy > 0, got fx={self.fx} fy={self.fy} "
                             f"cx={self.cx} cy={self.cy}")
        distortion = tuple(float(c) for c in self.distortion)
        if len(distortion) not in (0, 4, 5, 8) or not np.all(np.isfinite(distortion)):
            raise ValueError(f"distortion must hold 0, 4, 5 or 8 finite coefficients, got {self.distortion!r}")
        for name, value in (("width", int(self.width)), ("height", int(self.height)), ("fx", float(self.fx)),
                            ("fy", float(self.fy)), ("cx", float(self.cx)), ("cy", float(self.cy)),
                            ("distortion", distortion)):
            object.__setattr__(self, name, value)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def is_distorted(self) -> bool:
        """Whether any distortion coefficient is non-zero."""
        return any(self.distortion)

    @classmethod
    def from_K(cls, K, width: int, height: int, distortion=()) -> "PinholeCamera":
        """Camera from a (3, 3) intrinsic matrix (or its 9 values row-major); ValueError for skew or a bad last row."""
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        if K[0, 1] != 0 or K[1, 0] != 0 or not np.array_equal(K[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got\n{K}")
        return cls(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], tuple(distortion))

    @classmethod
    def from_camera_info(cls, msg) -> "PinholeCamera":
        """Camera from a sensor_msgs/CameraInfo (rclpy or rosbags: ``.k``, ``.d``, ``.width``, ``.height``).

        ValueError for an all-zero K (uncalibrated) or non-zero coefficients of an unsupported distortion model.
        """
        k = np.asarray(msg.k, dtype=np.float64)
        if k.size != 9 or not np.any(k):
            raise ValueError(f"CameraInfo.k must hold 9 values of a calibrated camera, got {list(k)}")
        distortion = tuple(float(c) for c in msg.d)
        model = getattr(msg, "distortion_model", "")
        if any(distortion) and model not in DISTORTION_MODELS:
            raise ValueError(f"unsupported distortion model {model!r} with non-zero coefficients "
                             f"(supported: {', '.join(DISTORTION_MODELS)})")
        return cls.from_K(k, msg.width, msg.height, distortion if any(distortion) else ())

    def scaled(self, factor: float) -> "PinholeCamera":
        """The camera of this image resized by ``factor`` (size rounded; pixel centres map as (u + 0.5) f - 0.5)."""
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        return PinholeCamera(
            width=max(1, round(self.width * factor)), height=max(1, round(self.height * factor)),
            fx=self.fx * factor, fy=self.fy * factor,
            cx=(self.cx + 0.5) * factor - 0.5, cy=(self.cy + 0.5) * factor - 0.5, distortion=self.distortion)


def depth_to_metres(depth: np.ndarray, depth_scale: float | None = None) -> np.ndarray:
    """(H, W) float32 depth in metres, 0 = invalid, from a raw depth image.

    ``depth_scale``: raw units per metre; default 1000 for integer images (16UC1 millimetres) and 1 for floating
    point images (32FC1 metres); e.g. 5000 for TUM RGB-D. NaN, inf, zero and negative values become 0.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) image, got shape {depth.shape}")
    if depth.dtype.kind in "ui":
        scale = 1000.0 if depth_scale is None else depth_scale
    elif depth.dtype.kind == "f":
        scale = 1.0 if depth_scale is None else depth_scale
    else:
        raise ValueError(f"depth must be an integer or floating point image, got {depth.dtype}")
    if not scale > 0:
        raise ValueError(f"depth_scale must be positive, got {depth_scale}")
    metres = depth.astype(np.float32)
    if scale != 1.0:
        metres /= np.float32(scale)
    metres[~(np.isfinite(metres) & (metres > 0))] = 0.0
    return metres


def backproject_depth(camera: PinholeCamera, depth_m: np.ndarray, min_range: float = 0.1, max_range: float = 10.0,
                      stride: int = 1, pose: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Back-project the valid pixels of a metric depth image into the camera (optical) frame, or through ``pose``.

    ``depth_m``: (H, W) float depth along the optical axis in metres (0 / NaN = invalid), matching the camera size.
    A pixel is kept when min_range <= depth <= max_range and depth > 0; ``stride`` keeps every stride-th row/column.
    ``pose``: optional (4, 4) T_target_camera; the points are then returned in the target frame (applied in
    float32 in the same pass).
    Returns (points (N, 3) float32 metres, camera (or target) frame, column-major (a view of a contiguous (3, N)
    array, which ``transform_points`` and ``VoxelMap.integrate`` process axis by axis); pixel_index (N,) int64 =
    v * W + u in the full image), in pixel order.
    """
    return backproject_rgbd(camera, depth_m, min_range=min_range, max_range=max_range, stride=stride, pose=pose)[:2]


def backproject_rgbd(camera: PinholeCamera, depth_m: np.ndarray, colors: np.ndarray | None = None,
                     labels: np.ndarray | None = None, min_range: float = 0.1, max_range: float = 10.0,
                     stride: int = 1, pose: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``backproject_depth`` that also reads the registered (H, W, 3) uint8 ``colors`` and (H, W) integer ``labels``
    images at the kept pixels, in the same pass. Returns (points, pixel_index, colors (N, 3) uint8 | None, labels
    (N,) int32 | None)."""
    depth_m = np.asarray(depth_m)
    _check_image_size(camera, depth_m)
    if depth_m.dtype.kind != "f":
        raise ValueError(f"depth_m must be floating point metres (use depth_to_metres), got {depth_m.dtype}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    for name, image, shape in (("colors", colors, depth_m.shape + (3,)), ("labels", labels, depth_m.shape)):
        if image is not None and np.shape(image) != shape:
            raise ValueError(f"{name} must have shape {shape} like the depth image, got {np.shape(image)}")
    T = np.eye(4) if pose is None else as_transform(pose)
    points, pixels, point_colors, point_labels = _backproject(
        np.asarray(depth_m, np.float32), _pixel_rays(camera)[0], int(stride), np.float32(min_range),
        np.float32(max_range), T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32),
        _NO_COLORS if colors is None else np.asarray(colors, np.uint8),
        _NO_LABELS if labels is None else np.asarray(labels, np.int32))
    return (points.T, pixels, None if colors is None else point_colors, None if labels is None else point_labels)


_NO_COLORS, _NO_LABELS = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.int32)
"""Stand-ins for absent images in ``_backproject`` (one compiled signature)."""


@numba.njit(cache=True, nogil=True, inline="always")
def _kept_depth(d, min_range, max_range):
    """Whether a depth value (metres) is back-projected: min_range <= d <= max_range and d > 0 (False for NaN)."""
    return d >= min_range and d <= max_range and d > 0


@numba.njit(cache=True, nogil=True)
def _backproject(depth, rays, stride, min_range, max_range, R, t, colors, labels):
    """The kernel of ``backproject_rgbd``: (3, N) float32 points R @ (ray * depth) + t, (N,) int64 pixel indices,
    (N, 3) colours and (N,) labels (empty when their images are) of the valid pixels of every stride-th row and
    column (a counting pass, then per row a vectorised transform of the whole row and a compacting copy)."""
    height, width = depth.shape
    with_colors, with_labels = colors.shape[0] == height, labels.shape[0] == height
    n = 0
    for v in range(0, height, stride):
        for u in range(0, width, stride):
            if _kept_depth(depth[v, u], min_range, max_range):
                n += 1
    points = np.empty((3, n), np.float32)
    pixels = np.empty(n, np.int64)
    point_colors = np.empty((n if with_colors else 0, 3), np.uint8)
    point_labels = np.empty(n if with_labels else 0, np.int32)
    row = np.empty((3, width), np.float32)
    k = 0
    for v in range(0, height, stride):
        for u in range(width):
            d = depth[v, u]
            x, y = rays[0, v, u] * d, rays[1, v, u] * d
            for a in range(3):
                row[a, u] = R[a, 0] * x + R[a, 1] * y + R[a, 2] * d + t[a]
        for u in range(0, width, stride):
            if _kept_depth(depth[v, u], min_range, max_range):
                for a in range(3):
                    points[a, k] = row[a, u]
                pixels[k] = v * width + u
                if with_colors:
                    for c in range(3):
                        point_colors[k, c] = colors[v, u, c]
                if with_labels:
                    point_labels[k] = labels[v, u]
                k += 1
    return points, pixels, point_colors, point_labels


def project_points(camera: PinholeCamera, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project (N, 3) points in the camera (optical) frame, metres, to pixel coordinates.

    Returns (uv (N, 2) float32 pixels (NaN behind the camera), z (N,) float32 depth in metres, valid (N,) bool).
    ``valid``: in front of the camera and inside the image, -0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5, so the
    pixel containing a valid point is np.rint(uv) (or uv + 0.5 floored); with distortion, points outside the
    field of view of the image are invalid too (the distortion polynomial would fold them back in).
    """
    points_cam = np.asarray(points_cam)
    if points_cam.ndim != 2 or points_cam.shape[1] != 3 or points_cam.dtype.kind != "f":
        raise ValueError(f"points_cam must be (N, 3) floating point, got {points_cam.shape} {points_cam.dtype}")
    z = points_cam[:, 2]
    front = z > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_z = np.where(front, 1 / z, np.nan).astype(z.dtype, copy=False)
    x, y = points_cam[:, 0] * inverse_z, points_cam[:, 1] * inverse_z
    valid = front
    if camera.is_distorted:
        valid &= x * x + y * y <= _pixel_rays(camera)[1]
        x, y = _distort(x, y, camera.distortion)
    uv = np.empty((len(points_cam), 2), dtype=np.float32)
    u = np.multiply(x, camera.fx, out=uv[:, 0], casting="same_kind")
    v = np.multiply(y, camera.fy, out=uv[:, 1], casting="same_kind")
    u += camera.cx
    v += camera.cy
    valid &= (u >= -0.5) & (u < camera.width - 0.5) & (v >= -0.5) & (v < camera.height - 0.5)
    return uv, z.astype(np.float32), valid


def _check_image_size(camera: PinholeCamera, image: np.ndarray) -> None:
    """ValueError unless ``image`` is (H, W) with the camera's size."""
    if image.shape != (camera.height, camera.width):
        raise ValueError(f"image of shape {image.shape} does not match the camera size "
                         f"(height {camera.height}, width {camera.width})")


@functools.lru_cache(maxsize=16)
def _pixel_rays(camera: PinholeCamera) -> tuple[np.ndarray, float]:
    """Undistorted normalised rays (x/z, y/z) of every pixel centre, (2, H, W) float32 (read-only), and the
    largest squared ray radius in the image. Cached per camera. ValueError if the distortion cannot be inverted
    over the image."""
    u = (np.arange(camera.width, dtype=np.float64) - camera.cx) / camera.fx
    v = (np.arange(camera.height, dtype=np.float64) - camera.cy) / camera.fy
    x, y = np.meshgrid(u, v)
    if camera.is_distorted:
        x_distorted, y_distorted = x, y
        x, y = _undistort(x_distorted, y_distorted, camera.distortion)
        x_again, y_again = _distort(x, y, camera.distortion)
        error_px = np.maximum(np.abs(x_again - x_distorted) * camera.fx, np.abs(y_again - y_distorted) * camera.fy)
        if not error_px.max() <= UNDISTORT_TOLERANCE_PX:
            raise ValueError(f"distortion {camera.distortion} cannot be inverted over the {camera.width} x "
                             f"{camera.height} image (re-distortion error {np.nanmax(error_px):.3g} px)")
    rays = np.stack([x, y]).astype(np.float32)
    rays.flags.writeable = False
    return rays, float((x * x + y * y).max())


def _coefficients(distortion: tuple[float, ...]) -> np.ndarray:
    """The 8 OpenCV coefficients (k1, k2, p1, p2, k3, k4, k5, k6), missing ones zero."""
    c = np.zeros(8)
    c[:len(distortion)] = distortion
    return c


def _distort(x: np.ndarray, y: np.ndarray, distortion: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Apply OpenCV distortion to normalised undistorted coordinates x, y (same-shape arrays)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _coefficients(distortion)
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def _undistort(x_distorted: np.ndarray, y_distorted: np.ndarray,
               distortion: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Invert ``_distort`` for normalised coordinates by fixed-point iteration (as OpenCV does)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _coefficients(distortion)
    x, y = x_distorted, y_distorted
    for _ in range(UNDISTORT_ITERATIONS):
        r2 = x * x + y * y
        inverse_radial = (1 + r2 * (k4 + r2 * (k5 + r2 * k6))) / (1 + r2 * (k1 + r2 * (k2 + r2 * k3)))
        x, y = ((x_distorted - 2 * p1 * x * y - p2 * (r2 + 2 * x * x)) * inverse_radial,
                (y_distorted - p1 * (r2 + 2 * y * y) - 2 * p2 * x * y) * inverse_radial)
    return x, y
