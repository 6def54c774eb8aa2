"""``ov3dseg dataset-to-bag``: convert any dataset scene (ScanNet, TUM, Redwood, Replica, S3DIS, our folders) to
a ROS 2 bag with the topics and TF tree of ``record-sample`` (see ov3dseg_core.data.bag_writer.write_scene_bag),
ground-truth label images when the dataset has per-frame labels, and the labelled scene cloud when it has one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ov3dseg_core.data.bag_writer import write_scene_bag
from ov3dseg_core.data.readers import detect_format, open_scene
from ov3dseg_core.registry import REGISTRY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", metavar="SCENE_PATH", help="dataset scene folder or file")
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--format", dest="fmt", default=None, choices=REGISTRY.names("dataset"),
                        help="dataset format (default: detected from the files)")
    parser.add_argument("--max-frames", type=int, default=None, help="write at most N frames (after --stride)")
    parser.add_argument("--stride", type=int, default=1, help="use every K-th frame (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=None, help="re-time frames at HZ (default: dataset stamps)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        print(f"ov3dseg dataset-to-bag: {out} already exists; remove it or choose another --out", file=sys.stderr)
        return 1
    try:
        fmt = args.fmt or detect_format(args.scene)
        scene = open_scene(args.scene, fmt=fmt)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ov3dseg dataset-to-bag: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = write_scene_bag(scene, out, storage=args.storage, rate_hz=args.rate, max_frames=args.max_frames,
                                  stride=args.stride)
    except ValueError as exc:  # e.g. stamps that do not increase: the partial bag is left for inspection
        print(f"ov3dseg dataset-to-bag: {exc}", file=sys.stderr)
        return 1
    cloud = f", ground-truth cloud of {len(scene.points):,} points" if scene.points is not None else ""
    print(f"{fmt} scene {scene.name}: wrote {summary['frames']} frames ({summary['skipped_no_pose']} without pose "
          f"skipped){cloud}, {len(scene.label_names)} label names -> {out}")
    return 0
