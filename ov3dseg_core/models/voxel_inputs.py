"""Backbone inputs built from map voxels, shared by training (training/map_windows.py) and the live mapper
(models/map_segmenter.py), so that a model sees the same inputs in both."""
from __future__ import annotations

import numpy as np


def point_features(colors: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Backbone input features (N, 4) float32: RGB in [-1, 1] and height z / 2.

    colors: (N, 3) uint8 RGB; points: (N, 3) metres, map frame (z up).
    """
    rgb = colors.astype(np.float32) / 127.5 - 1.0
    return np.concatenate([rgb, points[:, 2:3].astype(np.float32) * 0.5], axis=1)


def grid_coordinates(keys: np.ndarray) -> np.ndarray:
    """(N, 3) int32 voxel indices shifted to start at 0 (spconv input) from (N, 3) integer voxel indices."""
    keys = np.asarray(keys, dtype=np.int64)
    return (keys - keys.min(axis=0)).astype(np.int32)
