"""Parametric triangle meshes carrying per-triangle semantic label, instance id, part id and base colour.

Everything is plain NumPy so that scenes build fast and deterministically; ``TriMesh.to_open3d`` hands the result
to Open3D (ray casting, visualisation). Coordinates are metres; z is up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3dseg_core.labels import IGNORE_LABEL

# Box faces as corner indices (corner bit 0 = x max, bit 1 = y max, bit 2 = z max), outward counter-clockwise.
_BOX_FACES = {
    "-x": (0, 4, 6, 2), "+x": (1, 3, 7, 5),
    "-y": (0, 1, 5, 4), "+y": (2, 6, 7, 3),
    "-z": (0, 2, 3, 1), "+z": (4, 5, 7, 6),
}


@dataclass
class TriMesh:
    """A triangle soup with attributes.

    vertices (V, 3) float64 metres; triangles (T, 3) int64 vertex indices; labels (T,) int32 class ids
    (IGNORE_LABEL = none); instances (T,) int32 instance ids; parts (T,) int32 part ids within the owning object;
    colors (T, 3) float32 base albedo in [0, 1].
    """

    vertices: np.ndarray
    triangles: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    parts: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.triangles)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"TriMesh vertices must be (V, 3), got {self.vertices.shape}")
        if self.triangles.shape != (t, 3):
            raise ValueError(f"TriMesh triangles must be (T, 3), got {self.triangles.shape}")
        for name in ("labels", "instances", "parts"):
            if getattr(self, name).shape != (t,):
                raise ValueError(f"TriMesh {name} must be ({t},), got {getattr(self, name).shape}")
        if self.colors.shape != (t, 3):
            raise ValueError(f"TriMesh colors must be ({t}, 3), got {self.colors.shape}")

    @classmethod
    def from_geometry(cls, vertices: np.ndarray, triangles: np.ndarray) -> TriMesh:
        """Geometry only: label IGNORE_LABEL, instance 0, part 0, grey."""
        t = len(triangles)
        return cls(np.asarray(vertices, np.float64), np.asarray(triangles, np.int64),
                   np.full(t, IGNORE_LABEL, np.int32), np.zeros(t, np.int32), np.zeros(t, np.int32),
                   np.full((t, 3), 0.5, np.float32))

    @property
    def num_triangles(self) -> int:
        return len(self.triangles)

    def with_attributes(self, label: int | None = None, instance: int | None = None, part: int | None = None,
                        color=None) -> TriMesh:
        """A copy with the given attributes set on every triangle (None keeps the current values)."""
        t = self.num_triangles
        return TriMesh(self.vertices, self.triangles,
                       self.labels.copy() if label is None else np.full(t, label, np.int32),
                       self.instances.copy() if instance is None else np.full(t, instance, np.int32),
                       self.parts.copy() if part is None else np.full(t, part, np.int32),
                       self.colors.copy() if color is None else np.tile(np.asarray(color, np.float32), (t, 1)))

    def transformed(self, T: np.ndarray) -> TriMesh:
        """The mesh moved by a (4, 4) rigid transform (vertices p' = T p)."""
        T = np.asarray(T, np.float64)
        return TriMesh(self.vertices @ T[:3, :3].T + T[:3, 3], self.triangles, self.labels, self.instances,
                       self.parts, self.colors)

    def corners(self) -> np.ndarray:
        """(T, 3, 3) float64: the three vertices of every triangle."""
        return self.vertices[self.triangles]

    def areas(self) -> np.ndarray:
        """(T,) float64 triangle areas in m^2."""
        c = self.corners()
        return 0.5 * np.linalg.norm(np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]), axis=1)

    def normals(self) -> np.ndarray:
        """(T, 3) float64 unit face normals (right-hand winding)."""
        c = self.corners()
        n = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (min (3,), max (3,)) of the vertices in use."""
        used = self.vertices[np.unique(self.triangles)]
        return used.min(axis=0), used.max(axis=0)

    def select(self, mask: np.ndarray) -> TriMesh:
        """The triangles where ``mask`` (T,) bool is true (vertices are kept as they are)."""
        return TriMesh(self.vertices, self.triangles[mask], self.labels[mask], self.instances[mask],
                       self.parts[mask], self.colors[mask])

    def to_open3d(self):
        """``open3d.t.geometry.TriangleMesh`` with triangle attributes ``labels``, ``instances`` and ``colors``."""
        import open3d as o3d

        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(self.vertices.astype(np.float32))
        mesh.triangle.indices = o3d.core.Tensor(self.triangles.astype(np.int32))
        mesh.triangle.labels = o3d.core.Tensor(self.labels)
        mesh.triangle.instances = o3d.core.Tensor(self.instances)
        mesh.triangle.colors = o3d.core.Tensor(self.colors)
        return mesh


def concatenate(meshes: list[TriMesh]) -> TriMesh:
    """One mesh holding all triangles of ``meshes`` (attributes kept)."""
    if not meshes:
        return TriMesh.from_geometry(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return TriMesh(np.concatenate([m.vertices for m in meshes]),
                   np.concatenate([m.triangles + o for m, o in zip(meshes, offsets)]),
                   np.concatenate([m.labels for m in meshes]),
                   np.concatenate([m.instances for m in meshes]),
                   np.concatenate([m.parts for m in meshes]),
                   np.concatenate([m.colors for m in meshes]))


def box(lo, hi, omit: tuple[str, ...] = ()) -> TriMesh:
    """Axis-aligned box between corners ``lo`` and ``hi`` (3,) metres; ``omit`` drops hidden faces, e.g. ("-z",)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise ValueError(f"box needs lo < hi on every axis, got lo={lo} hi={hi}")
    unknown = set(omit) - set(_BOX_FACES)
    if unknown:
        raise ValueError(f"unknown box faces {sorted(unknown)}; faces are {sorted(_BOX_FACES)}")
    bits = np.arange(8)
    vertices = np.where(np.stack([(bits >> k) & 1 for k in range(3)], axis=1).astype(bool), hi, lo)
    quads = np.array([q for name, q in _BOX_FACES.items() if name not in omit], np.int64).reshape(-1, 4)
    return TriMesh.from_geometry(vertices, _quads_to_triangles(quads))


def quad(origin, edge_u, edge_v) -> TriMesh:
    """Planar rectangle with corners origin, origin+u, origin+u+v, origin+v (normal u x v)."""
    o, u, v = (np.asarray(a, np.float64) for a in (origin, edge_u, edge_v))
    return TriMesh.from_geometry(np.stack([o, o + u, o + u + v, o + v]), np.array([[0, 1, 2], [0, 2, 3]]))


def cylinder(radius: float, height: float, base_center=(0.0, 0.0, 0.0), axis: int = 2, segments: int = 16,
             top_radius: float | None = None, caps: bool = True) -> TriMesh:
    """Cylinder (a frustum when ``top_radius`` differs) of ``height`` along coordinate ``axis`` from
    ``base_center``."""
    if radius <= 0 or height <= 0 or segments < 3:
        raise ValueError(f"cylinder needs radius > 0, height > 0, segments >= 3; got {radius}, {height}, {segments}")
    top = radius if top_radius is None else top_radius
    angle = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    local = np.concatenate([np.column_stack([radius * ring, np.zeros(segments)]),
                            np.column_stack([top * ring, np.full(segments, height)]),
                            [[0.0, 0.0, 0.0], [0.0, 0.0, height]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    tris = [np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)]
    if caps:
        tris += [np.stack([np.full(segments, 2 * segments), j, i], 1),
                 np.stack([np.full(segments, 2 * segments + 1), i + segments, j + segments], 1)]
    # local z runs along ``axis``; a cyclic permutation keeps the frame right-handed
    order = {2: [0, 1, 2], 0: [2, 0, 1], 1: [1, 2, 0]}[axis]
    return TriMesh.from_geometry(local[:, order] + np.asarray(base_center, np.float64), np.concatenate(tris))


def folded_sheet(width: float, height: float, folds: int, amplitude: float, origin=(0.0, 0.0, 0.0)) -> TriMesh:
    """Vertical zig-zag sheet (a drawn curtain): spans x in [0, width], z in [0, height], y in [0, amplitude]."""
    if folds < 1:
        raise ValueError(f"folded_sheet needs folds >= 1, got {folds}")
    x = np.linspace(0.0, width, 2 * folds + 1)
    y = np.where(np.arange(len(x)) % 2 == 1, amplitude, 0.0)
    n = len(x)
    vertices = np.concatenate([np.column_stack([x, y, np.zeros(n)]), np.column_stack([x, y, np.full(n, height)])])
    i = np.arange(n - 1)
    tris = np.concatenate([np.stack([i, i + 1, i + 1 + n], 1), np.stack([i, i + 1 + n, i + n], 1)])
    return TriMesh.from_geometry(vertices + np.asarray(origin, np.float64), tris)


def _quads_to_triangles(quads: np.ndarray) -> np.ndarray:
    return np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])


class Assembly:
    """Collects the parts of one object; each ``add`` becomes a new part id.

    ``sub`` numbers separately labelled sub-objects (a counter's cabinet base, its top and its sink): they become
    distinct instances when the object is placed (instance = first id + sub).
    """

    def __init__(self) -> None:
        self._parts: list[TriMesh] = []

    def add(self, geometry: TriMesh, label: int, color, sub: int = 0) -> int:
        part = len(self._parts)
        self._parts.append(geometry.with_attributes(label=label, instance=sub, part=part, color=color))
        return part

    def mesh(self) -> TriMesh:
        return concatenate(self._parts)
