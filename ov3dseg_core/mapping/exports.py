"""Voxel maps as files other tools read: PCD (PCL, Open3D, Foxglove) and the OpenLex3D prediction layout.

OpenLex3D (github.com/openlex3d/openlex3d) scores a prediction folder of three files: ``embeddings.npy``
(n_objects, D) features, ``index.npy`` (n_points,) the row of ``embeddings`` of each point, and
``point_cloud.pcd`` with the n_points (RGB). A feature map is dense (one row per voxel, index = arange); a
label-only map is written object-style, each voxel pointing at the embedding of its label's name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.recfunctions import repack_fields

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.msgs.pointcloud2 import pack_rgb

PCD_TYPES = {"f": "F", "i": "I", "u": "U"}
OPENLEX3D_FILES = ("embeddings.npy", "index.npy", "point_cloud.pcd")


def voxel_points(voxel_map: VoxelMap) -> np.ndarray:
    """Structured (M,) array of the voxels: x y z (float32, metres, map frame), rgb (PCL-packed float32),
    label (int32, -1 none), score (float32, label confidence)."""
    with voxel_map.lock:
        positions, colors = voxel_map.positions(), voxel_map.colors()
        labels, scores = voxel_map.labels()
    points = np.empty(len(positions), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"),
                                             ("label", "<i4"), ("score", "<f4")])
    points["x"], points["y"], points["z"] = positions.T
    points["rgb"], points["label"], points["score"] = pack_rgb(colors), labels, scores
    return points


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
