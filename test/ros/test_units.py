"""The ROS layer's building blocks on their own: stamp matching, the TF-gated queue, message builders, timings."""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import Point, Vector3
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import Marker

from ov3dseg_core.msgs.image import image_to_numpy
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array, unpack_rgb
from ov3dseg_ros.conversions import (color_to_rgb, hit_markers, image_msg, ns_to_stamp, pointcloud2_msg,
                                     semantic_cloud_points, stamp_to_ns, transform_from_msg)
from ov3dseg_ros.frame_queue import FrameQueue, PendingFrame
from ov3dseg_ros.msg import ObjectHit
from ov3dseg_ros.stamp_sync import StampSynchronizer
from ov3dseg_ros.timing import StageTimings, format_timings
from ros_rig import tf_message

MS = 1_000_000


def frame(stamp_ns: int, arrival_ns: int = 0) -> PendingFrame:
    return PendingFrame("rgbd", "/camera", "cam", stamp_ns, arrival_ns)


def test_synchronizer_matches_the_closest_stamps_within_tolerance_and_discards_older():
    sync = StampSynchronizer(("color", "depth"), tolerance_ns=10 * MS, depth=3)
    assert sync.add("color", 100 * MS, "c100") is None
    assert sync.add("color", 133 * MS, "c133") is None
    assert sync.add("depth", 150 * MS, "d150") is None  # 17 ms from c133: outside the tolerance
    assert sync.add("color", 166 * MS, "c166") is None
    stamp, matched = sync.add("depth", 137 * MS, "d137")  # 4 ms from c133, the closest colour
    assert (stamp, matched) == (137 * MS, {"depth": "d137", "color": "c133"})
    assert sync.discarded == 2  # c100 (older than the match) and d150 (filed before d137)
    assert sync.add("depth", 170 * MS, "d170") == (170 * MS, {"depth": "d170", "color": "c166"})
    for i in range(5):  # unmatched colour beyond the depth bound is discarded, oldest first
        sync.add("color", (300 + i) * MS, f"c{i}")
    assert sync.discarded == 4 and sync.add("depth", 304 * MS, "d") == (304 * MS, {"depth": "d", "color": "c4"})
    assert sync.discarded == 6


def test_frame_queue_drops_the_oldest_and_pops_the_oldest_ready_frame():
    queue = FrameQueue(maxsize=2, timeout_ns=100)
    assert queue.push(frame(1)) == [] and queue.push(frame(2)) == []
    dropped = queue.push(frame(3))
    assert [f.stamp_ns for f in dropped] == [1] and len(queue) == 2
    ready, expired = queue.pop_ready(now_ns=50, is_ready=lambda f: f.stamp_ns == 3)
    assert ready.stamp_ns == 3 and expired == [] and len(queue) == 1
    ready, expired = queue.pop_ready(now_ns=99, is_ready=lambda f: False)
    assert ready is None and expired == []
    ready, expired = queue.pop_ready(now_ns=100, is_ready=lambda f: False)
    assert ready is None and [f.stamp_ns for f in expired] == [2] and len(queue) == 0
    queue.push(frame(4))
    assert [f.stamp_ns for f in queue.remove(lambda f: True)] == [4] and len(queue) == 0


def test_frame_queue_wait_returns_on_change_or_timeout():
    queue = FrameQueue(maxsize=1, timeout_ns=1)
    version = queue.wait(0, timeout_s=0.01)  # nothing happened: same version after the timeout
    assert version == 0
    queue.notify()
    assert queue.wait(version, timeout_s=10.0) == 1


def test_stamps_round_trip_and_reject_negative_times():
    assert stamp_to_ns(ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    stamp = ns_to_stamp(0)
    stamp.sec = -1
    with pytest.raises(ValueError, match="negative"):
        stamp_to_ns(stamp)


def test_image_msg_survives_rclpy_serialisation():
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    msg = deserialize_message(serialize_message(image_msg(pixels, "rgb8", 42, "cam")), Image)
    assert (msg.width, msg.height, msg.step, msg.header.frame_id) == (7, 5, 21, "cam")
    assert np.array_equal(image_to_numpy(msg), pixels)


@pytest.mark.parametrize("encoding, channels, to_rgb", [
    ("bgr8", 3, lambda p: p[:, :, ::-1]), ("rgba8", 4, lambda p: p[:, :, :3]),
    ("bgra8", 4, lambda p: p[:, :, [2, 1, 0]]), ("mono8", 1, lambda p: np.repeat(p[:, :, None], 3, axis=2)),
])
def test_color_to_rgb_reorders_channels(encoding, channels, to_rgb):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 6, channels) if channels > 1 else (4, 6), dtype=np.uint8)
    assert np.array_equal(color_to_rgb(image_msg(pixels, encoding, 0, "cam")), to_rgb(pixels))
    with pytest.raises(ValueError, match="32FC1"):
        color_to_rgb(image_msg(np.zeros((2, 2), np.float32), "32FC1", 0, "cam"))


def test_semantic_cloud_matches_rosbags_decoding_of_the_same_bytes():
    positions = np.array([[0.0, 1.0, 2.0], [-1.5, 0.25, 3.0]], np.float32)
    colors = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    msg = pointcloud2_msg(semantic_cloud_points(positions, colors, np.array([3, -1]), np.array([0.5, 0.0]),
                                                np.array([-1, 12])), 7 * 10**9, "map")
    raw = serialize_message(msg)
    ours = pointcloud2_to_array(deserialize_message(raw, PointCloud2))
    typestore = get_typestore(Stores.ROS2_KILTED)
    theirs = typestore.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
    assert [f.name for f in theirs.fields] == ["x", "y", "z", "rgb", "label", "score", "instance"]
    assert theirs.point_step == 28 and theirs.width == 2 and theirs.header.stamp.sec == 7
    assert np.array_equal(pointcloud2_to_array(theirs), ours)
    assert np.array_equal(np.stack([ours["x"], ours["y"], ours["z"]], 1), positions)
    assert np.array_equal(unpack_rgb(ours["rgb"]), colors) and list(ours["label"]) == [3, -1]
    assert list(ours["instance"]) == [-1, 12]
    assert list(semantic_cloud_points(positions, colors, np.array([3, -1]), np.array([0.5, 0.0]))["instance"]) \
        == [-1, -1]  # no instance layer: -1


def test_transform_from_msg_hand_computed():
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about z
    T[:3, 3] = [1.0, 2.0, 3.0]
    msg = tf_message(5, T, "/map", "base_link").transforms[0]
    parent, child, stamp, got = transform_from_msg(msg)
    assert (parent, child, stamp) == ("map", "base_link", 5)  # tf2 frame ids carry no leading slash
    np.testing.assert_allclose(got, T, atol=1e-12)
    msg.transform.rotation.w = float("nan")
    with pytest.raises(ValueError, match="quaternion"):
        transform_from_msg(msg)


def test_hit_markers_clear_then_draw_a_box_and_a_label_per_hit():
    hits = [ObjectHit(label="sofa", score=0.9, confidence=0.75, center=Point(x=1.0, y=2.2, z=0.3),
                      box_center=Point(x=1.0, y=2.0, z=0.5), size=Vector3(x=0.5, y=1.0, z=0.2))]
    markers = hit_markers(hits, 10, "map").markers
    assert [m.action for m in markers] == [Marker.DELETEALL, Marker.ADD, Marker.ADD]
    box, text = markers[1:]
    assert box.type == Marker.CUBE and (box.scale.x, box.scale.y, box.scale.z) == (0.5, 1.0, 0.2)
    assert (box.pose.position.y, box.pose.position.z) == (2.0, 0.5)  # the box, not the point on the object
    assert (box.color.r, box.color.g) == pytest.approx((0.25, 0.75))  # green with confidence
    assert text.type == Marker.TEXT_VIEW_FACING and text.text == "sofa 0.75"
    assert text.pose.position.z == pytest.approx(0.5 + 0.1 + 0.1)


def test_stage_timings_summarise_exactly():
    timings = StageTimings(window=3)
    for seconds in (0.001, 0.002, 0.003, 0.010):
        timings.add("integrate", seconds)
    s = timings.summary()["integrate"]
    assert s["count"] == 4 and s["total_s"] == pytest.approx(0.016)
    assert s["mean_ms"] == pytest.approx(4.0) and s["max_ms"] == pytest.approx(10.0)  # max over the last 3
    assert s["p50_ms"] == pytest.approx(3.0)
    table = format_timings(timings.summary(), wall_s=2.0)
    assert "integrate" in table and table.splitlines()[-1].split()[-1] == "2.0"  # 4 calls / 2 s


class SlowSegmenter:
    """A model stage stand-in: each update takes ``seconds`` and records the window centre; 'fail' raises."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.centers: list[tuple[float, ...]] = []

    def offer_frame(self, frame) -> bool:
        return False

    def update(self, voxel_map, center, radius):
        import time
        from ov3dseg_core.models.semantic_stage import StageResult
        time.sleep(self.seconds)
        if center[0] < 0:
            raise RuntimeError("model failed")
        self.centers.append(tuple(center))
        return StageResult(num_voxels=7, seconds=self.seconds, passes={"2d": 0, "3d": 1})


def posed_frame(x: float, stamp_ns: int):
    from ov3dseg_core.data.frames import RGBDFrame
    from ov3dseg_core.geometry.camera import PinholeCamera
    pose = np.eye(4)
    pose[0, 3] = x
    return RGBDFrame(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32), PinholeCamera(2, 2, 1, 1, 1, 1),
                     pose, stamp_ns)


def test_the_model_stage_runs_off_the_geometry_path_and_the_newest_window_wins():
    import time
    from ov3dseg_ros.semantic_stage import SemanticStage
    errors = []
    segmenter = SlowSegmenter(0.3)
    stage = SemanticStage(segmenter, rate_hz=0.0, radius=2.0, on_error=errors.append)
    try:
        start = time.perf_counter()
        for i in range(6):
            stage(posed_frame(float(i), i), None)
        assert time.perf_counter() - start < 0.25  # six hand-offs, not six 0.3 s passes
        assert stage.wait_idle(10.0)
        assert segmenter.centers[-1][0] == 5.0 and stage.passes == len(segmenter.centers) < 6
        assert stage.superseded == 6 - stage.passes and stage.voxels == 7 * stage.passes
        assert stage.branch_passes == {"2d": 0, "3d": stage.passes}
        stage(posed_frame(-1.0, 10), None)  # a failing pass is reported, the stage goes on
        assert stage.wait_idle(10.0) and len(errors) == 1
        stage.synchronous = True  # a deterministic replay: each pass in the caller
        stage(posed_frame(9.0, 11), None)
        assert segmenter.centers[-1][0] == 9.0
    finally:
        stage.close()
