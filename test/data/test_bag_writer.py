"""SensorBagWriter / write_scene_bag: written with rosbags, read back with rosbags AnyReader and rclpy."""
import json

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability

from ov3dseg_core.data import RGBDFrame, Scene
from ov3dseg_core.data.bag_writer import (CAMERA_OPTICAL_FRAME, GT_POINTS_TOPIC, MIN_START_NS, T_LINK_OPTICAL,
                                          SensorBagWriter, write_scene_bag)
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.geometry.tf_buffer import TfBuffer
from ov3dseg_core.geometry.transforms import make_transform, quaternion_to_matrix
from ov3dseg_core.msgs.image import image_to_numpy
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array, unpack_rgb

CAM = PinholeCamera(width=8, height=6, fx=10.0, fy=11.0, cx=3.5, cy=2.5, distortion=(0.1, -0.2, 0.0, 0.0, 0.01))
RNG = np.random.default_rng(3)


def _read_all(path):
    with AnyReader([path]) as reader:
        out = {}
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype), raw, conn))
        return out


def _stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rgbd_messages_round_trip(tmp_path, storage):
    depth = RNG.uniform(0.3, 5.0, (6, 8)).astype(np.float32)
    depth[2, 3] = 0.0
    color = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    labels = RNG.integers(-1, 40, (6, 8)).astype(np.int32)
    stamp = 1_700_000_000_123_456_789
    with SensorBagWriter(tmp_path / "b", storage=storage) as bag:
        bag.write_rgbd(stamp, "cam_optical", CAM, depth, color=color, labels=labels, gt_labels=labels,
                       gt_instances=labels + 1)
        bag.write_string("/note", stamp + 1, "héllo")
    msgs = _read_all(tmp_path / "b")
    assert set(msgs) == {"/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info",
                         "/camera/depth/camera_info", "/camera/semantic/image_raw", "/ground_truth/semantic/image_raw",
                         "/ground_truth/instance/image_raw", "/note"}
    t, img, _, _ = msgs["/camera/color/image_raw"][0]
    assert t == stamp and _stamp(img) == stamp and img.header.frame_id == "cam_optical" and img.encoding == "rgb8"
    np.testing.assert_array_equal(image_to_numpy(img), color)
    d = msgs["/camera/depth/image_raw"][0][1]
    assert d.encoding == "16UC1"
    np.testing.assert_array_equal(image_to_numpy(d), np.rint(depth * 1000).astype(np.uint16))
    sem = image_to_numpy(msgs["/camera/semantic/image_raw"][0][1])
    assert sem[labels == -1].tolist() == [65535] * int((labels == -1).sum())
    np.testing.assert_array_equal(sem[labels >= 0], labels[labels >= 0])
    inst = image_to_numpy(msgs["/ground_truth/instance/image_raw"][0][1])
    np.testing.assert_array_equal(inst, (labels + 1).astype(np.uint16))
    info = msgs["/camera/color/camera_info"][0][1]
    assert PinholeCamera.from_camera_info(info) == CAM and info.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(np.asarray(info.p).reshape(3, 4)[:, :3], CAM.K)
    assert msgs["/note"][0][1].data == "héllo"


def test_rclpy_deserializes_the_bytes(tmp_path):
    rclpy_serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    tf2_msgs = pytest.importorskip("tf2_msgs.msg")
    color = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    T = make_transform([1.0, -2.0, 0.5], [0.0, 0.0, np.sin(0.3), np.cos(0.3)])
    with SensorBagWriter(tmp_path / "b") as bag:
        bag.write_rgbd(2_000_000_005, "cam", CAM, np.ones((6, 8), np.float32), color=color)
        bag.write_transforms(2_000_000_005, [("odom", "base_link", T)])
    msgs = _read_all(tmp_path / "b")
    raw = msgs["/camera/color/image_raw"][0][2]
    img = rclpy_serialization.deserialize_message(bytes(raw), sensor_msgs.Image)
    assert (img.header.stamp.sec, img.header.stamp.nanosec) == (2, 5) and img.header.frame_id == "cam"
    np.testing.assert_array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(6, 8, 3), color)
    info = rclpy_serialization.deserialize_message(bytes(msgs["/camera/color/camera_info"][0][2]),
                                                   sensor_msgs.CameraInfo)
    assert PinholeCamera.from_camera_info(info) == CAM
    tf = rclpy_serialization.deserialize_message(bytes(msgs["/tf"][0][2]), tf2_msgs.TFMessage)
    (ts,) = tf.transforms
    assert ts.header.frame_id == "odom" and ts.child_frame_id == "base_link"
    r = ts.transform.rotation
    np.testing.assert_allclose(quaternion_to_matrix([r.x, r.y, r.z, r.w]), T[:3, :3], atol=1e-12)
    assert (ts.transform.translation.x, ts.transform.translation.y) == (1.0, -2.0)


def test_static_transforms_accumulate_and_are_latched(tmp_path):
    with SensorBagWriter(tmp_path / "b") as bag:
        bag.write_static_transforms(MIN_START_NS, [("map", "odom", np.eye(4))])
        bag.write_static_transforms(MIN_START_NS + 10, [("base_link", "cam", T_LINK_OPTICAL)])
        bag.write_label_names(["wall", "floor"])
    msgs = _read_all(tmp_path / "b")
    statics = msgs["/tf_static"]
    assert [len(m.transforms) for _, m, _, _ in statics] == [1, 2]
    assert {t.child_frame_id for t in statics[-1][1].transforms} == {"odom", "cam"}
    qos = statics[0][3].ext.offered_qos_profiles
    assert qos and qos[0].durability == QosDurability.TRANSIENT_LOCAL and qos[0].depth == 1
    names_t, names, _, names_conn = msgs["/ground_truth/label_names"][0]
    assert json.loads(names.data) == ["wall", "floor"] and names_t == MIN_START_NS  # earliest record time
    assert names_conn.ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL


def test_writer_refuses_bad_input(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        SensorBagWriter(tmp_path / "exists")
    with pytest.raises(ValueError, match="storage"):
        SensorBagWriter(tmp_path / "x", storage="rosbag1")
    with SensorBagWriter(tmp_path / "b") as bag:
        with pytest.raises(ValueError, match="depth is"):
            bag.write_rgbd(MIN_START_NS, "c", CAM, np.zeros((5, 8), np.float32))
        bag.write_string("/t", MIN_START_NS, "x")
        with pytest.raises(ValueError, match="already carries"):
            bag.write_message("/t", "tf2_msgs/msg/TFMessage", MIN_START_NS, None)


def _posed_scene(n=4):
    frames = []
    for i in range(n):
        pose = make_transform([0.1 * i, 0.0, 1.0], [0.0, np.sin(0.05 * i), 0.0, np.cos(0.05 * i)])
        frames.append(RGBDFrame(color=np.full((6, 8, 3), i, np.uint8), depth=np.full((6, 8), 1.0 + i, np.float32),
                                camera=CAM, pose=None if i == 2 else pose, stamp_ns=i * 100_000_000,
                                labels=np.full((6, 8), i, np.int32)))
    points = RNG.normal(size=(10, 3)).astype(np.float32)
    return Scene("s", frames, ["a", "b", "c", "d"], points=points,
                 colors=RNG.integers(0, 256, (10, 3), dtype=np.uint8), labels=np.arange(10, dtype=np.int32) % 4)


def test_scene_bag_tf_tree_reproduces_camera_poses(tmp_path):
    scene = _posed_scene()
    summary = write_scene_bag(scene, tmp_path / "scene", progress=False)
    assert summary["frames"] == 3 and summary["skipped_no_pose"] == 1
    msgs = _read_all(tmp_path / "scene")
    buffer = TfBuffer(cache_time_s=100.0)
    for topic, static in (("/tf_static", True), ("/tf", False)):
        for _, m, _, _ in msgs[topic]:
            for ts in m.transforms:
                q, p = ts.transform.rotation, ts.transform.translation
                buffer.set_transform(ts.header.frame_id, ts.child_frame_id, _stamp(ts),
                                     make_transform([p.x, p.y, p.z], [q.x, q.y, q.z, q.w]), static=static)
    color_msgs = msgs["/camera/color/image_raw"]
    assert [t for t, *_ in color_msgs] == [MIN_START_NS + i * 100_000_000 for i in (0, 1, 3)]  # shifted source time
    for (t, img, _, _), i in zip(color_msgs, (0, 1, 3)):
        assert img.header.frame_id == CAMERA_OPTICAL_FRAME
        np.testing.assert_allclose(buffer.lookup("map", CAMERA_OPTICAL_FRAME, t), scene.frames[i].pose, atol=1e-9)
    gt = [image_to_numpy(m)[0, 0] for _, m, _, _ in msgs["/ground_truth/semantic/image_raw"]]
    assert gt == [0, 1, 3]
    cloud_t, cloud, _, conn = msgs[GT_POINTS_TOPIC][0]
    arr = pointcloud2_to_array(cloud)
    assert cloud.header.frame_id == "map" and cloud_t == MIN_START_NS
    np.testing.assert_array_equal(np.stack([arr["x"], arr["y"], arr["z"]], 1), scene.points)
    np.testing.assert_array_equal(unpack_rgb(arr["rgb"]), scene.colors)
    np.testing.assert_array_equal(arr["label"], scene.labels)
    assert json.loads(msgs["/ground_truth/label_names"][0][1].data) == ["a", "b", "c", "d"]


def test_scene_bag_rate_stride_and_max_frames(tmp_path):
    scene = _posed_scene(n=7)
    write_scene_bag(scene, tmp_path / "b", rate_hz=10.0, stride=2, max_frames=3, progress=False)
    depth = _read_all(tmp_path / "b")["/camera/depth/image_raw"]
    # frames 0, 2, 4 chosen; frame 2 has no pose, so 0 and 4 are written, at the 10 Hz slots of index 0 and 2
    assert [t for t, *_ in depth] == [MIN_START_NS, MIN_START_NS + 200_000_000]
    assert [image_to_numpy(m)[0, 0] for _, m, _, _ in depth] == [1000, 5000]
    with pytest.raises(ValueError, match="does not increase"):
        scene.frames[1].stamp_ns = 0
        write_scene_bag(Scene("s", scene.frames[:2], []), tmp_path / "c", progress=False)
