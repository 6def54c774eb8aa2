"""End to end through real DDS: RGB-D + labels + TF in, semantic cloud out; then save, clear and load."""
from __future__ import annotations

import time

import numpy as np
import pytest
from std_srvs.srv import Trigger

from ov3dseg_core.geometry.camera import backproject_depth
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array, unpack_rgb
from ov3dseg_ros.srv import LoadMap, SaveMap
from ros_rig import (BLUE, CAMERA, LABEL_NAMES, RED, SOFA, T_MAP_CAMERA, WALL, call_service, start_graph, wait_until,
                     wall_images)

STAMP = 1_700_000_000_250_000_000


@pytest.fixture(scope="module")
def mapped(ros_context):
    """A graph that integrated one labelled wall frame, and the rig that fed it."""
    graph, rig = start_graph(ros_context, {"label_names": LABEL_NAMES})
    rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, rig.label_pub)
    rig.publish_tf(STAMP)
    color, depth, labels = wall_images()
    rig.publish_frame(STAMP, color, depth, labels)
    rig.wait_status(lambda s: s.frames_integrated == 1, what="one integrated frame")
    yield graph, rig
    graph.shutdown()


def test_semantic_cloud_geometry_colours_labels(mapped):
    graph, rig = mapped
    wait_until(lambda: rig.cloud is not None and rig.cloud.width > 0, what="a semantic cloud")
    cloud = rig.cloud
    assert cloud.header.frame_id == "map"
    assert cloud.header.stamp.sec * 10**9 + cloud.header.stamp.nanosec == STAMP  # source time, not "now"
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label", "score", "instance"]
    points = pointcloud2_to_array(cloud)
    assert (points["instance"] == -1).all()  # no model with an instance decoder: no instances
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)

    # Hand-computed: the wall 2 m ahead of a camera at (1, 2, 0.5) looking along map +x lies on the plane x = 3.
    np.testing.assert_allclose(xyz[:, 0], 3.0, atol=1e-5)
    # Same voxels as back-projecting the depth image ourselves.
    _, depth, _ = wall_images()
    expected = transform_points(T_MAP_CAMERA, backproject_depth(CAMERA, depth)[0])
    voxel = graph.mapper.config.voxel_size
    expected_keys = {tuple(k) for k in np.floor(expected / voxel).astype(int)}
    got_keys = {tuple(k) for k in np.floor(xyz / voxel).astype(int)}
    assert got_keys == expected_keys
    # Left image half (map y > 2): red sofa; right half (map y < 2): blue wall; one label per voxel, certain.
    sofa_side, wall_side = xyz[:, 1] > 2.0 + voxel, xyz[:, 1] < 2.0 - voxel
    assert sofa_side.sum() > 50 and wall_side.sum() > 50
    assert np.all(points["label"][sofa_side] == SOFA) and np.all(points["label"][wall_side] == WALL)
    colors = unpack_rgb(points["rgb"])
    assert np.all(colors[sofa_side] == RED) and np.all(colors[wall_side] == BLUE)
    np.testing.assert_allclose(points["score"][sofa_side | wall_side], 1.0)


def test_the_cloud_is_built_only_while_someone_subscribes(mapped):
    graph, rig = mapped
    wait_until(lambda: graph.mapper.timings.summary().get("publish_cloud", {}).get("count", 0) >= 1)
    rig.destroy_subscription(next(s for s in rig.subscriptions if s.topic_name == "/ov3dseg/semantic_cloud"))
    wait_until(lambda: graph.mapper.cloud_pub.get_subscription_count() == 0, what="the subscriber gone")
    built = graph.mapper.timings.summary()["publish_cloud"]["count"]
    color, depth, labels = wall_images(2.5)
    rig.publish_tf(STAMP + 10**8)
    rig.publish_frame(STAMP + 10**8, color, depth, labels)  # the map changes ...
    rig.wait_status(lambda s: s.frames_integrated == 2)
    time.sleep(0.3)  # ... and 6 cloud periods (20 Hz) pass without anyone listening
    assert graph.mapper.timings.summary()["publish_cloud"]["count"] == built


def test_status_and_diagnostics_report_the_map(mapped):
    graph, rig = mapped
    status = rig.wait_status(lambda s: s.num_voxels > 0)
    assert status.num_voxels == len(graph.mapper.voxel_map)
    assert status.frames_received == status.frames_integrated and status.frames_dropped == 0
    assert status.queue_depth == 0
    assert status.label_names == LABEL_NAMES and status.voxel_size == pytest.approx(0.05)
    assert status.memory_mb > 0
    wait_until(lambda: rig.diagnostics is not None and any(
        kv.key.startswith("integrate ms") for kv in rig.diagnostics.status[0].values), what="diagnostics timings")
    values = {kv.key: kv.value for kv in rig.diagnostics.status[0].values}
    assert values["voxels"] == str(status.num_voxels)
    assert values["frames integrated"] == str(status.frames_integrated)


def test_save_clear_load_restores_the_same_map(mapped, tmp_path):
    graph, rig = mapped
    before = graph.mapper.voxel_map.state()
    path = str(tmp_path / "map.safetensors")
    saved = call_service(rig, SaveMap, "/ov3dseg_mapper/save_map", SaveMap.Request(path=path))
    assert saved.success, saved.message
    cleared = call_service(rig, Trigger, "/ov3dseg_mapper/clear", Trigger.Request())
    assert cleared.success and len(graph.mapper.voxel_map) == 0
    rig.wait_status(lambda s: s.num_voxels == 0, what="the cleared map in the status")
    loaded = call_service(rig, LoadMap, "/ov3dseg_mapper/load_map", LoadMap.Request(path=path))
    assert loaded.success, loaded.message
    after = graph.mapper.voxel_map.state()
    for name in ("keys", "position", "color", "label_counts"):
        assert np.array_equal(before[name].numpy(), after[name].numpy()), name


def test_load_rejects_missing_and_corrupt_files(mapped, tmp_path):
    _, rig = mapped
    missing = call_service(rig, LoadMap, "/ov3dseg_mapper/load_map", LoadMap.Request(path=str(tmp_path / "none")))
    assert not missing.success and "no map file" in missing.message
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    answer = call_service(rig, LoadMap, "/ov3dseg_mapper/load_map", LoadMap.Request(path=str(corrupt)))
    assert not answer.success and "load failed" in answer.message
