"""rclpy messages from and to the core's NumPy data (the array work itself lives in ov3dseg_core.msgs).

Byte payloads go into messages as ``array.array('B')`` filled from the array's buffer: one copy, no per-element
checks in the generated message setters.
"""
from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, TransformStamped, Vector3
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ov3dseg_core.geometry.transforms import make_transform
from ov3dseg_core.msgs.image import image_to_numpy, numpy_to_image_fields
from ov3dseg_core.msgs.pointcloud2 import (  # noqa: F401  (the semantic cloud's layout, for the node and tests)
    SEMANTIC_CLOUD_DTYPE, array_to_pointcloud2_fields, semantic_cloud_points,
)
from ov3dseg_ros.msg import ObjectHit

QUERY_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("score", "<f4")])
"""Points of a /query answer: position (metres, map frame) and relevancy in [0, 1]."""


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds; ValueError for negative times and nanosec >= 1e9 (which
    would wrap into the next second)."""
    if stamp.sec < 0:
        raise ValueError(f"negative time stamp {stamp.sec}.{stamp.nanosec:09d} s")
    if stamp.nanosec >= 1_000_000_000:
        raise ValueError(f"time stamp nanosec {stamp.nanosec} is not below 1e9")
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_stamp(stamp_ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _payload(data: np.ndarray) -> array.array:
    payload = array.array("B")
    payload.frombytes(memoryview(np.ascontiguousarray(data)).cast("B"))
    return payload


def image_msg(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """sensor_msgs/Image holding ``pixels`` ((H, W) or (H, W, C) matching ``encoding``)."""
    fields = numpy_to_image_fields(pixels, encoding)
    data = fields.pop("data")
    msg = Image(header=header(stamp_ns, frame_id), **fields)
    msg.data = _payload(data)
    return msg


def pointcloud2_msg(points: np.ndarray, stamp_ns: int, frame_id: str) -> PointCloud2:
    """sensor_msgs/PointCloud2 (height 1) holding a structured array (N,) with fields x, y, z, ..."""
    fields = array_to_pointcloud2_fields(points)
    msg = PointCloud2(
        header=header(stamp_ns, frame_id), height=fields["height"], width=fields["width"],
        fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]],
        is_bigendian=bool(fields["is_bigendian"]), point_step=fields["point_step"], row_step=fields["row_step"],
        is_dense=bool(fields["is_dense"]))
    msg.data = _payload(fields["data"])
    return msg


def color_to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a colour image (rgb8, bgr8, rgba8, bgra8, mono8, 8UC3 taken as BGR as OpenCV does).

    MessageFormatError (from the core) for a malformed image; ValueError for an encoding that is not a colour image.
    """
    pixels = image_to_numpy(msg)
    if msg.encoding == "rgb8":
        return pixels
    if msg.encoding in ("bgr8", "8UC3"):
        return pixels[:, :, ::-1]
    if msg.encoding == "rgba8":
        return pixels[:, :, :3]
    if msg.encoding == "bgra8":
        return pixels[:, :, 2::-1]
    if msg.encoding in ("mono8", "8UC1"):
        return np.repeat(pixels[:, :, None], 3, axis=2)
    raise ValueError(f"colour image encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8, mono8)")


def _frame(frame_id: str) -> str:
    """tf2 frame ids carry no leading slash."""
    return frame_id.lstrip("/")


def transform_from_msg(msg: TransformStamped) -> tuple[str, str, int, np.ndarray]:
    """(parent frame, child frame, stamp_ns, T_parent_child (4, 4) float64) of a geometry_msgs/TransformStamped.

    ValueError for empty frame ids or a non-finite or zero quaternion/translation.
    """
    parent, child = _frame(msg.header.frame_id), _frame(msg.child_frame_id)
    if not parent or not child:
        raise ValueError(f"empty frame id (parent {msg.header.frame_id!r}, child {msg.child_frame_id!r})")
    t, q = msg.transform.translation, msg.transform.rotation
    T = make_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    return parent, child, stamp_to_ns(msg.header.stamp), T


def query_cloud_points(positions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Structured (K,) QUERY_CLOUD_DTYPE array from positions (K, 3) metres and scores (K,)."""
    points = np.empty(len(positions), dtype=QUERY_CLOUD_DTYPE)
    points["x"], points["y"], points["z"] = positions[:, 0], positions[:, 1], positions[:, 2]
    points["score"] = scores
    return points


def object_hit_msg(group) -> ObjectHit:
    """ov3dseg_ros/ObjectHit of an ov3dseg_core.mapping.query.ObjectGroup."""
    c, b, s = (np.asarray(v, dtype=float) for v in (group.center, group.box_center, group.size))
    return ObjectHit(label=str(group.label), score=float(group.score), mean_score=float(group.mean_score),
                     confidence=float(group.confidence), center=Point(x=c[0], y=c[1], z=c[2]),
                     box_center=Point(x=b[0], y=b[1], z=b[2]), size=Vector3(x=s[0], y=s[1], z=s[2]),
                     num_voxels=int(group.num_voxels))


def hit_markers(hits: list[ObjectHit], stamp_ns: int, frame_id: str, namespace: str = "query") -> MarkerArray:
    """MarkerArray for RViz: a DELETEALL, then per hit a translucent box (red to green with confidence) and a text
    "label confidence" above it."""
    markers = [Marker(header=header(stamp_ns, frame_id), ns=namespace, action=Marker.DELETEALL)]
    for i, hit in enumerate(hits):
        green = max(0.0, min(1.0, hit.confidence))
        box = Marker(header=header(stamp_ns, frame_id), ns=namespace, id=2 * i, type=Marker.CUBE,
                     action=Marker.ADD, pose=Pose(position=hit.box_center, orientation=Quaternion(w=1.0)),
                     scale=Vector3(x=max(hit.size.x, 1e-3), y=max(hit.size.y, 1e-3), z=max(hit.size.z, 1e-3)),
                     color=ColorRGBA(r=1.0 - green, g=green, b=0.2, a=0.4))
        top = Point(x=hit.box_center.x, y=hit.box_center.y, z=hit.box_center.z + hit.size.z / 2 + 0.1)
        text = Marker(header=header(stamp_ns, frame_id), ns=namespace, id=2 * i + 1,
                      type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      pose=Pose(position=top, orientation=Quaternion(w=1.0)), scale=Vector3(z=0.1),
                      color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0), text=f"{hit.label} {hit.confidence:.2f}")
        markers += [box, text]
    return MarkerArray(markers=markers)
