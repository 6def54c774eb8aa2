"""Parameters: declarations, start-up validation, parameter files, live changes, launch file and entry points."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from ov3dseg_core import cli
from ov3dseg_ros.graph import DEFAULT_PARAMS, NodeGraph, load_params_file
from ov3dseg_ros.params import FIELDS, NODE_NAME, MapperConfig, ParameterError, render_default_yaml

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"text_encoder": "", "lidar_topics": []}


def test_default_yaml_is_generated_from_the_dataclass_and_holds_its_defaults():
    assert DEFAULT_PARAMS.read_text() == render_default_yaml()
    values = load_params_file(DEFAULT_PARAMS, NODE_NAME)
    defaults = dataclasses.asdict(MapperConfig())
    assert values == {k: v for k, v in defaults.items() if v != []}  # empty lists stay unset (rcl cannot type [])
    assert set(defaults) - set(values) == {"label_names", "vocabulary"}


@pytest.mark.parametrize("params, fragments", [
    ({"voxel_size": 5.0}, ["voxel_size", "out of range"]),
    ({"depth_min_range": 5.0, "depth_max_range": 2.0}, ["depth_min_range (5.0) must be smaller than depth_max_range"]),
    ({"cameras": ["not a topic"]}, ["cameras", "not an absolute topic name"]),
    ({"queue_size": "ten"}, ["queue_size", "STRING", "INTEGER"]),
    ({"label_names": ["chair", "chair"]}, ["label_names", "unique"]),
    ({"cameras": [], "lidar_topics": []}, ["no input"]),
    ({"device": "tpu"}, ["device", "'tpu'"]),
    ({"label_template": "a chair"}, ["label_template", "{}"]),
    ({"voxel_sise": 0.1}, ["unknown parameters ['voxel_sise']"]),
    ({"initial_map": "/nonexistent/map.safetensors"}, ["initial_map", "no map file"]),
    ({"tf_timeout_s": math.nan}, ["tf_timeout_s"]),
    ({"vocabulary": ["chair", "chair"]}, ["vocabulary", "unique"]),
    ({"model": "/nonexistent/model.safetensors"}, ["parameter 'model'", "does not exist"]),
    ({"keyframe_max_pending": 0}, ["keyframe_max_pending", "out of range"]),
    ({"keyframe_min_rotation": 270.0}, ["keyframe_min_rotation", "out of range"]),
])
def test_invalid_parameters_are_rejected_at_start_up(ros_context, params, fragments):
    with pytest.raises(ParameterError) as info:
        NodeGraph(params={**QUIET, **params}, context=ros_context)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_parameter_file_wildcard_then_node_section_then_overrides(ros_context, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    voxel_size: 0.1\n    queue_size: 7\n    other_nodes_param: 1\n"
                    "ov3dseg_mapper:\n  ros__parameters:\n    voxel_size: 0.2\n    depth_max_range: 8\n"
                    "    cameras: [/front, /rear]\n")
    graph = NodeGraph([DEFAULT_PARAMS, path], params={**QUIET, "queue_size": 4}, context=ros_context)
    try:
        cfg = graph.mapper.config
        assert (cfg.voxel_size, cfg.queue_size, cfg.depth_max_range) == (0.2, 4, 8.0)
        assert cfg.cameras == ["/front", "/rear"] and cfg.tf_timeout_s == MapperConfig().tf_timeout_s
        assert graph.mapper.get_parameter("voxel_size").value == 0.2
        assert "/rear/depth/image_raw" in {s.topic_name for s in graph.mapper.subscriptions}
    finally:
        graph.shutdown()
    path.write_text("ov3dseg_mapper:\n  ros__parameters:\n    voxel_sise: 0.1\n")
    with pytest.raises(ParameterError, match="voxel_sise"):
        NodeGraph([path], params=QUIET, context=ros_context)


def test_descriptors_and_live_changes(ros_context):
    graph = NodeGraph(params=QUIET, context=ros_context)
    node = graph.mapper
    try:
        for name in FIELDS:
            descriptor = node.describe_parameter(name)
            assert descriptor.description and descriptor.read_only == FIELDS[name].metadata["read_only"]
        voxel = node.describe_parameter("voxel_size")
        assert voxel.type == ParameterType.PARAMETER_DOUBLE
        assert (voxel.floating_point_range[0].from_value, voxel.floating_point_range[0].to_value) == (0.005, 1.0)
        assert node.describe_parameter("queue_size").integer_range[0].to_value == 1000

        ok, bad, fixed = node.set_parameters([Parameter("tf_timeout_s", value=0.25),
                                              Parameter("depth_min_range", value=20.0),
                                              Parameter("voxel_size", value=0.1)])
        assert ok.successful and node.queue.timeout_ns == 250_000_000 and node.config.tf_timeout_s == 0.25
        assert not bad.successful and "must be smaller than depth_max_range" in bad.reason
        assert node.config.depth_min_range == MapperConfig().depth_min_range
        assert not fixed.successful and "read-only" in fixed.reason
    finally:
        graph.shutdown()


def test_mapping_node_script_reports_bad_parameters(ros_domain):
    script = ROOT / "scripts" / "mapping_node"
    assert os.access(script, os.X_OK)
    args = ["--ros-args", "-p", "voxel_size:=5.0", "-p", "text_encoder:=''"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and "voxel_size" in done.stderr and "out of range" in done.stderr


def test_query_command_without_a_graph_fails_clearly(ros_domain, capsys):
    assert cli.main(["query", "chair", "--timeout", "0.3"]) == 1
    assert "no /query service" in capsys.readouterr().err
