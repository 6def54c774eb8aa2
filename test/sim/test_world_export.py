"""Whole scenes: determinism by seed, the bag (topics, TF tree, ground truth), the dataset folder, ``ov3dseg sim``."""
import argparse
import json

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from sim_scenes import small_config
from ov3dseg_core.commands import sim as sim_command
from ov3dseg_core.config import from_dict
from ov3dseg_core.data.bag_writer import CAMERA_OPTICAL_FRAME, GT_POINTS_TOPIC, MAP_FRAME
from ov3dseg_core.data.readers import open_scene
from ov3dseg_core.geometry.camera import project_points
from ov3dseg_core.geometry.tf_buffer import TfBuffer
from ov3dseg_core.geometry.transforms import invert_transform, make_transform, transform_points
from ov3dseg_core.labels import IGNORE_LABEL, SCANNET20
from ov3dseg_core.msgs.image import image_to_numpy
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array, unpack_rgb
from ov3dseg_core.sim.export import LIDAR_FRAME, LIDAR_TOPIC, write_bag, write_dataset
from ov3dseg_core.sim.world import SimConfig, generate_scene


def _messages(path):
    with AnyReader([path]) as reader:
        return [(conn.topic, t, bytes(raw), reader.deserialize(raw, conn.msgtype))
                for conn, t, raw in reader.messages()]


@pytest.fixture(scope="module")
def bag_scene(tmp_path_factory):
    scene = generate_scene(3, "bedroom", config=small_config())
    path = write_bag(scene, tmp_path_factory.mktemp("bag") / "scene.mcap")
    return scene, _messages(path)


def test_same_seed_same_bag_contents(bag_scene, tmp_path):
    scene, messages = bag_scene
    again = _messages(write_bag(generate_scene(3, "bedroom", config=small_config()), tmp_path / "again.mcap"))
    assert [(topic, t, raw) for topic, t, raw, _ in messages] == [(topic, t, raw) for topic, t, raw, _ in again]
    other = generate_scene(4, "bedroom", config=small_config())
    assert not np.array_equal(other.frames[0].depth, scene.frames[0].depth)


def test_frame_count_and_sensors_do_not_change_the_room():
    a = generate_scene(8, config=small_config(frames=2))
    b = generate_scene(8, config=small_config(frames=3, use_lidar=False))
    np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
    np.testing.assert_array_equal(a.points, b.points)
    assert len(b.lidar) == 0 and len(a.lidar) == 2


def test_bag_topics_and_images(bag_scene):
    scene, messages = bag_scene
    topics = {topic for topic, *_ in messages}
    assert {"/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info", "/tf", "/tf_static",
            "/ground_truth/semantic/image_raw", "/ground_truth/instance/image_raw", GT_POINTS_TOPIC,
            "/ground_truth/label_names", LIDAR_TOPIC} <= topics
    semantic = [msg for topic, _, _, msg in messages if topic == "/ground_truth/semantic/image_raw"]
    assert len(semantic) == len(scene.frames)
    for frame, msg in zip(scene.frames, semantic):
        labels = image_to_numpy(msg).astype(np.int32)
        labels[labels == 65535] = IGNORE_LABEL
        np.testing.assert_array_equal(labels, frame.labels)
        assert msg.header.frame_id == CAMERA_OPTICAL_FRAME
        assert msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec == frame.stamp_ns
    depth = [msg for topic, _, _, msg in messages if topic == "/camera/depth/image_raw"][0]
    np.testing.assert_allclose(image_to_numpy(depth) / 1000.0, scene.frames[0].depth, atol=5e-4)
    names = [msg for topic, _, _, msg in messages if topic == "/ground_truth/label_names"]
    assert json.loads(names[0].data) == SCANNET20


def test_tf_tree_reproduces_the_camera_poses(bag_scene):
    scene, messages = bag_scene
    tf = TfBuffer(cache_time_s=3600.0)
    for topic, _, _, msg in messages:
        if topic in ("/tf", "/tf_static"):
            for t in msg.transforms:
                q = t.transform.rotation
                T = make_transform([t.transform.translation.x, t.transform.translation.y, t.transform.translation.z],
                                   [q.x, q.y, q.z, q.w])
                stamp = t.header.stamp.sec * 10 ** 9 + t.header.stamp.nanosec
                tf.set_transform(t.header.frame_id, t.child_frame_id, stamp, T, static=topic == "/tf_static")
    assert {"map", "odom", "base_link", "camera_link", CAMERA_OPTICAL_FRAME, LIDAR_FRAME} <= tf.frames()
    for i, frame in enumerate(scene.frames):
        np.testing.assert_allclose(tf.lookup(MAP_FRAME, CAMERA_OPTICAL_FRAME, frame.stamp_ns), frame.pose, atol=1e-9)
        np.testing.assert_allclose(tf.lookup(MAP_FRAME, LIDAR_FRAME, frame.stamp_ns),
                                   scene.trajectory.T_map_lidar[i], atol=1e-9)
        T_odom_base = tf.lookup("odom", "base_link", frame.stamp_ns)
        np.testing.assert_allclose(T_odom_base[:3, 2], [0, 0, 1], atol=1e-9)  # REP-105: base_link z up


def test_ground_truth_cloud_and_lidar_messages(bag_scene):
    scene, messages = bag_scene
    (cloud_msg,) = [msg for topic, _, _, msg in messages if topic == GT_POINTS_TOPIC]
    assert cloud_msg.header.frame_id == MAP_FRAME
    assert cloud_msg.header.stamp.sec * 10 ** 9 + cloud_msg.header.stamp.nanosec == scene.frames[0].stamp_ns
    cloud = pointcloud2_to_array(cloud_msg)
    assert cloud.dtype.names == ("x", "y", "z", "rgb", "label", "instance")
    points, colors, labels, instances = scene.gt_cloud(observed_only=True)
    assert 0 < len(points) < len(scene.points)
    np.testing.assert_array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), points)
    np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), colors)
    np.testing.assert_array_equal(cloud["label"], labels)
    np.testing.assert_array_equal(cloud["instance"], instances)
    assert set(np.unique(labels)) >= {SCANNET20.index("wall"), SCANNET20.index("floor")}
    lidar = [msg for topic, _, _, msg in messages if topic == LIDAR_TOPIC]
    assert len(lidar) == len(scene.frames) and lidar[0].header.frame_id == LIDAR_FRAME
    scan = pointcloud2_to_array(lidar[0])
    np.testing.assert_array_equal(np.stack([scan["x"], scan["y"], scan["z"]], 1), scene.lidar[0].points)


def test_dataset_folder_round_trip(tmp_path):
    scene = generate_scene(6, "kitchen", config=small_config(frames=2, use_lidar=False))
    write_dataset(scene, tmp_path / "ds", color_format="png")
    loaded = open_scene(tmp_path / "ds")
    assert loaded.name == scene.name and loaded.label_names == SCANNET20
    assert len(loaded.frames) == 2
    for original, read in zip(scene.frames, loaded.frames):
        np.testing.assert_array_equal(read.color, original.color)
        np.testing.assert_allclose(read.depth, original.depth, atol=5e-4)
        np.testing.assert_array_equal(read.labels, original.labels)
        np.testing.assert_array_equal(read.instances, original.instances)
        np.testing.assert_allclose(read.pose, original.pose)
        assert read.stamp_ns == original.stamp_ns and read.camera == original.camera
    np.testing.assert_array_equal(loaded.labels, scene.gt_cloud()[2])


def test_config_from_yaml_dict_and_validation():
    config = from_dict(SimConfig, {"frames": 3, "camera": {"width": 80, "height": 60},
                                   "depth_noise": {"scale": 0.0}, "lidar": {"beams": 4}})
    assert config.camera.camera().fx == pytest.approx(525.0 / 8) and config.lidar.beams == 4
    with pytest.raises(ValueError, match="room type"):
        generate_scene(0, "garage", config=config)
    with pytest.raises(ValueError, match="gt_spacing"):
        generate_scene(0, config=SimConfig(gt_spacing=0.0))


def _run(argv):
    parser = argparse.ArgumentParser()
    sim_command.add_arguments(parser)
    return sim_command.main(parser.parse_args(argv))


def test_sim_command_writes_bag_and_dataset(tmp_path, capsys):
    small = ["--width", "80", "--height", "60", "--frames", "2", "--gt-spacing", "0.05", "--no-progress"]
    assert _run(["--seed", "2", "--out", str(tmp_path / "s.mcap"), "--dataset-dir", str(tmp_path / "ds"),
                 "--no-lidar", "--room-type", "bathroom", "--depth-noise", "0", "--gt-all-surfaces", *small]) == 0
    assert "sim_00002_bathroom" in capsys.readouterr().out
    topics = {topic for topic, *_ in _messages(tmp_path / "s.mcap")}
    assert LIDAR_TOPIC not in topics and GT_POINTS_TOPIC in topics
    scene = open_scene(tmp_path / "ds")
    assert scene.frames[0].camera.width == 80
    assert SCANNET20.index("toilet") in scene.labels and IGNORE_LABEL in scene.labels  # all surfaces, ceiling too
    assert _run(["--seed", "2", "--out", str(tmp_path / "s.mcap"), *small]) == 1  # never overwrites
    assert _run(["--seed", "2", *small]) == 2  # no output given
    assert _run(["--seed", "5", "--count", "2", "--out", str(tmp_path / "many.mcap"), *small]) == 0
    assert (tmp_path / "many_00005.mcap").is_dir() and (tmp_path / "many_00006.mcap").is_dir()


def test_observed_points_are_those_the_frames_see(clean_scene):
    visible = np.zeros(len(clean_scene.points), bool)
    for frame in clean_scene.frames:
        points_cam = transform_points(invert_transform(frame.pose), clean_scene.points)
        uv, z, valid = project_points(frame.camera, points_cam)
        index = np.flatnonzero(valid)
        v, u = np.rint(uv[index, 1]).astype(int), np.rint(uv[index, 0]).astype(int)
        same_surface = frame.instances[v, u] == clean_scene.instances[index]
        visible[index[same_surface & (frame.depth[v, u] > 0) & (np.abs(frame.depth[v, u] - z[index]) < 0.01)]] = True
    observed = clean_scene.observed
    assert 0.1 < observed.mean() < 0.9
    # observed = the point's 5 cm cell shows its instance in some frame: coarser than per-point visibility
    assert visible[observed].mean() > 0.6
    assert visible[~observed].mean() < 0.03
