"""Launch the ov3dseg mapping graph.

    ros2 launch ov3dseg_ros mapping.launch.py [params_file:=FILE] [use_sim_time:=true]

The same graph starts without the launch package with `ov3dseg run [--params FILE]` (ov3dseg_ros/graph.py).
Remap inputs on the command line of a custom launch file, e.g. ('/camera/color/image_raw', '/my_cam/image').
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("ov3dseg_ros"), "config", "default.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameter YAML of the mapping node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (bag replay, simulation)"),
        Node(
            package="ov3dseg_ros",
            executable="mapping_node",
            name="ov3dseg_mapper",
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
            ],
            remappings=[
                ("/camera/color/image_raw", "/camera/color/image_raw"),
                ("/camera/depth/image_raw", "/camera/depth/image_raw"),
                ("/camera/color/camera_info", "/camera/color/camera_info"),
                ("/camera/semantic/image_raw", "/camera/semantic/image_raw"),
                ("/lidar/points", "/lidar/points"),
            ],
        ),
    ])
