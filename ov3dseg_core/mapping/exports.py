"""Voxel maps as files other tools read: PCD (PCL, Open3D, Foxglove) and the OpenLex3D prediction layout.

OpenLex3D (github.com/openlex3d/openlex3d) scores a prediction folder of three files: ``embeddings.npy``
(n_objects, D) features, ``index.npy`` (n_points,) the row of ``embeddings`` of each point, and
``point_cloud.pcd`` with the n_points (RGB). A feature map is dense (one row per voxel, index = arange); a
label-only map is written object-style, each voxel pointing at the embedding of its label's name.
A voxel map allows one mesh without guessing surfaces: the voxels' exposed cube faces (``voxel_mesh``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.recfunctions import repack_fields

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.msgs.pointcloud2 import semantic_cloud_points

PCD_TYPES = {"f": "F", "i": "I", "u": "U"}
OPENLEX3D_FILES = ("embeddings.npy", "index.npy", "point_cloud.pcd")
CUBE_FACES = (((1, 0, 0), ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))),
              ((-1, 0, 0), ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
              ((0, 1, 0), ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))),
              ((0, -1, 0), ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
              ((0, 0, 1), ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
              ((0, 0, -1), ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))))
"""Per cube face: the neighbour direction that hides it, and its corners counter-clockwise seen from outside."""


def voxel_points(voxel_map: VoxelMap) -> np.ndarray:
    """Structured (M,) array of the voxels in the semantic cloud's layout (``msgs.pointcloud2.SEMANTIC_CLOUD_DTYPE``):
    x y z (float32, metres, map frame), rgb (PCL-packed float32), label (int32, -1 none), score (float32, label
    confidence), instance (int32, the map's instance id, -1 none)."""
    with voxel_map.lock:
        positions, colors = voxel_map.positions(), voxel_map.colors()
        labels, scores = voxel_map.labels()
        instances = voxel_map.instances()
    return semantic_cloud_points(positions, colors, labels, scores, instances)


def write_pcd(path: str | Path, points: np.ndarray) -> None:
    """Write a structured array of scalar little-endian fields as a binary PCD v0.7 file, atomically."""
    points = repack_fields(points)  # a multi-field selection keeps the full record size: drop the gaps
    names = points.dtype.names
    header = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", f"FIELDS {' '.join(names)}",
              "SIZE " + " ".join(str(points.dtype[n].itemsize) for n in names),
              "TYPE " + " ".join(PCD_TYPES[points.dtype[n].kind] for n in names),
              "COUNT " + " ".join("1" for _ in names), f"WIDTH {len(points)}", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(points)}", "DATA binary\n"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(np.ascontiguousarray(points).tobytes())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_openlex3d(directory: str | Path, voxel_map: VoxelMap, label_embeddings: np.ndarray | None = None,
                    ) -> tuple[int, int]:
    """Write the OpenLex3D prediction files of ``voxel_map`` into ``directory``; returns (points, embeddings).

    Feature maps: the voxels with features, one embedding each. Label-only maps: the labelled voxels, indexing
    ``label_embeddings`` (num_labels, D) (embeddings of the label names). ValueError when the map has neither.
    """
    points = voxel_points(voxel_map)
    if voxel_map.config.feature_dim > 0:
        with voxel_map.lock:
            keep = voxel_map.feature_weights() > 0
            embeddings = voxel_map.features()[keep].astype(np.float32)
        index = np.arange(int(keep.sum()), dtype=np.int64)
    elif label_embeddings is not None:
        keep = points["label"] >= 0
        embeddings, index = np.asarray(label_embeddings, np.float32), points["label"][keep].astype(np.int64)
    else:
        raise ValueError("the map has no per-voxel features, and no label-name embeddings were given")
    if not keep.any():
        raise ValueError("the map has no voxel with features or a label to export")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_npy(directory / "embeddings.npy", embeddings)
    _save_npy(directory / "index.npy", index)
    write_pcd(directory / "point_cloud.pcd", points[["x", "y", "z", "rgb"]][keep])
    return int(keep.sum()), len(embeddings)


def voxel_mesh(voxel_map: VoxelMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map's surface as the voxel cubes' faces that no occupied neighbour hides: (vertices (V, 3) float32
    metres, vertex colours (V, 3) uint8 = their voxel's, triangles (T, 3) int32, outward counter-clockwise)."""
    with voxel_map.lock:
        keys, colors = voxel_map.keys().astype(np.int64), voxel_map.colors()
    low = keys.min(axis=0) - 1 if len(keys) else np.zeros(3, np.int64)
    extent = (keys.max(axis=0) - low + 2) if len(keys) else np.ones(3, np.int64)

    def packed(k: np.ndarray) -> np.ndarray:
        k = k - low
        return (k[:, 0] * extent[1] + k[:, 1]) * extent[2] + k[:, 2]

    occupied = packed(keys)
    vertices, vertex_colors = [], []
    for direction, corners in CUBE_FACES:
        exposed = ~np.isin(packed(keys + np.array(direction)), occupied)
        quads = keys[exposed][:, None, :] + np.array(corners)[None]  # (n, 4, 3) voxel-grid corners
        vertices.append(quads.reshape(-1, 3))
        vertex_colors.append(np.repeat(colors[exposed], 4, axis=0))
    vertices = (np.concatenate(vertices) * voxel_map.voxel_size).astype(np.float32)
    first = np.arange(0, len(vertices), 4, dtype=np.int32)[:, None]
    triangles = np.concatenate([first + [0, 1, 2], first + [0, 2, 3]], axis=1).reshape(-1, 3)
    return vertices, np.concatenate(vertex_colors), triangles


def write_mesh_ply(path: str | Path, vertices: np.ndarray, colors: np.ndarray, triangles: np.ndarray) -> None:
    """A triangle mesh with vertex colours as binary little-endian PLY, atomically."""
    vertex = np.empty(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                                            ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = vertices.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    face = np.empty(len(triangles), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, triangles
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertex)}", "property float x",
              "property float y", "property float z", "property uchar red", "property uchar green",
              "property uchar blue", f"element face {len(face)}", "property list uchar int vertex_indices",
              "end_header\n"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(vertex.tobytes())
        f.write(face.tobytes())
