"""Test rig: a real rclpy node that plays a small RGB-D camera with TF and records the mapper's outputs."""
from __future__ import annotations

import tempfile
import threading
import time
from typing import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from ov3dseg_core.data.frames import depth_to_u16_mm, labels_to_u16
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.geometry.transforms import make_transform, matrix_to_quaternion
from ov3dseg_core.sim.export import write_bag
from ov3dseg_core.sim.world import CameraConfig, SimConfig, generate_scene
from ov3dseg_ros.conversions import header, image_msg
from ov3dseg_ros.graph import NodeGraph
from ov3dseg_ros.msg import MapStatus

CAMERA = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)
OPTICAL_FRAME = "camera_color_optical_frame"
R_MAP_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Optical z (forward) -> map +x, optical x (right) -> map -y, optical y (down) -> map -z."""
T_MAP_CAMERA = make_transform((1.0, 2.0, 0.5), matrix_to_quaternion(R_MAP_OPTICAL))
SOFA, WALL = 5, 0
LABEL_NAMES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door"]
RED, BLUE = (200, 30, 30), (20, 40, 220)
TEST_PARAMS = {"text_encoder": "", "cloud_rate_hz": 20.0, "status_rate_hz": 20.0, "lidar_topics": [],
               "map_directory": tempfile.gettempdir()}
"""Mapper parameters shared by the tests (no text encoder unless a test queries; maps in pytest's tmp_path)."""


def wall_images(depth_m: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fronto-parallel wall at ``depth_m``: (colour (H, W, 3) uint8, depth (H, W) float32 m, labels (H, W) int32).

    The left image half (u < W/2, map y > 2) is a red sofa (label SOFA), the right half a blue wall (WALL).
    """
    h, w = CAMERA.height, CAMERA.width
    left = np.arange(w)[None, :].repeat(h, 0) < w // 2
    color = np.where(left[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8)).astype(np.uint8)
    labels = np.where(left, SOFA, WALL).astype(np.int32)
    return color, np.full((h, w), depth_m, np.float32), labels


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


def call_service(node: Node, srv_type, name: str, request, timeout_s: float = 15.0):
    """Call service ``name`` from ``node`` (spun elsewhere) and return the response."""
    client = node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout_s), f"no service {name}"
        future = client.call_async(request)
        wait_until(future.done, timeout_s, f"{name} answer")
        return future.result()
    finally:
        node.destroy_client(client)


def camera_info_msg(stamp_ns: int, camera: PinholeCamera = CAMERA, frame_id: str = OPTICAL_FRAME) -> CameraInfo:
    k = camera.K.reshape(9).tolist()
    return CameraInfo(header=header(stamp_ns, frame_id), width=camera.width, height=camera.height,
                      distortion_model="plumb_bob", d=[0.0] * 5, k=k, r=np.eye(3).reshape(9).tolist(),
                      p=[*k[:3], 0.0, *k[3:6], 0.0, *k[6:], 0.0])


def tf_message(stamp_ns: int, T: np.ndarray = T_MAP_CAMERA, parent: str = "map",
               child: str = OPTICAL_FRAME) -> TFMessage:
    q = matrix_to_quaternion(T[:3, :3])
    return TFMessage(transforms=[TransformStamped(
        header=header(stamp_ns, parent), child_frame_id=child,
        transform=Transform(translation=Vector3(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                            rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))])


class Rig(Node):
    """Publishes /camera/* images, camera_info, /tf, /tf_static and /lidar/points; records status and clouds."""

    def __init__(self, context):
        super().__init__("test_rig", context=context)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.color_pub = self.create_publisher(Image, "/camera/color/image_raw", qos)
        self.depth_pub = self.create_publisher(Image, "/camera/depth/image_raw", qos)
        self.label_pub = self.create_publisher(Image, "/camera/semantic/image_raw", qos)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/color/camera_info", qos)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", qos)
        self.tf_static_pub = self.create_publisher(
            TFMessage, "/tf_static", QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.cloud_in_pub = self.create_publisher(PointCloud2, "/lidar/points", qos)
        self._lock = threading.Lock()
        self.status: MapStatus | None = None
        self.cloud: PointCloud2 | None = None
        self.diagnostics: DiagnosticArray | None = None
        self.create_subscription(MapStatus, "/ov3dseg/status", lambda m: self._keep("status", m), 50)
        self.create_subscription(PointCloud2, "/ov3dseg/semantic_cloud", lambda m: self._keep("cloud", m), 5)
        self.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._keep("diagnostics", m), 5)

    def _keep(self, name: str, msg) -> None:
        with self._lock:
            setattr(self, name, msg)

    def wait_connected(self, *publishers, timeout_s: float = 15.0) -> None:
        """Wait until the mapper matched ``publishers`` (default: colour, depth, camera_info, /tf) and our outputs."""
        publishers = publishers or (self.color_pub, self.depth_pub, self.info_pub, self.tf_pub)
        wait_until(lambda: all(p.get_subscription_count() > 0 for p in publishers)
                   and self.count_publishers("/ov3dseg/status") > 0, timeout_s, "the mapper's subscriptions")

    def wait_status(self, condition: Callable[[MapStatus], bool], timeout_s: float = 15.0,
                    what: str = "status") -> MapStatus:
        wait_until(lambda: self.status is not None and condition(self.status), timeout_s, what)
        return self.status

    def publish_frame(self, stamp_ns: int, color: np.ndarray | None, depth: np.ndarray | None,
                      labels: np.ndarray | None = None, info: bool = True, frame_id: str = OPTICAL_FRAME,
                      depth_encoding: str = "16UC1") -> None:
        if info:
            self.info_pub.publish(camera_info_msg(stamp_ns, frame_id=frame_id))
        if color is not None:
            self.color_pub.publish(image_msg(color, "rgb8", stamp_ns, frame_id))
        if labels is not None:
            self.label_pub.publish(image_msg(labels_to_u16(labels), "16UC1", stamp_ns, frame_id))
        if depth is not None:
            pixels = depth_to_u16_mm(depth) if depth_encoding == "16UC1" else depth.astype(np.float32)
            self.depth_pub.publish(image_msg(pixels, depth_encoding, stamp_ns, frame_id))

    def publish_tf(self, stamp_ns: int, T: np.ndarray = T_MAP_CAMERA, parent: str = "map",
                   child: str = OPTICAL_FRAME) -> None:
        self.tf_pub.publish(tf_message(stamp_ns, T, parent, child))

    def publish_static_tf(self, T: np.ndarray = T_MAP_CAMERA, parent: str = "map",
                          child: str = OPTICAL_FRAME) -> None:
        self.tf_static_pub.publish(tf_message(0, T, parent, child))


def start_graph(context, params: dict | None = None, **kwargs) -> tuple[NodeGraph, Rig]:
    """A running NodeGraph with TEST_PARAMS (+ ``params``) and a Rig spun by the same executor."""
    graph = NodeGraph(params={**TEST_PARAMS, **(params or {})}, context=context, **kwargs)
    rig = Rig(context)
    graph.executor.add_node(rig)
    graph.nodes.append(rig)
    graph.start()
    return graph, rig


def sim_room_bag(folder, seed: int, frames: int, width: int, height: int, room: str = "living_room"):
    """A simulated room (camera only, ``frames`` frames of width x height) written to ``folder``/room.mcap;
    returns (scene, bag path)."""
    scene = generate_scene(seed, room, config=SimConfig(frames=frames, use_lidar=False,
                                                        camera=CameraConfig(width=width, height=height)))
    bag = folder / "room.mcap"
    write_bag(scene, bag, lidar=False)
    return scene, bag
