"""LiDAR point handling in the sensor frame."""
from __future__ import annotations

import numpy as np


def clean_points(points: np.ndarray, min_range: float, max_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop non-finite points and points whose distance from the sensor lies outside [min_range, max_range].

    ``points``: (N, 3) floating point, metres, sensor frame. Returns (points (M, 3) float32, keep_mask (N,) bool).
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or points.dtype.kind != "f":
        raise ValueError(f"points must be (N, 3) floating point, got {points.shape} {points.dtype}")
    if not 0 <= min_range <= max_range:
        raise ValueError(f"need 0 <= min_range <= max_range, got {min_range}, {max_range}")
    range2 = np.einsum("ij,ij->i", points, points)
    keep = np.isfinite(range2) & (range2 >= min_range * min_range) & (range2 <= max_range * max_range)
    return points[keep].astype(np.float32, copy=False), keep
