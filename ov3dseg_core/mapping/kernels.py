"""Compiled kernels of the voxel map (numba, CPU): one frame's points reduced to voxel sums, and the query's
streaming pass over the int8 feature store.

Why not NumPy or a library: a frame is 250-300k points, and every NumPy pass over them (floor, key, dedup, one
``bincount`` or ``index_add_`` per quantity) costs 0.3-2 ms, six to ten of them per frame; Open3D's VoxelBlockGrid
keeps no label histograms and its HashMap dedup measured 10x slower than a dense grid here (BENCHMARKS.md). These
loops do the same work in three passes over the points. They release the GIL (the node's other threads run) and are
cached on disk after the first compilation.

Voxel index = floor(p / voxel_size) with float32 division, as ``VoxelMap`` defines it.

The query pass (``int8_cosines_at_least``) reads each voxel's D feature bytes once. oneDNN's int8 GEMV through torch
measured 1.6x a plain NumPy read of those bytes on one core, plus ~13 ms of passes over 1M scores; this loop folds
the scale, cosine and floor test into the read and prefetches rows ahead (without the prefetch the same loop ran at
2.5x the read).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

PREFETCH_BYTES = 1536
"""How far ahead of the row being scored ``int8_cosines_at_least`` prefetches (1-3 kB measured within 5 % of each
other; 1.5 kB the best)."""

CACHE_LINE = 64

SCORE_BLOCK = 4096
"""Rows whose dot products ``int8_cosines_at_least`` takes before testing them, so that the dot loop stays free of
the test's branches (with them inside, LLVM no longer vectorised it: 2.4x the read instead of 1.3x). 4096 rows
(32 kB of scores) measured 1.09-1.11x the read, 1024 rows 1.17x, 256 rows 1.28x, 65536 rows 1.17x."""


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load the cache line holding element ``index`` of a contiguous array (``llvm.prefetch``: read,
    all cache levels). No effect on results; an address past the end does not fault."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]))
        builder.call(prefetch, [builder.bitcast(builder.gep(data, [args[1]]), byte), ir.Constant(i32, 0),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


@intrinsic
def _prefer_wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with the widest registers the CPU has (the function attribute
    ``"prefer-vector-width"="512"``, clang's ``-mprefer-vector-width=512``). LLVM's tuning for Intel server cores
    prefers 256 bits; 512 took the query pass from 1.27x to 1.22x the read. llvmlite's attribute set only takes
    keyword attributes, so the string attribute goes into the set directly. A CPU without 512-bit registers
    ignores it; results never depend on it."""
    def codegen(context, builder, signature, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:  # a later llvmlite whose attribute set is no longer a set: LLVM's default width
            pass
        return context.get_dummy_value()
    return types.void(), codegen


@numba.njit(cache=True, nogil=True)
def grid_indices(rows, voxel_size, limit):
    """Voxel indices of (3, N) float32 points (rows x, y, z; metres).

    Returns (idx (3, N) int32, keep (N,) bool: finite with |index| <= ``limit`` on every axis, kept (count), lo (3,)
    and hi (3,) int64: per-axis index bounds of the kept points (lo > hi when none is kept)). The indices of points
    that are not kept mean nothing (0 on the axes where they are out of range): drop them with ``keep``. Axis by
    axis and without branches, so that the passes vectorise.
    """
    n = rows.shape[1]
    bound = np.float32(limit)
    idx = np.empty((3, n), np.int32)
    keep = np.ones(n, np.bool_)
    for a in range(3):
        for i in range(n):
            g = np.floor(rows[a, i] / voxel_size)
            inside = (-bound <= g) & (g <= bound)  # False for NaN
            keep[i] &= inside
            idx[a, i] = np.int32(g if inside else np.float32(0.0))
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for a in range(3):
        low, high = np.int32(limit + 1), np.int32(-limit - 1)
        for i in range(n):
            low = min(low, idx[a, i] if keep[i] else np.int32(limit + 1))
            high = max(high, idx[a, i] if keep[i] else np.int32(-limit - 1))
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


@numba.njit(cache=True, nogil=True, error_model="numpy")
def int8_cosines_at_least(codes, scale, norm, query, query_scale, floor):
    """The rows whose cosine with a unit query reaches ``floor``, in one streaming pass over the int8 features.

    codes: (M, D) int8, C-contiguous, and scale: (M,) float32, the features ~ codes * scale; norm: (M,) float32, the
    features' own norms (0 = no feature: never returned). query: (D,) int16 with the unit query ~ query *
    query_scale, small enough that the sums cannot overflow int32 (|query| * 127 * D < 2**31; see
    ``quantize_query``). Returns (rows (C,) int64 ascending, cosine (C,) float32 in [-1, 1]).
    """
    _prefer_wide_vectors()
    m, d = codes.shape
    flat = codes.reshape(-1)
    ahead = max(1, PREFETCH_BYTES // max(d, 1)) * d
    last = flat.size - d
    rows = np.empty(m, np.int64)
    cosine = np.empty(m, np.float32)
    dots = np.empty(SCORE_BLOCK, np.int32)
    block = np.empty(SCORE_BLOCK, np.float32)
    found = 0
    for start in range(0, m, SCORE_BLOCK):
        n = min(m - start, SCORE_BLOCK)
        for k in range(n):
            i = start + k
            at = i * d + ahead
            if at <= last:
                for line in range(at, at + d, CACHE_LINE):
                    _prefetch(flat, line)
            dot = np.int32(0)
            for j in range(d):  # int32 sums of int16 x int8 products
                dot = np.int32(dot + np.int32(query[j]) * np.int32(codes[i, j]))
            dots[k] = dot
        for k in range(n):  # vectorised; where norm is 0 the value is NaN and the next loop skips it
            block[k] = np.float32(dots[k]) * (scale[start + k] * query_scale) / norm[start + k]
        for k in range(n):
            if norm[start + k] > 0:
                c = min(max(block[k], np.float32(-1.0)), np.float32(1.0))
                if c >= floor:
                    rows[found] = start + k
                    cosine[found] = c
                    found += 1
    return rows[:found].copy(), cosine[:found].copy()


@numba.njit(cache=True, nogil=True, error_model="numpy")
def int8_max_cosines(codes, scale, norm, rows, queries, query_scales):
    """Per int8 row at ``rows`` (C,) int64, the largest cosine with K unit queries: (C,) float32 in [-1, 1], -inf
    when K = 0 or the row has no feature. codes, scale, norm as in ``int8_cosines_at_least``; queries (K, D) int16
    and query_scales (K,) float32 as ``quantize_query`` gives them."""
    k, d = queries.shape
    best = np.full(rows.size, -np.inf, np.float32)
    for r in range(rows.size):
        i = rows[r]
        if norm[i] > 0:
            unit = scale[i] / norm[i]
            for q in range(k):
                dot = np.int32(0)
                for j in range(d):
                    dot = np.int32(dot + np.int32(queries[q, j]) * np.int32(codes[i, j]))
                c = min(max(np.float32(dot) * unit * query_scales[q], np.float32(-1.0)), np.float32(1.0))
                best[r] = max(best[r], c)
    return best


def quantize_query(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., D) float32 unit queries -> (int16 codes (..., D), scales (...,) float32) for the kernels above: per
    query the largest code range whose int32 sums over D int8 features cannot overflow (32767 up to D = 516), so
    the query's own rounding error (about 1e-5 relative at D = 384) is negligible next to the features' int8
    error."""
    queries = np.asarray(queries, np.float32)
    limit = min(32767, (2 ** 31 - 1) // (127 * max(queries.shape[-1], 1)))
    peak = np.abs(queries).max(axis=-1, initial=0.0)
    scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float32)
    return np.rint(queries / scale[..., None]).astype(np.int16), scale
