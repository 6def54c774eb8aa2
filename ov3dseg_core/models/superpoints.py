"""Superpoints: Felzenszwalb-Huttenlocher graph segmentation on surface normals (SAS Sec. 3.5, GeoGuide USD),
over a voxel grid's 26-neighbourhood or a mesh's edges.

Edge weight w_ij = 1 - |n_i . n_j| (0 for parallel normals). A segment C has internal difference Int(C), the
largest weight of the edges that built it; two segments merge along edge w when w <= min(Int(C1) + k / |C1|,
Int(C2) + k / |C2|). Segments are merged in Boruvka rounds (every segment proposes its lightest outgoing edge, all
accepted proposals are applied at once), so each round is a few vectorised numpy/scipy calls; then segments
smaller than ``min_size`` join their lightest neighbour. The sequential algorithm (ScanNet's segmentator) visits
edges one by one; the rounds give the same kind of segments (planes split at creases) without a Python loop per
edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ov3dseg_core.eval.matching import pack_keys

_HALF_NEIGHBOURHOOD = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                                if (dx, dy, dz) > (0, 0, 0)], dtype=np.int64)  # 13 offsets: each pair once


@dataclass
class SuperpointConfig:
    """Parameters of ``voxel_superpoints`` (see there and ``felzenszwalb_segments``)."""

    k: float = 0.05
    min_size: int = 20
    max_size: int = 400
    color_weight: float = 1.0


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """(N, 3) float32 unit normals (sign arbitrary) of points (N, 3): the smallest principal axis of each point's
    k nearest neighbours."""
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    _, nn = cKDTree(points).query(points, k=k)
    nbrs = points[nn.reshape(len(points), k)]
    centred = nbrs - nbrs.mean(axis=1, keepdims=True)
    _, vectors = np.linalg.eigh(np.einsum("nki,nkj->nij", centred, centred))
    return vectors[:, :, 0].astype(np.float32)


def voxel_graph(keys: np.ndarray) -> np.ndarray:
    """(E, 2) int64 index pairs of voxels (N, 3) int indices that touch (26-neighbourhood), each pair once."""
    keys = np.asarray(keys, dtype=np.int64)
    packed = pack_keys(keys)
    order = np.argsort(packed)
    sorted_keys = packed[order]
    edges = []
    for offset in _HALF_NEIGHBOURHOOD:  # 13 vectorised lookups
        target = pack_keys(keys + offset)
        pos = np.clip(np.searchsorted(sorted_keys, target), 0, len(sorted_keys) - 1)
        hit = sorted_keys[pos] == target
        edges.append(np.stack([np.flatnonzero(hit), order[pos[hit]]], axis=1))
    return np.concatenate(edges).reshape(-1, 2)


def mesh_graph(faces: np.ndarray) -> np.ndarray:
    """(E, 2) int64 unique vertex pairs of triangle faces (F, 3)."""
    faces = np.asarray(faces, dtype=np.int64)
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def _lightest_edge(label: np.ndarray, edges: np.ndarray, weight: np.ndarray, num: int):
    """Per segment, its lightest edge to another segment: (segments (M,), their neighbours (M,), weights (M,)).
    ``edges`` (E, 2) come sorted by ``weight`` (E,), so a segment's lightest edge is its first one: one
    ``minimum.at`` over the crossing edges instead of a sort per round."""
    a, b = label[edges[:, 0]], label[edges[:, 1]]
    cross = np.flatnonzero(a != b)
    first = np.full(num, len(edges), dtype=np.int64)
    np.minimum.at(first, a[cross], cross)
    np.minimum.at(first, b[cross], cross)
    src = np.flatnonzero(first < len(edges))
    edge = first[src]
    dst = np.where(a[edge] == src, b[edge], a[edge])
    return src, dst, weight[edge]


def _merge(label, size, internal, src, dst, w, num):
    """Apply the merges src[i] -- dst[i] (segment ids < num): new labels, sizes and internal differences."""
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(num, num))
    count, group = connected_components(graph, directed=False)
    new_size = np.bincount(group, weights=size, minlength=count)
    new_internal = np.zeros(count)
    np.maximum.at(new_internal, group, internal)
    np.maximum.at(new_internal, group[src], w)
    return group[label], new_size, new_internal, count


def felzenszwalb_segments(normals: np.ndarray, edges: np.ndarray, k: float = 0.05, min_size: int = 20,
                          colors: np.ndarray | None = None, color_weight: float = 0.0) -> np.ndarray:
    """(N,) int64 segment ids in [0, S) of N graph nodes with unit normals (N, 3) and edges (E, 2).

    k: the merge threshold scale (larger = larger segments; ScanNet's mesh segmentator uses 0.01 on mesh normals,
    noisier voxel normals need more); min_size: segments with fewer nodes are joined to their lightest neighbour;
    colors (N, 3) uint8 with color_weight > 0 add color_weight x the RGB distance (1 = black to white) to each edge
    weight, as Felzenszwalb-Huttenlocher's image segmentation does, so a picture or a sink is not merged into the
    plane it lies in.
    """
    normals = np.asarray(normals, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n = len(normals)
    weight = 1.0 - np.abs(np.einsum("ij,ij->i", normals[edges[:, 0]], normals[edges[:, 1]]))
    if colors is not None and color_weight > 0:
        rgb = np.asarray(colors, dtype=np.float64) / (255.0 * np.sqrt(3.0))
        weight += color_weight * np.linalg.norm(rgb[edges[:, 0]] - rgb[edges[:, 1]], axis=1)
    order = np.argsort(weight, kind="stable")
    edges, weight = edges[order], weight[order]
    label, size, internal, num = np.arange(n), np.ones(n), np.zeros(n), n
    while True:
        src, dst, w = _lightest_edge(label, edges, weight, num)
        threshold = internal + k / size
        accept = w <= np.minimum(threshold[src], threshold[dst])
        if not accept.any():
            break
        label, size, internal, num = _merge(label, size, internal, src[accept], dst[accept], w[accept], num)
    while True:
        src, dst, w = _lightest_edge(label, edges, weight, num)
        small = size[src] < min_size
        if not small.any():
            break
        label, size, internal, num = _merge(label, size, internal, src[small], dst[small], w[small], num)
    return label.astype(np.int64)


def voxel_superpoints(keys: np.ndarray, positions: np.ndarray, k: float = 0.05, min_size: int = 20,
                      max_size: int = 0, normal_neighbours: int = 16, colors: np.ndarray | None = None,
                      color_weight: float = 0.0) -> np.ndarray:
    """Superpoint ids (V,) int64 of a voxel map: voxel indices (V, 3), mean positions (V, 3) metres, optionally
    colours (V, 3) uint8 weighted by ``color_weight`` (see ``felzenszwalb_segments``).

    max_size > 0: segments of more voxels are cut along a grid of ceil(sqrt(max_size)) voxels (noise-free planes
    of simulated rooms would otherwise merge everything coplanar with them, e.g. a picture on its wall)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    normals = estimate_normals(positions, normal_neighbours)
    segment = felzenszwalb_segments(normals, voxel_graph(keys), k=k, min_size=min_size, colors=colors,
                                    color_weight=color_weight)
    if max_size <= 0:
        return segment
    cell = np.floor_divide(np.asarray(keys, dtype=np.int64), int(np.ceil(np.sqrt(max_size))))
    large = np.bincount(segment)[segment] > max_size
    cell_key = np.where(large, pack_keys(cell - cell.min(axis=0)), -1)
    return np.unique(np.stack([segment, cell_key], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
