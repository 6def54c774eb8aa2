"""Replay a ROS 2 bag into the ov3dseg mapping node on simulated time (and RViz).

    ros2 launch ov3dseg_ros replay.launch.py bag:=BAG [rate:=1.0] [loop:=false] [rviz:=true] [any argument of
        mapping.launch.py except use_sim_time]

`ros2 bag play BAG --clock --rate R` publishes the recorded topics and /clock; mapping.launch.py runs with
use_sim_time:=true. Without the launch package, `ov3dseg replay BAG` does the same in one process.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PLAY = ["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")]


def generate_launch_description():
    mapping = os.path.join(get_package_share_directory("ov3dseg_ros"), "launch", "mapping.launch.py")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="ROS 2 bag directory (sqlite3 or MCAP)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", description="replay the bag in a loop: true or false"),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(mapping),
                                 launch_arguments={"use_sim_time": "true"}.items()),
        ExecuteProcess(cmd=PLAY, output="screen", condition=UnlessCondition(LaunchConfiguration("loop"))),
        ExecuteProcess(cmd=[*PLAY, "--loop"], output="screen", condition=IfCondition(LaunchConfiguration("loop"))),
    ])
