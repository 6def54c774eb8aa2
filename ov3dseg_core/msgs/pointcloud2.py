"""sensor_msgs/PointCloud2 <-> NumPy structured arrays, vectorised.

Decoding views ``msg.data`` through one structured dtype built from the fields (names, types, offsets, itemsize =
point_step), so any layout works: padding, point_step larger than the fields, row padding (row_step) for organised
clouds, fields with count > 1, both byte orders. Colours follow the PCL convention: an "rgb" float32 field whose bits
hold 0x00RRGGBB.
"""
from __future__ import annotations

import sys

import numpy as np

from ov3dseg_core.msgs import MessageFormatError, padded_rows

INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
"""sensor_msgs/PointField datatype constants."""

DATATYPE_TO_BASE = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4", FLOAT32: "f4",
                    FLOAT64: "f8"}
"""PointField datatype -> NumPy base type (byte order added per message)."""

BASE_TO_DATATYPE = {np.dtype(base).str[1:]: datatype for datatype, base in DATATYPE_TO_BASE.items()}
"""NumPy kind + item size (e.g. 'f4') -> PointField datatype."""


def pointcloud2_to_array(msg) -> np.ndarray:
    """All points of a sensor_msgs/PointCloud2 as a structured array (N,), N = height * width, native byte order.

    The dtype mirrors the message layout (field offsets, itemsize = point_step; count > 1 fields are sub-arrays).
    It is a view of ``msg.data`` when neither a byte swap nor row padding forces a copy. MessageFormatError for
    malformed fields or sizes.
    """
    points = _wire_view(msg)
    native = _layout_dtype(msg, native=True)
    if points.dtype == native:  # (dtype.isnative misses byte-swapped sub-array fields)
        return points.reshape(-1)
    return points.astype(native).reshape(-1)


def pointcloud2_to_xyz(msg, remove_nans: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x, y, z of a PointCloud2 as (points (M, 3) float32 in msg's frame and units, keep (N,) bool).

    With ``remove_nans`` points with a non-finite coordinate are dropped; ``keep`` marks the input points present in
    the output (all True otherwise). MessageFormatError if x, y or z is missing or has count > 1.
    """
    points = _wire_view(msg)
    names = points.dtype.names
    for axis in "xyz":
        if axis not in names:
            raise MessageFormatError(f"PointCloud2 has no {axis!r} field (fields: {', '.join(names) or 'none'})")
        if points.dtype[axis].shape:
            raise MessageFormatError(f"PointCloud2 field {axis!r} has count {points.dtype[axis].shape[0]}, needs 1")
    xyz = np.empty(points.shape + (3,), dtype=np.float32)
    for i, axis in enumerate("xyz"):
        xyz[..., i] = points[axis]
    xyz = xyz.reshape(-1, 3)
    if not remove_nans:
        return xyz, np.ones(len(xyz), dtype=bool)
    keep = np.isfinite(xyz).all(axis=1)
    return (xyz if keep.all() else xyz[keep]), keep


def array_to_pointcloud2_fields(points: np.ndarray) -> dict:
    """Fields of a sensor_msgs/PointCloud2 holding a structured array, (N,) (unorganised) or (H, W) (organised).

    Every field must be a scalar or sub-array of int8/16/32, uint8/16/32, float32 or float64, all multi-byte fields
    in one byte order (which sets is_bigendian). Returns dict(height, width, fields=[(name, offset, datatype,
    count)], is_bigendian (bool), point_step, row_step, data (flat uint8 ndarray), is_dense (bool: no non-finite
    x/y/z)). MessageFormatError otherwise.
    """
    points = np.asarray(points)
    if points.dtype.names is None or points.ndim not in (1, 2):
        raise MessageFormatError(f"need a structured array of shape (N,) or (H, W), got {points.dtype} "
                                 f"with shape {points.shape}")
    fields = [_point_field(points.dtype, name) for name in points.dtype.names]
    height, width = points.shape if points.ndim == 2 else (1, points.shape[0])
    point_step = points.dtype.itemsize
    return dict(height=height, width=width, fields=fields, is_bigendian=_is_big_endian_dtype(points.dtype),
                point_step=point_step, row_step=width * point_step,
                data=np.ascontiguousarray(points).reshape(-1).view(np.uint8), is_dense=_is_dense(points))


SEMANTIC_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<i4"),
                                 ("score", "<f4"), ("instance", "<i4")])
"""Points of the semantic map cloud: position (metres, map frame), PCL-packed colour, class id (-1 none),
confidence of the class in [0, 1], instance id of the map's instance layer (-1 none)."""


def semantic_cloud_points(positions: np.ndarray, colors: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                          instances: np.ndarray | None = None) -> np.ndarray:
    """Structured (M,) SEMANTIC_CLOUD_DTYPE array from per-voxel positions (M, 3), colours (M, 3) uint8 RGB,
    labels (M,) int, label confidences (M,) and instance ids (M,) int (None: all -1)."""
    points = np.empty(len(positions), dtype=SEMANTIC_CLOUD_DTYPE)
    points["x"], points["y"], points["z"] = positions[:, 0], positions[:, 1], positions[:, 2]
    points["rgb"] = pack_rgb(colors)
    points["label"] = labels
    points["score"] = scores
    points["instance"] = -1 if instances is None else instances
    return points


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are 0x00RRGGBB (PCL "rgb" field)."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.dtype != np.uint8:
        raise ValueError(f"colors must be (N, 3) uint8, got {colors.shape} {colors.dtype}")
    c = colors.astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,) PCL packed colours (float32 bits or uint32/int32 values 0x??RRGGBB) -> (N, 3) uint8 RGB."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 1 or rgb.dtype.itemsize != 4 or rgb.dtype.kind not in "fiu":
        raise ValueError(f"rgb must be (N,) float32 or (u)int32, got {rgb.shape} {rgb.dtype}")
    packed = rgb.astype(rgb.dtype.newbyteorder("="), copy=False).view(np.uint32)
    colors = np.empty((len(packed), 3), dtype=np.uint8)
    colors[:, 0] = packed >> 16
    colors[:, 1] = packed >> 8
    colors[:, 2] = packed
    return colors


def _wire_view(msg) -> np.ndarray:
    """(height, width) structured view of ``msg.data`` in the message's byte order, after validating the sizes."""
    dtype = _layout_dtype(msg, native=False)
    height, width, row_step = int(msg.height), int(msg.width), int(msg.row_step)
    row_bytes = width * dtype.itemsize
    return padded_rows(msg.data, height, row_step, row_bytes, "PointCloud2", "row_step",
                       f"width {width} x point_step {dtype.itemsize}").view(dtype)


def _layout_dtype(msg, native: bool) -> np.dtype:
    """Structured dtype of one point as described by msg.fields and msg.point_step, in wire or native order."""
    order = "=" if native else (">" if msg.is_bigendian else "<")
    point_step = int(msg.point_step)
    names, formats, offsets = [], [], []
    for field in msg.fields:
        name, offset, datatype, count = field.name, int(field.offset), int(field.datatype), int(field.count)
        if datatype not in DATATYPE_TO_BASE:
            raise MessageFormatError(f"PointCloud2 field {name!r} has unknown datatype {datatype} (valid: 1..8)")
        if not name or name in names:
            raise MessageFormatError(f"PointCloud2 field names must be unique and non-empty, got {name!r} again"
                                     if name else "PointCloud2 has a field with an empty name")
        if count < 1:
            raise MessageFormatError(f"PointCloud2 field {name!r} has count {count}, needs >= 1")
        base = np.dtype(order + DATATYPE_TO_BASE[datatype])
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise MessageFormatError(f"PointCloud2 field {name!r} (offset {offset}, {count} x {base.itemsize} "
                                     f"bytes) does not fit in point_step {point_step}")
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def _point_field(dtype: np.dtype, name: str) -> tuple[str, int, int, int]:
    """(name, offset, datatype, count) of one field of a structured dtype; MessageFormatError if unsupported."""
    field_dtype, offset = dtype.fields[name][:2]
    datatype = BASE_TO_DATATYPE.get(field_dtype.base.str[1:])
    if datatype is None:
        raise MessageFormatError(f"field {name!r} has unsupported type {field_dtype} (PointField supports "
                                 f"int8/16/32, uint8/16/32, float32, float64)")
    return name, offset, datatype, int(np.prod(field_dtype.shape, dtype=np.int64))


def _is_big_endian_dtype(dtype: np.dtype) -> bool:
    """Byte order of a structured dtype's multi-byte fields (True = big); MessageFormatError if they are mixed."""
    orders = {field_dtype.base.byteorder for field_dtype, *_ in dtype.fields.values() if field_dtype.base.itemsize > 1}
    native = ">" if sys.byteorder == "big" else "<"
    orders = {native if order == "=" else order for order in orders}
    if len(orders) > 1:
        raise MessageFormatError(f"fields of {dtype} mix byte orders")
    return orders == {">"}


def _is_dense(points: np.ndarray) -> bool:
    """False if any floating point x, y or z value is non-finite."""
    names = [axis for axis in "xyz" if axis in points.dtype.names and points.dtype[axis].kind == "f"]
    return all(bool(np.isfinite(points[axis]).all()) for axis in names)
