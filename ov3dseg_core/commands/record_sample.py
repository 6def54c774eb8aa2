"""``ov3dseg record-sample``: write the living-room sample frames as a ROS 2 bag, so there is real data to replay.

Topics: /camera/color/image_raw (rgb8), /camera/depth/image_raw (16UC1 mm), /camera/color/camera_info,
/camera/depth/camera_info, /tf, /tf_static. TF tree (REP-105): map -> odom (identity, static), odom -> base_link
(the camera trajectory, dynamic), base_link -> camera_link (identity, static: the hand-held camera is the body),
camera_link -> camera_color_optical_frame (optical rotation, static). The output is a rosbag2 directory
(metadata.yaml + one .mcap or .db3 file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ov3dseg_core.data.bag_writer import write_scene_bag
from ov3dseg_core.data.readers.redwood import open_redwood
from ov3dseg_core.data.samples import find_living_room


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", metavar="DIR", default=None,
                        help="sample folder (color/, depth/, trajectory.log); default: see find_living_room")
    parser.add_argument("--out", default="out/sample_bag", help="bag directory to create (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=None,
                        help="frame rate in Hz for the bag clock (default: the sequence's 30 Hz)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")


def main(args: argparse.Namespace) -> int:
    try:
        folder = find_living_room(args.source)
    except FileNotFoundError as exc:
        print(f"ov3dseg record-sample: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if out.exists():
        print(f"ov3dseg record-sample: {out} already exists; remove it or choose another --out", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = write_scene_bag(open_redwood(folder), out, storage=args.storage, rate_hz=args.rate)
    duration = (summary["end_ns"] - summary["start_ns"]) / 1e9
    print(f"wrote {summary['frames']} RGB-D frames from {folder} to {out} ({args.storage}, {duration:.3f} s of "
          f"sensor time from t = {summary['start_ns'] / 1e9:.3f} s)")
    return 0
