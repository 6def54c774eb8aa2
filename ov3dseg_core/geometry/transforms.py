"""Rigid transforms as (4, 4) float64 homogeneous matrices, quaternions in ROS (x, y, z, w) order.

A matrix named ``T_<target>_<source>`` maps points from the source frame to the target frame:
``p_target = T_target_source @ p_source``. Translations are in metres.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def quaternion_to_matrix(q_xyzw) -> np.ndarray:
    """Rotation matrix (3, 3) float64 of a quaternion (4,) in (x, y, z, w) order; it is normalised first.

    Raises ValueError for a zero or non-finite quaternion.
    """
    q = np.asarray(q_xyzw, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be 4 finite values (x, y, z, w), got {q!r}")
    return Rotation.from_quat(q).as_matrix()


def matrix_to_quaternion(R) -> np.ndarray:
    """Quaternion (4,) float64 in (x, y, z, w) order with w >= 0 of a (3, 3) rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation matrix must be (3, 3), got shape {R.shape}")
    return Rotation.from_matrix(R).as_quat(canonical=True)


def make_transform(translation, quaternion_xyzw) -> np.ndarray:
    """(4, 4) float64 transform from a translation (3,) in metres and a quaternion (4,) in (x, y, z, w) order."""
    t = np.asarray(translation, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f"translation must be 3 finite values, got {t!r}")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion_xyzw)
    T[:3, 3] = t
    return T


def transform_to_translation_quaternion(T) -> tuple[np.ndarray, np.ndarray]:
    """Split a (4, 4) transform into (translation (3,) metres, quaternion (4,) x, y, z, w with w >= 0)."""
    T = as_transform(T)
    return T[:3, 3].copy(), matrix_to_quaternion(T[:3, :3])


def invert_transform(T) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform: T_b_a from T_a_b, using R^T instead of a general inverse."""
    T = as_transform(T)
    inv = np.eye(4)
    R_t = T[:3, :3].T
    inv[:3, :3] = R_t
    inv[:3, 3] = -R_t @ T[:3, 3]
    return inv


def transform_points(T, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform T_target_source to (N, 3) points in the source frame.

    Returns (N, 3) points in the target frame with the dtype and the layout (row- or column-major) of ``points``
    (which must be floating point).
    """
    T = as_transform(T)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"points must be floating point, got {points.dtype}")
    R, t = T[:3, :3].astype(points.dtype), T[:3, 3].astype(points.dtype)
    if points.T.flags.c_contiguous:  # column-major: (3, 3) @ (3, N) in BLAS, then one add per axis
        out = R @ points.T
        out += t[:, None]
        return out.T
    out = points @ np.ascontiguousarray(R.T)  # contiguous: BLAS (a transposed view is ~25x slower)
    out += t
    return out


def interpolate_transform(T0, T1, alpha: float) -> np.ndarray:
    """Transform a fraction ``alpha`` in [0, 1] of the way from T0 to T1.

    Translation is interpolated linearly, rotation by SLERP along the shortest arc. ``alpha`` 0 and 1 return exact
    copies of T0 and T1.
    """
    T0, T1 = as_transform(T0), as_transform(T1)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if alpha == 0.0:
        return T0.copy()
    if alpha == 1.0:
        return T1.copy()
    R0 = T0[:3, :3]
    delta = Rotation.from_matrix(R0.T @ T1[:3, :3]).as_rotvec()  # relative rotation, angle in [0, pi]
    T = np.eye(4)
    T[:3, :3] = R0 @ Rotation.from_rotvec(alpha * delta).as_matrix()
    T[:3, 3] = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return T


def as_transform(T) -> np.ndarray:
    """``T`` as a (4, 4) float64 array; ValueError for another shape."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"transform must be a (4, 4) matrix, got shape {T.shape}")
    return T
