"""``ov3dseg run [--params FILE ...]``: start the node graph of launch/mapping.launch.py in this process."""
from __future__ import annotations

import argparse
import sys

import rclpy

from ov3dseg_ros.graph import NodeGraph
from ov3dseg_ros.params import ParameterError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="append", metavar="FILE",
                        help="ROS 2 parameter YAML ('/**:' and 'ov3dseg_mapper:' sections); repeat to layer files "
                             "(default: config/default.yaml)")


def main(args: argparse.Namespace) -> int:
    rclpy.init()
    try:
        graph = NodeGraph(args.params)
    except ParameterError as exc:
        print(f"ov3dseg run: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    graph.mapper.get_logger().info("running; Ctrl-C to stop")
    try:
        graph.spin()
    finally:
        graph.shutdown()
        rclpy.try_shutdown()
    return 0
