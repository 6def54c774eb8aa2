"""Compiled per-point kernels of the voxel map (numba, CPU): one frame's points reduced to voxel sums.

Why not NumPy or a library: a frame is 250-300k points, and every NumPy pass over them (floor, key, dedup, one
``bincount`` or ``index_add_`` per quantity) costs 0.3-2 ms, six to ten of them per frame; Open3D's VoxelBlockGrid
keeps no label histograms and its HashMap dedup measured 10x slower than a dense grid here (BENCHMARKS.md). These
loops do the same work in three passes over the points. They release the GIL (the node's other threads run) and are
cached on disk after the first compilation.

Voxel index = floor(p / voxel_size) with float32 division, as ``VoxelMap`` defines it.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def grid_indices(rows, voxel_size, limit):
    """Voxel indices of (3, N) float32 points (rows x, y, z; metres).

    Returns (idx (3, N) int32, keep (N,) bool: finite with |index| <= ``limit`` on every axis, kept (count), lo (3,)
    and hi (3,) int64: per-axis index bounds of the kept points (lo > hi when none is kept)). Points that are not
    kept get index 0. Axis by axis and without branches, so that the passes vectorise.
    """
    n = rows.shape[1]
    grid = np.empty((3, n), np.float32)
    for a in range(3):
        for i in range(n):
            grid[a, i] = np.floor(rows[a, i] / voxel_size)
    bound = np.float32(limit)
    keep = np.ones(n, np.bool_)
    for a in range(3):
        for i in range(n):
            keep[i] &= (-bound <= grid[a, i]) & (grid[a, i] <= bound)  # False for NaN
    idx = np.empty((3, n), np.int32)
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for a in range(3):
        low, high = np.int32(limit + 1), np.int32(-limit - 1)
        for i in range(n):
            v = np.int32(grid[a, i] if keep[i] else np.float32(0.0))
            idx[a, i] = v
            low = min(low, v if keep[i] else np.int32(limit + 1))
            high = max(high, v if keep[i] else np.int32(-limit - 1))
        lo[a], hi[a] = low, high
    return idx, keep, int(keep.sum()), lo, hi


@numba.njit(cache=True, nogil=True)
def dense_unique(idx, lo, hi):
    """Unique voxels of (3, N) int32 indices inside the box [lo, hi] (per axis) by a dense grid over the box.

    Returns (keys (U, 3) int32 in ascending (x, y, z) order, i.e. packed-key order; inverse (N,) int32: the voxel of
    each point).
    """
    n = idx.shape[1]
    ex, ey, ez = hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1
    cell_of = np.zeros(ex * ey * ez, np.int32)  # 1 where occupied, then the voxel number
    linear = np.empty(n, np.int64)
    for i in range(n):
        c = ((idx[0, i] - lo[0]) * ey + idx[1, i] - lo[1]) * ez + idx[2, i] - lo[2]
        linear[i] = c
        cell_of[c] = 1
    u = 0
    for c in range(cell_of.size):
        if cell_of[c]:
            cell_of[c] = u
            u += 1
    keys = np.empty((u, 3), np.int32)
    inverse = np.empty(n, np.int32)
    for i in range(n):
        v = cell_of[linear[i]]
        inverse[i] = v
        keys[v, 0], keys[v, 1], keys[v, 2] = idx[0, i], idx[1, i], idx[2, i]
    return keys, inverse


@numba.njit(cache=True, nogil=True)
def voxel_sums(rows, idx, inverse, u, voxel_size, weights, colors, labels, num_labels):
    """Per-voxel sums of one frame's points, in one pass.

    rows: (3, N) float32 metres; idx: (3, N) int32 voxel indices; inverse: (N,) int32 voxel of each point (< u);
    weights: (N,) float32 >= 0, or (0,) for unit weights; colors: (N, 3) uint8 RGB or (0, 3); labels: (N,) int32 in
    [-1, num_labels) (-1 = ignored) or (0,).
    Returns (weight (U,) float32, count (U,) int64 points, local (U, 3) float32 weighted sum of (point - voxel
    corner) in metres, color (U, 3) float32 weighted RGB sums, label (U, num_labels) float32 weighted counts); the
    colour and label sums are (0, ...) when those inputs are.
    """
    n = rows.shape[1]
    weighted = weights.shape[0] == n
    with_colors = colors.shape[0] == n
    with_labels = labels.shape[0] == n
    weight = np.zeros(u, np.float32)
    count = np.zeros(u, np.int64)
    local = np.zeros((u, 3), np.float32)
    color = np.zeros((u if with_colors else 0, 3), np.float32)
    label = np.zeros((u if with_labels else 0, num_labels), np.float32)
    for i in range(n):
        v = inverse[i]
        w = weights[i] if weighted else np.float32(1.0)
        if weighted:
            weight[v] += w
        count[v] += 1
        for a in range(3):
            local[v, a] += w * (rows[a, i] - np.float32(idx[a, i]) * voxel_size)
        if with_colors:
            for a in range(3):
                color[v, a] += w * np.float32(colors[i, a])
        if with_labels and labels[i] >= 0:
            label[v, labels[i]] += w
    if not weighted:
        weight[:] = count
    return weight, count, local, color, label
