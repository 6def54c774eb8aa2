"""Reliability of the live node (issue 13), real rclpy + Fast DDS on localhost. Prints tables (BENCHMARKS.md).

1. Throughput on a moving robot: a camera process publishes 640x480 RGB-D and camera_info at RATE Hz (best
   effort, or reliable with the node's qos_image/camera_info_reliability set to match) with the moving pose on /tf
   (or on /tf_static), optionally with a stale publisher sending the same edge stamped 0 at 10 Hz; the mapper
   (default parameters, or depth_stride 2) runs in this process. Reports the share of frames integrated and where
   every other frame went.
2. /query: 30 concurrent queries on a small map; the worst query (everything matches) on a 250k-voxel map
   while a normal query runs.

Usage: python benchmarks/bench_reliability.py [--seconds S] [--quick] [--fastdds-profile config/fastdds_large_data.xml]
(the profile applies to both processes: FASTDDS_DEFAULT_PROFILES_FILE)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from ov3dseg_core.geometry.camera import PinholeCamera  # noqa: E402
from ov3dseg_core.geometry.transforms import make_transform, matrix_to_quaternion  # noqa: E402
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig  # noqa: E402
from ov3dseg_ros.conversions import image_msg  # noqa: E402
from ov3dseg_ros.graph import NodeGraph  # noqa: E402
from ov3dseg_ros.srv import Query  # noqa: E402

CAMERA = PinholeCamera(640, 480, 525.0, 525.0, 319.5, 239.5)
OPTICAL = "camera_color_optical_frame"
R_MAP_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
LABELS = ["wall", "floor", "chair", "table", "sofa"]


def pose(t_s: float) -> np.ndarray:
    """T_map_optical of a camera moving along map y at 0.5 m/s, looking along map x."""
    return make_transform((0.0, 0.5 * t_s, 1.0), matrix_to_quaternion(R_MAP_OPTICAL))


def tf_msg(stamp_ns: int, T: np.ndarray):
    from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3
    from ov3dseg_ros.conversions import header
    q = matrix_to_quaternion(T[:3, :3])
    return TFMessage(transforms=[TransformStamped(
        header=header(stamp_ns, "map"), child_frame_id=OPTICAL,
        transform=Transform(translation=Vector3(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                            rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))])


def publish(rate_hz: float, seconds: float, tf_mode: str, stale: bool, reliable: bool) -> None:
    """The camera process: RGB-D + camera_info at ``rate_hz`` for ``seconds``, pose per ``tf_mode``."""
    from ov3dseg_core.data.frames import depth_to_u16_mm
    from ov3dseg_ros.conversions import header
    rclpy.init()
    node = Node("bench_camera")
    image_qos = QoSProfile(depth=5) if reliable else qos_profile_sensor_data
    color_pub = node.create_publisher(Image, "/camera/color/image_raw", image_qos)
    depth_pub = node.create_publisher(Image, "/camera/depth/image_raw", image_qos)
    info_pub = node.create_publisher(CameraInfo, "/camera/color/camera_info", image_qos)
    tf_pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    static_pub = node.create_publisher(TFMessage, "/tf_static",
                                       QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    stale_node = Node("bench_stale_tf")
    stale_pub = stale_node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    while not all(p.get_subscription_count() for p in (color_pub, depth_pub, info_pub, tf_pub)):
        time.sleep(0.05)
    time.sleep(0.5)
    color = np.full((480, 640, 3), 128, np.uint8)
    depth = depth_to_u16_mm(np.full((480, 640), 2.0, np.float32))
    k = CAMERA.K.reshape(9).tolist()
    if tf_mode == "static":
        static_pub.publish(tf_msg(0, pose(0.0)))
    start = time.monotonic()
    t0_ns = time.time_ns()
    frames = 0
    next_stale = 0.0
    while (elapsed := time.monotonic() - start) < seconds:
        stamp = t0_ns + int(elapsed * 1e9)
        if tf_mode == "dynamic":
            tf_pub.publish(tf_msg(stamp, pose(elapsed)))
        if stale and elapsed >= next_stale:
            stale_pub.publish(tf_msg(0, pose(0.0)))
            next_stale += 0.1
        info_pub.publish(CameraInfo(header=header(stamp, OPTICAL), width=640, height=480, distortion_model="plumb_bob",
                                    d=[0.0] * 5, k=k, r=np.eye(3).reshape(9).tolist(),
                                    p=[*k[:3], 0.0, *k[3:6], 0.0, *k[6:], 0.0]))
        color_pub.publish(image_msg(color, "rgb8", stamp, OPTICAL))
        depth_pub.publish(image_msg(depth, "16UC1", stamp, OPTICAL))
        frames += 1
        time.sleep(max(0.0, start + frames / rate_hz - time.monotonic()))
    if tf_mode == "dynamic":  # the pose a little past the last frame, so that the last frames can interpolate
        tf_pub.publish(tf_msg(t0_ns + int((time.monotonic() - start + 0.05) * 1e9), pose(seconds)))
    print(frames, flush=True)
    time.sleep(1.0)
    rclpy.shutdown()


def bench_throughput(rate_hz: float, seconds: float, tf_mode: str, stale: bool, reliable: bool,
                     stride: int) -> dict:
    rclpy.init()
    params = {"lidar_topics": [], "text_encoder": "", "map_directory": "/tmp", "depth_stride": stride}
    if reliable:
        params.update(qos_image_reliability="reliable", qos_camera_info_reliability="reliable")
    graph = NodeGraph(params=params).start()
    mapper = graph.mapper
    try:
        camera = subprocess.run([sys.executable, __file__, "--publish", str(rate_hz), str(seconds), tf_mode,
                                 str(int(stale)), str(int(reliable))], capture_output=True, text=True,
                                timeout=seconds + 120, env=os.environ)
        published = int(camera.stdout.split()[-1])
        deadline = time.monotonic() + 30.0
        while (len(mapper.queue) or mapper.busy) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(max(0.0, mapper.config.tf_timeout_s))  # let waiting frames expire into the counters
        counters = dict(mapper.counters)
        lost = {t.split("/", 2)[-1]: m.lost for t, m in mapper._inputs.items()}
        unmatched = sum(s.discarded for s in mapper._syncs.values())
        return {"rate": rate_hz, "tf": tf_mode + (" + stale stamp 0" if stale else ""), "published": published,
                "images": "reliable" if reliable else "best effort", "stride": stride,
                "received": counters.get("received", 0), "integrated": counters.get("integrated", 0),
                "dropped": {k[8:]: v for k, v in counters.items() if k.startswith("dropped_") and v},
                "lost": lost, "unmatched": unmatched, "tf_zero_ignored": mapper.tf_listener.zero_stamps,
                "tf_received": mapper.tf_listener.received, "integrate_ms": mapper.timings.summary().get(
                    "rgbd_total", {}).get("mean_ms", float("nan"))}
    finally:
        graph.shutdown()
        rclpy.try_shutdown()


def big_map(voxels: int, features=None) -> VoxelMap:
    """A map of about ``voxels`` voxels on four planes: every voxel labelled 'sofa' (label-only), or with
    ``features`` (D,) plus noise (a feature map)."""
    side = int(np.ceil(np.sqrt(voxels / 4)))
    g = (np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2) + 0.5) * 0.05
    planes = [np.column_stack([g, np.full(len(g), z)]) for z in (0.0, 1.0, 2.0, 3.0)]
    points = np.concatenate(planes)[:voxels]
    if features is None:
        vmap = VoxelMap(VoxelMapConfig(num_labels=len(LABELS), max_voxels=10_000_000), label_names=LABELS)
        vmap.integrate(points, labels=np.full(len(points), LABELS.index("sofa")))
        return vmap
    vmap = VoxelMap(VoxelMapConfig(feature_dim=len(features), max_voxels=10_000_000))
    noise = np.random.default_rng(0).normal(0.0, 0.02, (len(points), len(features))).astype(np.float32)
    vmap.integrate(points, features=np.asarray(features, np.float32) + noise)
    return vmap


def worst_and_other(caller: "Caller", worst_text: str, other_text: str) -> dict:
    """The worst query (threshold 1e-6: every voxel matches) and, 0.2 s into it, another one; times in s."""
    worst: list = []
    worker = threading.Thread(target=lambda: worst.append(caller.call(worst_text, threshold=1e-6)))
    worker.start()
    time.sleep(0.2)
    other_response, other_s = caller.call(other_text)
    worker.join()
    worst_response, worst_s = worst[0]
    return {"s": worst_s, "hits": len(worst_response.hits), "cloud_points": worst_response.cloud.width,
            "other_s": other_s, "other_ok": bool(other_response and other_response.success)}


class Caller(Node):
    def __init__(self):
        super().__init__("bench_caller")
        self.client = self.create_client(Query, "/query")

    def call(self, text: str, threshold: float = 0.0, timeout_s: float = 60.0):
        start = time.perf_counter()
        future = self.client.call_async(Query.Request(text=text, threshold=threshold))
        while not future.done() and time.perf_counter() - start < timeout_s:
            time.sleep(0.002)
        return future.result() if future.done() else None, time.perf_counter() - start


def bench_queries(big_voxels: int) -> dict:
    rclpy.init()
    graph = NodeGraph(params={"lidar_topics": [], "text_encoder": "minilm", "label_names": LABELS,
                              "query_min_voxels": 1, "map_directory": "/tmp"}).start()
    caller = Caller()
    executor = SingleThreadedExecutor()
    executor.add_node(caller)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        graph.mapper.text_encoder()
        assert caller.client.wait_for_service(10.0)
        graph.mapper.voxel_map = big_map(2_000)
        results: list = [None] * 30

        def ask(i: int) -> None:
            results[i] = caller.call("couch")
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(30)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        burst_s = time.perf_counter() - start
        answered = sum(r is not None and r[0] is not None and r[0].success for r in results)
        busy = sum(r is not None and r[0] is not None and r[0].message.startswith("busy") for r in results)

        graph.mapper.voxel_map = big_map(big_voxels)
        labels = worst_and_other(caller, "couch", "bathtub")
        embed = graph.mapper._encoder.result()[1]
        graph.mapper.voxel_map = big_map(big_voxels, embed(["sofa"])[0].numpy())
        features = worst_and_other(caller, "sofa", "bathtub")
        return {"burst": {"queries": 30, "answered": answered, "busy": busy, "all_within_s": burst_s},
                "voxels": len(graph.mapper.voxel_map), "label map": labels, "feature map": features}
    finally:
        executor.shutdown()
        graph.shutdown()
        rclpy.try_shutdown()


def main() -> None:
    if sys.argv[1:2] == ["--publish"]:
        rate, seconds, mode, stale, reliable = sys.argv[2:7]
        publish(float(rate), float(seconds), mode, bool(int(stale)), bool(int(reliable)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="only 30 Hz on /tf and the query checks")
    parser.add_argument("--fastdds-profile", metavar="XML", help="Fast DDS profile of both processes")
    args = parser.parse_args()
    if args.fastdds_profile:  # read when rclpy creates a participant (and inherited by the camera process)
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = os.path.abspath(args.fastdds_profile)
        print(f"Fast DDS profile: {args.fastdds_profile}")
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().strip()}")
    cases = [(30.0, "dynamic", False, False, 1)] if args.quick else [  # rate, /tf, stale, reliable, stride
        (30.0, "dynamic", False, False, 1), (30.0, "static", False, False, 1), (30.0, "dynamic", False, True, 1),
        (30.0, "dynamic", False, True, 2), (30.0, "dynamic", True, True, 2), (100.0, "dynamic", False, True, 2)]
    for rate, mode, stale, reliable, stride in cases:
        r = bench_throughput(rate, args.seconds, mode, stale, reliable, stride)
        share = r["integrated"] / max(r["published"], 1)
        print(f"{r['rate']:.0f} Hz, {r['images']} images, depth_stride {r['stride']}, pose on {r['tf']}: "
              f"{r['published']} frames published, {r['received']} "
              f"received, {r['integrated']} integrated ({100 * share:.1f} %), dropped {r['dropped']}, lost before "
              f"the node {r['lost']}, unmatched images {r['unmatched']}, tf received {r['tf_received']}, "
              f"stamp-0 ignored {r['tf_zero_ignored']}, integration {r['integrate_ms']:.1f} ms/frame")
    q = bench_queries(250_000)
    print(f"30 concurrent queries: {q['burst']}")
    for kind in ("label map", "feature map"):
        w = q[kind]
        print(f"worst query on a {q['voxels']}-voxel {kind}: {w['s']:.2f} s, {w['hits']} hits, "
              f"{w['cloud_points']} cloud points; a concurrent query: {w['other_s']:.2f} s (success {w['other_ok']})")
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().strip()}")


if __name__ == "__main__":
    main()
