"""Bad and awkward input through real DDS: late/missing TF, time jumps, missing camera_info, corrupt messages,
NaN depth and floods. The node must count what it drops and keep mapping."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image, PointCloud2

from ov3dseg_core.geometry.camera import backproject_depth
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_ros.conversions import header, image_msg, pointcloud2_msg
from ros_rig import CAMERA, T_MAP_CAMERA, camera_info_msg, start_graph, wait_until, wall_images

S = 1_000_000_000
T0 = 50 * S


@pytest.fixture
def graph_rig(ros_context, request):
    params = getattr(request, "param", {})
    graph, rig = start_graph(ros_context, params)
    rig.wait_connected()
    yield graph, rig
    graph.shutdown()


def params(**values):
    return pytest.mark.parametrize("graph_rig", [values], indirect=True)


def voxel_xs(graph) -> set[float]:
    """Distinct wall planes (map x, rounded to mm) in the map."""
    return set(np.round(graph.mapper.voxel_map.positions()[:, 0].astype(np.float64), 3).tolist())


@params(tf_timeout_s=30.0)
def test_frame_waits_for_late_tf_then_integrates(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    rig.publish_frame(T0, color, depth)
    rig.wait_status(lambda s: s.frames_received == 1 and s.queue_depth == 1, what="the frame waiting for TF")
    assert len(graph.mapper.voxel_map) == 0
    rig.publish_tf(T0)
    status = rig.wait_status(lambda s: s.frames_integrated == 1, what="integration after TF arrived")
    assert status.frames_dropped == 0 and status.queue_depth == 0 and status.num_voxels > 0


@params(tf_timeout_s=0.2)
def test_frames_without_tf_are_dropped_counted_and_the_node_goes_on(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    for i in range(3):
        rig.publish_frame(T0 + i * S // 10, color, depth)
    rig.wait_status(lambda s: s.frames_dropped == 3, what="three TF timeouts")
    assert graph.mapper.counters["dropped_tf_timeout"] == 3
    rig.publish_tf(T0 + S)
    rig.publish_frame(T0 + S, color, depth)
    status = rig.wait_status(lambda s: s.frames_integrated == 1, what="a later frame with TF")
    assert status.frames_dropped == 3


@params(tf_timeout_s=30.0)
def test_time_jump_backwards_clears_tf_and_stale_frames(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    rig.publish_tf(100 * S)
    rig.publish_frame(100 * S, color, depth)
    rig.wait_status(lambda s: s.frames_integrated == 1)
    rig.publish_frame(200 * S, color, depth)  # waits for a transform at 200 s that never comes
    rig.wait_status(lambda s: s.queue_depth == 1)
    rig.publish_tf(5 * S)  # the bag loops: without clearing, 5 s would fall outside the 10 s TF history
    wait_until(lambda: graph.mapper.tf_listener.time_jumps == 1, what="the time jump")
    rig.publish_frame(5 * S, color, depth)
    # the stale frame's drop and the next frame's integration may be counted in either order
    rig.wait_status(lambda s: s.frames_integrated == 2 and s.frames_dropped == 1,
                    what="the frame after the jump, and the stale frame dropped")
    assert graph.mapper.counters["dropped_time_jump"] == 1


@params(tf_timeout_s=0.2)
def test_missing_and_invalid_camera_info_drop_frames_until_a_good_one(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    rig.publish_tf(T0)
    rig.publish_frame(T0, color, depth, info=False)
    rig.wait_status(lambda s: s.frames_dropped == 1, what="a drop for the missing camera_info")
    uncalibrated = camera_info_msg(T0)
    uncalibrated.k = [0.0] * 9
    rig.info_pub.publish(uncalibrated)
    rig.publish_frame(T0, color, depth, info=False)
    rig.wait_status(lambda s: s.frames_dropped == 2, what="a drop for the uncalibrated camera_info")
    assert graph.mapper.counters["dropped_no_camera_info"] == 2
    rig.publish_frame(T0, color, depth)
    rig.wait_status(lambda s: s.frames_integrated == 1, what="integration with a good camera_info")


def test_mismatched_sizes_and_corrupt_images_are_dropped(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    rig.publish_static_tf()
    rig.publish_frame(T0, color[::2, ::2].copy(), depth)  # colour 32x24, depth 64x48
    rig.wait_status(lambda s: s.frames_dropped == 1)
    rig.info_pub.publish(camera_info_msg(T0 + 1))
    rig.color_pub.publish(image_msg(color, "rgb8", T0 + 1, "camera_color_optical_frame"))
    short = image_msg(np.zeros((48, 64), np.uint16), "16UC1", T0 + 1, "camera_color_optical_frame")
    short.data = short.data[:-10]  # truncated payload
    rig.depth_pub.publish(short)
    rig.wait_status(lambda s: s.frames_dropped == 2)
    weird = Image(header=header(T0 + 2, "camera_color_optical_frame"), height=48, width=64, encoding="yuv422",
                  step=128, data=bytes(48 * 128))
    rig.color_pub.publish(weird)
    rig.publish_frame(T0 + 2, None, depth)
    rig.wait_status(lambda s: s.frames_dropped == 3)
    assert graph.mapper.counters["dropped_bad_input"] == 3 and len(graph.mapper.voxel_map) == 0
    rig.publish_frame(T0, color, depth)
    rig.wait_status(lambda s: s.frames_integrated == 1, what="a good frame after the bad ones")


def test_nan_and_inf_depth_pixels_are_ignored(graph_rig):
    graph, rig = graph_rig
    color, depth, _ = wall_images()
    depth[:, :20] = np.nan
    depth[:5] = np.inf
    rig.publish_tf(T0)
    rig.publish_frame(T0, color, depth, depth_encoding="32FC1")
    rig.wait_status(lambda s: s.frames_integrated == 1)
    positions = graph.mapper.voxel_map.positions()
    assert np.isfinite(positions).all()
    valid = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
    expected = transform_points(T_MAP_CAMERA, backproject_depth(CAMERA, valid)[0])
    keys = {tuple(k) for k in np.floor(expected / 0.05).astype(int)}
    assert {tuple(k) for k in graph.mapper.voxel_map.keys()} == keys


@params(lidar_topics=["/lidar/points"])
def test_corrupt_clouds_are_dropped_and_nan_points_skipped(graph_rig):
    graph, rig = graph_rig
    rig.wait_connected(rig.cloud_in_pub)
    rig.publish_tf(T0, np.eye(4), "map", "lidar")
    points = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    points["x"] = [1.0, 2.0, np.nan, 3.0]
    good = pointcloud2_msg(points, T0, "lidar")
    truncated = pointcloud2_msg(points, T0, "lidar")
    truncated.data = truncated.data[:-4]
    no_x = pointcloud2_msg(points[["y", "z"]].copy(), T0, "lidar")
    rig.cloud_in_pub.publish(truncated)
    rig.cloud_in_pub.publish(no_x)
    rig.wait_status(lambda s: s.frames_dropped == 2, what="two corrupt clouds dropped")
    rig.cloud_in_pub.publish(good)
    rig.wait_status(lambda s: s.frames_integrated == 1, what="the good cloud")
    np.testing.assert_allclose(np.sort(graph.mapper.voxel_map.positions()[:, 0]), [1.0, 2.0, 3.0])
    assert isinstance(good, PointCloud2)


@params(queue_size=3, tf_timeout_s=30.0, qos_image_depth=10, qos_camera_info_depth=10)
def test_flood_keeps_queues_bounded_and_the_newest_frames_win(graph_rig):
    graph, rig = graph_rig
    color, _, _ = wall_images()
    # 8 frames in a burst (within the subscriptions' depth of 10), none of which can integrate yet (no TF).
    stamps = [T0 + i * S // 30 for i in range(8)]
    depths = [1.0 + 0.1 * i for i in range(8)]
    for stamp, d in zip(stamps, depths):
        rig.publish_frame(stamp, color, wall_images(d)[1])
    status = rig.wait_status(lambda s: s.frames_received == 8 and s.frames_dropped == 5, what="5 overflows")
    assert status.queue_depth == 3 and graph.mapper.counters["dropped_overflow"] == 5
    for stamp in stamps:
        rig.publish_tf(stamp)
    status = rig.wait_status(lambda s: s.frames_integrated == 3, what="the three newest frames")
    assert status.header.stamp.sec * S + status.header.stamp.nanosec == stamps[-1]
    assert voxel_xs(graph) == {round(1.0 + d, 3) for d in depths[-3:]}  # planes x = 1 + depth of the last 3
    # Unmatched images (colour without depth) are bounded too (2 x queue_size per stream), and counted.
    for i in range(9):
        rig.color_pub.publish(image_msg(color, "rgb8", T0 + 10 * S + i * S, "camera_color_optical_frame"))
    wait_until(lambda: rig.diagnostics is not None and int(
        {kv.key: kv.value for kv in rig.diagnostics.status[0].values}["unmatched images"]) >= 3,
        what="unmatched images counted")
    assert max(len(q) for sync in graph.mapper._syncs.values() for q in sync._pending.values()) <= 6
