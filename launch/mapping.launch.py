"""Launch the ov3dseg mapping node (and RViz).

    ros2 launch ov3dseg_ros mapping.launch.py [namespace:=NS] [params_file:=FILE] [use_sim_time:=true]
        [camera:=/my_cam] [lidar_topic:=/my_lidar/points] [model:=default] [device:=cuda] [log_level:=debug]
        [rviz:=true]

camera and lidar_topic remap the default inputs (/camera/..., /lidar/points); model and device override
params_file when not empty. The same node graph starts without the launch package with
`ov3dseg run [--params FILE]` (ov3dseg_ros/graph.py).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

PACKAGE = "ov3dseg_ros"
CAMERA_STREAMS = ("color/image_raw", "depth/image_raw", "color/camera_info", "semantic/image_raw")
"""Input topics under a camera namespace (ov3dseg_ros.params.MapperConfig.topic)."""
DEFAULT_CAMERA, DEFAULT_LIDAR = "/camera", "/lidar/points"


def launch_arguments(share: str) -> list[tuple[str, str, str]]:
    """(name, default, description) of every argument of this launch file."""
    return [
        ("namespace", "", "namespace of the node, its outputs (ov3dseg/*) and its services (query, ...)"),
        ("params_file", os.path.join(share, "config", "default.yaml"), "ROS 2 parameter YAML of the mapping node"),
        ("use_sim_time", "false", "follow /clock (bag replay, simulation): true or false"),
        ("camera", DEFAULT_CAMERA, "topic prefix of the RGB-D camera ({camera}/color/image_raw, ...)"),
        ("lidar_topic", DEFAULT_LIDAR, "PointCloud2 topic of the LiDAR"),
        ("model", "", "open-vocabulary model: 'default', a checkpoint path (3D models, or XMask3D: 2D branch on key "
                      "frames, keyframe_* parameters); empty = as in params_file"),
        ("device", "", "torch device (cpu, cuda, cuda:N); empty = as in params_file"),
        ("log_level", "info", "log level of the node: debug, info, warn, error or fatal"),
        ("rviz", "false", "also start RViz with rviz/ov3dseg.rviz: true or false"),
    ]


def is_true(value: str) -> bool:
    """A launch argument's boolean ('true'/'false', as launch's IfCondition reads it)."""
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def node_arguments(values: dict[str, str]) -> dict:
    """launch_ros Node(...) keyword arguments of the mapping node from the launch arguments' values."""
    overrides = {"use_sim_time": is_true(values["use_sim_time"])}
    overrides.update({name: values[name] for name in ("model", "device") if values[name]})
    camera = values["camera"].rstrip("/")
    remappings = [(f"{DEFAULT_CAMERA}/{stream}", f"{camera}/{stream}") for stream in CAMERA_STREAMS]
    remappings.append((DEFAULT_LIDAR, values["lidar_topic"]))
    return dict(package=PACKAGE, executable="mapping_node", name="ov3dseg_mapper", namespace=values["namespace"],
                output="screen", parameters=[values["params_file"], overrides], remappings=remappings,
                ros_arguments=["--log-level", values["log_level"]])


def rviz_arguments(values: dict[str, str], share: str) -> dict:
    """launch_ros Node(...) keyword arguments of RViz with this package's view."""
    return dict(package="rviz2", executable="rviz2", name="rviz2", namespace=values["namespace"], output="screen",
                arguments=["-d", os.path.join(share, "rviz", "ov3dseg.rviz")],
                parameters=[{"use_sim_time": is_true(values["use_sim_time"])}])


def _nodes(context, share: str) -> list:
    values = {name: context.launch_configurations[name] for name, _, _ in launch_arguments(share)}
    nodes = [Node(**node_arguments(values))]
    if is_true(values["rviz"]):
        nodes.append(Node(**rviz_arguments(values, share)))
    return nodes


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, default, description in launch_arguments(share)),
        OpaqueFunction(function=_nodes, args=[share]),
    ])
