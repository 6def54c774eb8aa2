"""Live runtime benchmarks of the ov3dseg ROS 2 graph (real rclpy + FastDDS on localhost). Prints tables.

1. Sustained integration rate: the living-room sample (640x480 RGB-D, 5 cm voxels, colour + 20 labels) looped
   to FRAMES frames at 30 Hz, replayed at full speed, with and without waiting for each frame; and at 2x real
   time without waiting, with and without the embedded default model running back to back in its own thread
   (target: geometry >= 20/s while the model runs).
2. Latency from publishing a 640x480 frame to its voxels being in the map (status message after integration).
3. /query latency through DDS at 10k / 100k / 1M voxels (label-only map, MiniLM text embedding cached).
4. Memory per voxel, and the cost of building the semantic cloud message.

Usage: python benchmarks/bench_runtime.py [--frames N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))

import rclpy  # noqa: E402
from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ov3dseg_core.data.bag_writer import write_scene_bag  # noqa: E402
from ov3dseg_core.data.frames import RGBDFrame, Scene, depth_to_u16_mm, labels_to_u16  # noqa: E402
from ov3dseg_core.data.readers.redwood import open_redwood  # noqa: E402
from ov3dseg_core.data.samples import find_living_room  # noqa: E402
from ov3dseg_core.geometry.transforms import matrix_to_quaternion  # noqa: E402
from ov3dseg_core.labels import SCANNET20  # noqa: E402
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig  # noqa: E402
from ov3dseg_ros.conversions import header, image_msg, pointcloud2_msg, semantic_cloud_points  # noqa: E402
from ov3dseg_ros.graph import NodeGraph  # noqa: E402
from ov3dseg_ros.msg import MapStatus  # noqa: E402
from ov3dseg_ros.query_client import QueryClient  # noqa: E402
from ov3dseg_ros.replay import replay_bag  # noqa: E402
from ov3dseg_ros.timing import format_timings  # noqa: E402

QUIET = {"text_encoder": "", "lidar_topics": []}
MODEL_BUSY = {"model": "default", "model_rate_hz": 0.0}
"""The embedded default offered every frame: its thread never idles, the worst case for the geometry path (a
deterministic replay would run each pass in the worker instead, so this mode does not wait per frame)."""
MODEL_RATE = 2.0
"""Real-time factor of the replays that compare geometry with and without the model: 60 frames/s published."""


def labelled_frames(frames: list[RGBDFrame]) -> list[RGBDFrame]:
    """The frames with synthetic per-pixel labels (20 classes by depth band and image column)."""
    out = []
    for f in frames:
        cols = np.arange(f.depth.shape[1])[None, :] // 64
        labels = ((f.depth * 4).astype(np.int32) + cols) % len(SCANNET20)
        out.append(RGBDFrame(f.color, f.depth, f.camera, f.pose, f.stamp_ns, labels=labels))
    return out


def bench_replay(frames: list[RGBDFrame], count: int, tmp: Path) -> list[str]:
    loop = [frames[i % len(frames)] for i in range(count)]
    scene = Scene("living_room_loop", loop, label_names=list(SCANNET20))
    bag = tmp / "loop_bag"
    write_scene_bag(scene, bag, rate_hz=30.0, progress=False)
    rows = []
    modes = (("wait per frame (deterministic)", True, None, {}), ("full speed, no waiting", False, None, {}),
             (f"{MODEL_RATE:g}x real time (60 Hz), no waiting, no model", False, MODEL_RATE, {}),
             (f"{MODEL_RATE:g}x real time, embedded default back to back in its own thread", False, MODEL_RATE,
              MODEL_BUSY))
    for mode, deterministic, rate, extra in modes:
        result = replay_bag(bag, params={**QUIET, "voxel_size": 0.05, **extra}, oracle=True,
                            deterministic=deterministic, rate=rate, progress=True)
        rate = result.frames_integrated / result.wall_s
        passes = result.model_passes.get("3d", 0)
        rows.append(f"| {mode} | {result.frames_published} | {result.frames_integrated} | {result.frames_dropped} "
                    f"| {result.wall_s:.2f} | {rate:.1f} | {passes} ({passes / result.wall_s:.1f}/s) |")
        print(f"\n{mode}:\n{format_timings(result.timings, result.wall_s)}\n")
    return rows


def bench_latency(frame: RGBDFrame, repeats: int) -> str:
    rclpy.init()
    graph = NodeGraph(params={**QUIET, "label_names": list(SCANNET20), "tf_timeout_s": 10.0})
    node = rclpy.create_node("bench_publisher")
    graph.executor.add_node(node)
    graph.nodes.append(node)
    statuses: list[tuple[float, int]] = []
    node.create_subscription(MapStatus, "/ov3dseg/status",
                             lambda m: statuses.append((time.perf_counter(), m.frames_integrated)), 100)
    graph.start()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {name: node.create_publisher(kind, topic, qos) for name, kind, topic in (
        ("color", Image, "/camera/color/image_raw"), ("depth", Image, "/camera/depth/image_raw"),
        ("labels", Image, "/camera/semantic/image_raw"), ("info", CameraInfo, "/camera/color/camera_info"))}
    tf_pub = node.create_publisher(TFMessage, "/tf", qos)
    while any(p.get_subscription_count() == 0 for p in [*pubs.values(), tf_pub]):
        time.sleep(0.01)
    q = matrix_to_quaternion(frame.pose[:3, :3])
    t = frame.pose[:3, 3]
    cam = frame.camera
    k = cam.K.reshape(9).tolist()
    info = CameraInfo(width=cam.width, height=cam.height, k=k, d=[0.0] * 5, distortion_model="plumb_bob")
    depth_mm, labels_u16 = depth_to_u16_mm(frame.depth), labels_to_u16(frame.labels)
    latencies = []
    for i in tqdm(range(repeats), desc="latency"):
        stamp = (1000 + i) * 10**9
        info.header = header(stamp, "cam")
        tf_pub.publish(TFMessage(transforms=[TransformStamped(
            header=header(stamp, "map"), child_frame_id="cam",
            transform=Transform(translation=Vector3(x=t[0], y=t[1], z=t[2]),
                                rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))]))
        pubs["info"].publish(info)
        start = time.perf_counter()
        pubs["color"].publish(image_msg(frame.color, "rgb8", stamp, "cam"))
        pubs["labels"].publish(image_msg(labels_u16, "16UC1", stamp, "cam"))
        pubs["depth"].publish(image_msg(depth_mm, "16UC1", stamp, "cam"))
        while not any(n >= i + 1 for _, n in statuses[-3:]):
            time.sleep(0.0005)
        done = next(when for when, n in statuses if n >= i + 1)
        latencies.append((done - start) * 1e3)
    graph.shutdown()
    rclpy.try_shutdown()
    lat = np.asarray(latencies[2:])
    return (f"| publish -> voxels in map (640x480, colour + labels) | {len(lat)} | {np.percentile(lat, 50):.1f} | "
            f"{np.percentile(lat, 95):.1f} | {lat.max():.1f} |")


def synthetic_map(num_voxels: int) -> VoxelMap:
    """A label-only map of ``num_voxels`` 5 cm voxels on a grid, 20 ScanNet labels in slabs."""
    side = int(round(num_voxels ** (1 / 3)))
    side_z = int(np.ceil(num_voxels / side / side))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), np.arange(side_z), indexing="ij"), -1)
    keys = grid.reshape(-1, 3)[:num_voxels]
    points = ((keys + 0.5) * 0.05).astype(np.float32)
    labels = (keys[:, 0] * len(SCANNET20) // side).astype(np.int32)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=0.05, num_labels=len(SCANNET20), max_voxels=10_000_000),
                         label_names=list(SCANNET20))
    colors = np.full((len(points), 3), 128, np.uint8)
    for start in range(0, len(points), 500_000):
        sl = slice(start, start + 500_000)
        voxel_map.integrate(points[sl], colors=colors[sl], labels=labels[sl])
    return voxel_map


def bench_queries(sizes: list[int], repeats: int, tmp: Path) -> tuple[list[str], list[str]]:
    query_rows, memory_rows = [], []
    for size in sizes:
        voxel_map = synthetic_map(size)
        path = tmp / f"map_{size}.safetensors"
        voxel_map.save(path)
        memory_rows.append(f"| geometry + colour + 20 labels | {len(voxel_map):,} | "
                           f"{voxel_map.memory_bytes() / len(voxel_map):.0f} |")
        start = time.perf_counter()
        positions, colors = voxel_map.positions(), voxel_map.colors()
        labels, scores = voxel_map.labels()
        pointcloud2_msg(semantic_cloud_points(positions, colors, labels, scores), 0, "map")
        cloud_ms = (time.perf_counter() - start) * 1e3

        rclpy.init()
        graph = NodeGraph(params={**QUIET, "label_names": list(SCANNET20), "text_encoder": "minilm",
                                  "initial_map": str(path), "max_voxels": 10_000_000}).start()
        graph.mapper.text_encoder(timeout_s=300.0)
        with QueryClient() as client:
            client.wait_for_service(30.0)
            client.call("couch", threshold=0.7)  # first call fills the text-embedding cache
            times, hits = [], 0
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.call("couch", threshold=0.7)
                times.append((time.perf_counter() - start) * 1e3)
                hits = response.cloud.width
        server = graph.mapper.timings.summary()["query"]
        graph.shutdown()
        rclpy.try_shutdown()
        t = np.asarray(times)
        query_rows.append(f"| {size:,} | {hits:,} | {np.percentile(t, 50):.1f} | {np.percentile(t, 95):.1f} | "
                          f"{server['p50_ms']:.1f} | {server['p95_ms']:.1f} | {cloud_ms:.0f} |")
    features = VoxelMap(VoxelMapConfig(voxel_size=0.05, num_labels=20, feature_dim=384, max_voxels=200_000))
    pts = np.random.default_rng(0).uniform(0, 5, (100_000, 3)).astype(np.float32)
    features.integrate(pts, labels=np.zeros(len(pts), np.int32),
                       features=np.random.default_rng(1).normal(size=(len(pts), 384)).astype(np.float32))
    memory_rows.append(f"| + 384-d float16 features | {len(features):,} | "
                       f"{features.memory_bytes() / len(features):.0f} |")
    return query_rows, memory_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames in the looped sample bag")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 1M-voxel map")
    args = parser.parse_args()
    try:
        scene = open_redwood(find_living_room())
    except FileNotFoundError as exc:
        print(f"bench_runtime: {exc}", file=sys.stderr)
        return 1
    frames = labelled_frames([f for f in scene.frames if f.pose is not None])
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        replay_rows = bench_replay(frames, args.frames, Path(tmp))
        latency_row = bench_latency(frames[0], 12 if args.quick else 40)
        query_rows, memory_rows = bench_queries(sizes, 10 if args.quick else 30, Path(tmp))
    print(f"\n## Runtime ({os.cpu_count()} CPU cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')})\n")
    print("Sustained integration, living-room sample looped, 640x480, 5 cm voxels, colour + 20 labels "
          "(target >= 30/s)\n")
    print("| replay mode | frames published | integrated | dropped | wall s | integrated frames/s | model passes |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(replay_rows))
    print("\n| latency | frames | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    print(latency_row)
    print("\n/query through DDS, 'couch' vs label names (MiniLM, cached), threshold 0.7 (target p95 < 100 ms at 1M)\n")
    print("| voxels | hit voxels | client p50 ms | client p95 ms | server p50 ms | server p95 ms "
          "| semantic cloud build ms |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(query_rows))
    print("\n| map | voxels | bytes per voxel |\n|---|---|---|")
    print("\n".join(memory_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
