"""Match map voxels to ground-truth points.

Each ground-truth point takes the label of the map voxel that contains it: the voxel with the same index
floor(p / voxel_size) (the map's fixed world origin). Points whose voxel is not in the map, or whose voxel has no
label, are predicted IGNORE_LABEL and so count as misses of their ground-truth class. Voxel indices are packed into
one int64 key (21 bits per axis) and looked up with a sort + searchsorted, no per-point Python.
"""
from __future__ import annotations

import numpy as np

from ov3dseg_core.labels import IGNORE_LABEL

_BITS = 21
_OFFSET = 1 << (_BITS - 1)


def voxel_indices(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, 3) int64 voxel indices floor(p / voxel_size) of points (N, 3) in metres, map frame.

    Computed in float32 like ``mapping.voxel_map`` (points cast to float32, IEEE float32 division), so a point on
    a voxel face lands in the same voxel as in the map; float64 arithmetic disagrees there.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0 metres, got {voxel_size}")
    return np.floor(points.astype(np.float32) / np.float32(voxel_size)).astype(np.int64)


def pack_keys(indices: np.ndarray) -> np.ndarray:
    """(N,) int64 keys of voxel indices (N, 3); each index must lie in [-2**20, 2**20)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise ValueError(f"voxel indices must have shape (N, 3), got {idx.shape}")
    shifted = idx + _OFFSET
    if idx.size and (shifted.min() < 0 or shifted.max() >= (1 << _BITS)):
        raise ValueError(f"voxel indices out of the packable range [-{_OFFSET}, {_OFFSET}) "
                         f"(got {int(idx.min())}..{int(idx.max())}); is the voxel size in metres?")
    return (shifted[:, 0] << (2 * _BITS)) | (shifted[:, 1] << _BITS) | shifted[:, 2]


def match_points_to_voxels(points: np.ndarray, voxel_keys: np.ndarray, voxel_labels: np.ndarray,
                           voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Label of the voxel containing each point.

    points (N, 3) metres, map frame; voxel_keys (M, 3) int voxel indices; voxel_labels (M,) int (-1 = unlabelled).
    Returns ``(pred (N,) int32, in_map (N,) bool)``: pred is IGNORE_LABEL where the voxel is absent or unlabelled;
    in_map tells whether the point's voxel exists in the map at all.
    """
    voxel_labels = np.asarray(voxel_labels)
    keys = pack_keys(voxel_keys)
    if keys.shape[0] != voxel_labels.shape[0]:
        raise ValueError(f"{keys.shape[0]} voxel keys but {voxel_labels.shape[0]} voxel labels")
    point_keys = pack_keys(voxel_indices(points, voxel_size))
    pred = np.full(point_keys.shape[0], IGNORE_LABEL, dtype=np.int32)
    if keys.size == 0:
        return pred, np.zeros(point_keys.shape[0], dtype=bool)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise ValueError("duplicate voxel keys in the map")
    pos = np.minimum(np.searchsorted(sorted_keys, point_keys), keys.shape[0] - 1)
    in_map = sorted_keys[pos] == point_keys
    pred[in_map] = voxel_labels[order[pos[in_map]]]
    return pred, in_map


def voxel_purity(points: np.ndarray, labels: np.ndarray, voxel_size: float) -> float | None:
    """Upper bound on point accuracy of any voxel map at ``voxel_size``: the fraction of labelled points (labels
    (N,) int, -1 skipped) that carry their voxel's majority label. A map holding one label per voxel cannot
    classify the minority points of mixed voxels correctly. None when no point is labelled."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels != IGNORE_LABEL
    if not keep.any():
        return None
    _, voxel = np.unique(pack_keys(voxel_indices(np.asarray(points)[keep], voxel_size)), return_inverse=True)
    num_labels = int(labels[keep].max()) + 1
    pairs, counts = np.unique(voxel.astype(np.int64) * num_labels + labels[keep], return_counts=True)
    starts = np.flatnonzero(np.r_[True, np.diff(pairs // num_labels) != 0])
    return float(np.maximum.reduceat(counts, starts).sum() / keep.sum())
