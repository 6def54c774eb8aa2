"""``ov3dseg replay BAG [--rate R | --as-fast-as-possible] [--params FILE] [--save-map FILE] [--query TEXT]``"""
from __future__ import annotations

import argparse
import sys

from rosbags.highlevel import AnyReaderError

from ov3dseg_ros.params import ParameterError
from ov3dseg_ros.query_client import format_response
from ov3dseg_ros.replay import ReplayError, replay_bag
from ov3dseg_ros.timing import format_timings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="ROS 2 bag directory (sqlite3 or MCAP storage)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="play at R times the recorded speed")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default)")
    parser.add_argument("--params", action="append", metavar="FILE",
                        help="ROS 2 parameter YAML for the graph (default: config/default.yaml); repeatable")
    parser.add_argument("--save-map", metavar="FILE", help="save the map there at the end")
    parser.add_argument("--oracle", action="store_true",
                        help="use the bag's ground-truth label images and label names as the label input")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for each frame to be integrated (results then depend on machine speed)")
    parser.add_argument("--query", action="append", default=[], metavar="TEXT",
                        help="after the replay, ask /query for TEXT and print the hits; repeatable")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="relevancy threshold of --query in [0, 1]; 0 (default) = the node's calibrated default")


def main(args: argparse.Namespace) -> int:
    try:
        result = replay_bag(args.bag, oracle=args.oracle, deterministic=not args.no_wait, rate=args.rate,
                            save_map=args.save_map, params_files=args.params, queries=args.query,
                            query_threshold=args.threshold)
    except (ReplayError, ParameterError, AnyReaderError, FileNotFoundError) as exc:
        print(f"ov3dseg replay: {exc}", file=sys.stderr)
        return 1
    rate = result.frames_integrated / result.wall_s if result.wall_s else 0.0
    print(f"\nreplayed {result.messages_published} messages, {result.frames_published} frames in "
          f"{result.wall_s:.2f} s: {result.frames_integrated} integrated ({rate:.1f} frames/s), "
          f"{result.frames_dropped} dropped" + (f", {result.unsettled} not settled" if result.unsettled else ""))
    print(format_timings(result.timings, result.wall_s))
    if result.map_path:
        print(f"map saved to {result.map_path}")
    for text, response in result.queries:
        print(format_response(text, response))
    return 0
