"""ROS 2 bags of RGB-D streams, TF and ground truth, written without ROS (rosbags, standard message types).

Every message header carries the source time; the bag's record time equals it, so a replay reproduces the
original timing. Topics (``ns`` = camera namespace, default "/camera"):

    {ns}/color/image_raw        sensor_msgs/Image rgb8
    {ns}/depth/image_raw        sensor_msgs/Image 16UC1 millimetres (registered to colour)
    {ns}/color/camera_info      sensor_msgs/CameraInfo (also {ns}/depth/camera_info, same intrinsics)
    {ns}/semantic/image_raw     16UC1 class ids (65535 = unlabelled), the label input of the mapping node
    {ns}/instance/image_raw     16UC1 instance ids
    /ground_truth/semantic/image_raw, /ground_truth/instance/image_raw   16UC1 ground truth
    /ground_truth/label_names   std_msgs/String, JSON list (latched: transient-local)
    /ground_truth/points        sensor_msgs/PointCloud2 x y z rgb label instance, map frame (write_scene_bag)
    /tf, /tf_static             tf2_msgs/TFMessage (/tf_static transient-local, every message holds all static
                                transforms written so far, as tf2's static broadcaster does)
"""
from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Iterable, Sequence

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ov3dseg_core.data.frames import depth_to_u16_mm, labels_to_u16
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.geometry.transforms import transform_to_translation_quaternion
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.msgs.image import numpy_to_image_fields
from ov3dseg_core.msgs.pointcloud2 import array_to_pointcloud2_fields

TYPESTORE_NAME = Stores.ROS2_KILTED
"""Message definitions (and their RIHS01 hashes) of the ROS 2 distribution the pip wheels provide."""

_ZERO = QosTime(0, 0)
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _ZERO, _ZERO,
                  QosLiveliness.AUTOMATIC, _ZERO, False)
"""The QoS tf2's static broadcaster offers: reliable, transient-local, depth 1 (a replay re-offers it)."""
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, _ZERO, _ZERO,
                 QosLiveliness.AUTOMATIC, _ZERO, False)

_STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
Transform = tuple[str, str, np.ndarray]
"""(parent frame, child frame, T_parent_child (4, 4))."""


class SensorBagWriter:
    """Context manager writing a ROS 2 bag (MCAP or sqlite3 storage) at ``path`` (must not exist)."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; rosbag2 bags are directories written once")
        self.typestore = get_typestore(TYPESTORE_NAME)
        self._writer = Writer(self.path, version=9, storage_plugin=_STORAGES[storage])
        self._connections: dict[str, object] = {}
        self._static: dict[str, tuple[str, np.ndarray, int]] = {}
        self._label_names: list[str] | None = None
        self._min_stamp: int | None = None
        self._t = self.typestore.types

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "SensorBagWriter":
        self._writer.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()

    def close(self) -> None:
        """Flush pending latched messages (label names) and finish the bag."""
        if self._label_names is not None:
            self.write_string("/ground_truth/label_names", self._min_stamp or 0, json.dumps(self._label_names),
                              qos=LATCHED_QOS)
            self._label_names = None
        self._writer.close()

    # -- primitives -----------------------------------------------------------------------------------------
    def _header(self, stamp_ns: int, frame_id: str):
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self._t["std_msgs/msg/Header"](stamp=self._t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                              frame_id=frame_id)

    def write_message(self, topic: str, msgtype: str, stamp_ns: int, msg: object, qos: Qos = SENSOR_QOS) -> None:
        """Serialise ``msg`` (a typestore message of ``msgtype``) to ``topic`` at record time ``stamp_ns``."""
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore, offered_qos_profiles=[qos])
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {conn.msgtype}, not {msgtype}")
        self._writer.write(conn, int(stamp_ns), self.typestore.serialize_cdr(msg, msgtype))
        self._min_stamp = int(stamp_ns) if self._min_stamp is None else min(self._min_stamp, int(stamp_ns))

    def image_message(self, stamp_ns: int, frame_id: str, array: np.ndarray, encoding: str):
        """A sensor_msgs/Image typestore message from an array (see ov3dseg_core.msgs.image encodings)."""
        return self._t["sensor_msgs/msg/Image"](header=self._header(stamp_ns, frame_id),
                                                **numpy_to_image_fields(array, encoding))

    def camera_info_message(self, stamp_ns: int, frame_id: str, camera: PinholeCamera):
        """sensor_msgs/CameraInfo: plumb_bob with the camera's distortion (zeros if none), P = [K | 0]."""
        d = np.zeros(5) if not camera.distortion else np.asarray(camera.distortion, dtype=np.float64)
        P = np.zeros((3, 4))
        P[:, :3] = camera.K
        roi = self._t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self._t["sensor_msgs/msg/CameraInfo"](
            header=self._header(stamp_ns, frame_id), height=camera.height, width=camera.width,
            distortion_model="plumb_bob" if len(d) <= 5 else "rational_polynomial", d=d,
            k=np.asarray(camera.K, np.float64).reshape(9), r=np.eye(3).reshape(9), p=P.reshape(12),
            binning_x=0, binning_y=0, roi=roi)

    def _tf_message(self, entries: Iterable[tuple[int, str, str, np.ndarray]]):
        t = self._t
        transforms = []
        for stamp_ns, parent, child, T in entries:
            translation, q = transform_to_translation_quaternion(np.asarray(T, dtype=np.float64))
            transforms.append(t["geometry_msgs/msg/TransformStamped"](
                header=self._header(stamp_ns, parent), child_frame_id=child,
                transform=t["geometry_msgs/msg/Transform"](
                    translation=t["geometry_msgs/msg/Vector3"](x=float(translation[0]), y=float(translation[1]),
                                                               z=float(translation[2])),
                    rotation=t["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                               w=float(q[3])))))
        return t["tf2_msgs/msg/TFMessage"](transforms=transforms)

    # -- contract API ---------------------------------------------------------------------------------------
    def write_static_transforms(self, stamp_ns: int, transforms: Sequence[Transform]) -> None:
        """Add static transforms and write /tf_static holding every static transform so far (latched QoS)."""
        for parent, child, T in transforms:
            self._static[child] = (parent, np.asarray(T, dtype=np.float64), int(stamp_ns))
        msg = self._tf_message((s, parent, child, T) for child, (parent, T, s) in self._static.items())
        self.write_message("/tf_static", "tf2_msgs/msg/TFMessage", stamp_ns, msg, qos=LATCHED_QOS)

    def write_transforms(self, stamp_ns: int, transforms: Sequence[Transform]) -> None:
        """Write one /tf message with the given (parent, child, T_parent_child) transforms at ``stamp_ns``."""
        msg = self._tf_message((stamp_ns, parent, child, T) for parent, child, T in transforms)
        self.write_message("/tf", "tf2_msgs/msg/TFMessage", stamp_ns, msg)

    def write_rgbd(self, stamp_ns: int, frame_id: str, camera: PinholeCamera, depth_m: np.ndarray,
                   color: np.ndarray | None = None, labels: np.ndarray | None = None,
                   instances: np.ndarray | None = None, namespace: str = "/camera",
                   gt_labels: np.ndarray | None = None, gt_instances: np.ndarray | None = None) -> None:
        """Write one registered RGB-D frame (topics in the module docstring), all stamped ``stamp_ns``.

        depth_m: (H, W) float metres (0 = invalid); color: (H, W, 3) uint8 RGB; labels/instances and their
        ground-truth twins: (H, W) int, negative = none.
        """
        depth_m = np.asarray(depth_m)
        if depth_m.shape != (camera.height, camera.width):
            raise ValueError(f"depth is {depth_m.shape}, camera is {camera.height}x{camera.width}")
        ns = namespace.rstrip("/")
        info = self.camera_info_message(stamp_ns, frame_id, camera)
        image_type = "sensor_msgs/msg/Image"
        if color is not None:
            self.write_message(f"{ns}/color/image_raw", image_type, stamp_ns,
                               self.image_message(stamp_ns, frame_id, np.asarray(color, np.uint8), "rgb8"))
        self.write_message(f"{ns}/depth/image_raw", image_type, stamp_ns,
                           self.image_message(stamp_ns, frame_id, depth_to_u16_mm(depth_m), "16UC1"))
        self.write_message(f"{ns}/color/camera_info", "sensor_msgs/msg/CameraInfo", stamp_ns, info)
        self.write_message(f"{ns}/depth/camera_info", "sensor_msgs/msg/CameraInfo", stamp_ns, info)
        for topic, image in ((f"{ns}/semantic/image_raw", labels), (f"{ns}/instance/image_raw", instances),
                             ("/ground_truth/semantic/image_raw", gt_labels),
                             ("/ground_truth/instance/image_raw", gt_instances)):
            if image is not None:
                self.write_message(topic, image_type, stamp_ns,
                                   self.image_message(stamp_ns, frame_id, labels_to_u16(image), "16UC1"))

    def write_pointcloud(self, stamp_ns: int, topic: str, frame_id: str, structured_array: np.ndarray,
                         qos: Qos = SENSOR_QOS) -> None:
        """Write a structured array (N,) (fields x, y, z, ...) as sensor_msgs/PointCloud2 (height 1)."""
        fields = array_to_pointcloud2_fields(structured_array)
        point_fields = [self._t["sensor_msgs/msg/PointField"](name=name, offset=offset, datatype=datatype, count=count)
                        for name, offset, datatype, count in fields.pop("fields")]
        msg = self._t["sensor_msgs/msg/PointCloud2"](header=self._header(stamp_ns, frame_id), fields=point_fields,
                                                     **fields)
        self.write_message(topic, "sensor_msgs/msg/PointCloud2", stamp_ns, msg, qos=qos)

    def write_label_names(self, names: Sequence[str], stamp_ns: int | None = None) -> None:
        """Label names as a JSON list on /ground_truth/label_names (latched).

        Without ``stamp_ns`` it is written on close, at the bag's earliest record time.
        """
        if stamp_ns is None:
            self._label_names = list(names)
        else:
            self.write_string("/ground_truth/label_names", stamp_ns, json.dumps(list(names)), qos=LATCHED_QOS)

    def write_string(self, topic: str, stamp_ns: int, text: str, qos: Qos = SENSOR_QOS) -> None:
        """Write a std_msgs/String."""
        self.write_message(topic, "std_msgs/msg/String", stamp_ns, self._t["std_msgs/msg/String"](data=text), qos=qos)


# -- whole scenes ---------------------------------------------------------------------------------------------
MAP_FRAME, ODOM_FRAME, BASE_FRAME = "map", "odom", "base_link"
CAMERA_LINK, CAMERA_OPTICAL_FRAME = "camera_link", "camera_color_optical_frame"
T_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""camera_link (x forward, y left, z up, REP-103) -> optical frame (x right, y down, z forward)."""
MIN_START_NS = 1_000_000_000
"""Bags never start before 1 s: stamp 0 means "latest" to TF, so synthetic 0-based clocks are shifted here."""
GT_POINTS_TOPIC = "/ground_truth/points"


def camera_rig_static_transforms() -> list[Transform]:
    """The static part of the scene-bag TF tree: map -> odom (identity), base_link -> camera_link (identity:
    a hand-held camera is its own body), camera_link -> camera_color_optical_frame (axis rotation)."""
    return [(MAP_FRAME, ODOM_FRAME, np.eye(4)), (BASE_FRAME, CAMERA_LINK, np.eye(4)),
            (CAMERA_LINK, CAMERA_OPTICAL_FRAME, T_LINK_OPTICAL)]


class _BagClock:
    """Bag stamps for a stream of frames: source stamps (or ``rate_hz`` re-timing) shifted so the first is at
    least MIN_START_NS; ValueError when source stamps do not increase (re-time with a rate instead)."""

    def __init__(self, rate_hz: float | None):
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"rate must be positive, got {rate_hz}")
        self.rate_hz = rate_hz
        self._offset: int | None = None
        self._last = -1

    def __call__(self, index: int, source_ns: int) -> int:
        if self.rate_hz is not None:
            return MIN_START_NS + int(round(index * 1e9 / self.rate_hz))
        if self._offset is None:
            self._offset = max(0, MIN_START_NS - int(source_ns))
        if source_ns <= self._last:
            raise ValueError(f"frame {index} stamp {source_ns} ns does not increase; pass a rate to re-time")
        self._last = int(source_ns)
        return int(source_ns) + self._offset


def write_scene_bag(scene, path: str | Path, storage: str = "mcap", rate_hz: float | None = None,
                    max_frames: int | None = None, stride: int = 1, namespace: str = "/camera",
                    progress: bool = True) -> dict:
    """Write a Scene as a bag a robot would record (topics in the module docstring).

    Stamps: the frames' source stamps, or frame i at i / rate_hz; shifted to start at >= 1 s (MIN_START_NS).
    TF: static map -> odom -> ... (camera_rig_static_transforms) on /tf_static; the camera trajectory as
    odom -> base_link on /tf at each frame stamp (T_odom_base = T_world_camera @ inv(T_link_optical)).
    Frames without a pose are skipped (counted). Per-frame labels go to the ground-truth topics, label names
    to /ground_truth/label_names, a labelled scene cloud (map frame) to /ground_truth/points.
    Returns dict(frames, skipped_no_pose, start_ns, end_ns, path).
    """
    from tqdm import tqdm

    from ov3dseg_core.msgs.pointcloud2 import pack_rgb

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    frames = scene.frames[::stride]
    if max_frames is not None:
        frames = frames[:max_frames]
    if len(frames) == 0 and scene.points is None:
        raise ValueError(f"scene {scene.name!r} has neither frames nor a point cloud to write")
    T_optical_link = np.linalg.inv(T_LINK_OPTICAL)
    clock = _BagClock(rate_hz)
    written = skipped = 0
    start = end = MIN_START_NS
    with SensorBagWriter(path, storage=storage) as bag:
        for i, frame in enumerate(tqdm(frames, desc=f"bag {Path(path).name}", unit="frame", disable=not progress)):
            stamp = clock(i, frame.stamp_ns)
            if i == 0:
                start = stamp
                bag.write_static_transforms(stamp, camera_rig_static_transforms())
            end = stamp
            if frame.pose is None:
                skipped += 1
                continue
            bag.write_transforms(stamp, [(ODOM_FRAME, BASE_FRAME, frame.pose @ T_optical_link)])
            bag.write_rgbd(stamp, CAMERA_OPTICAL_FRAME, frame.camera, frame.depth, color=frame.color,
                           namespace=namespace, gt_labels=frame.labels, gt_instances=frame.instances)
            written += 1
        if scene.points is not None:
            cloud = np.zeros(len(scene.points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"),
                                                      ("label", "<i4"), ("instance", "<i4")])
            for axis, name in enumerate("xyz"):
                cloud[name] = scene.points[:, axis]
            colors = np.full((len(cloud), 3), 128, np.uint8) if scene.colors is None else scene.colors
            cloud["rgb"] = pack_rgb(np.ascontiguousarray(colors, dtype=np.uint8))
            cloud["label"] = IGNORE_LABEL if scene.labels is None else scene.labels
            cloud["instance"] = IGNORE_LABEL if scene.instances is None else scene.instances
            bag.write_pointcloud(start, GT_POINTS_TOPIC, MAP_FRAME, cloud, qos=LATCHED_QOS)
        if scene.label_names:
            bag.write_label_names(scene.label_names, stamp_ns=start)
    return dict(frames=written, skipped_no_pose=skipped, start_ns=int(start), end_ns=int(end), path=str(path))
