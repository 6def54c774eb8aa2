"""``ov3dseg query TEXT [--top-k K] [--threshold T] [--out FILE.ply]``: call /query on a running graph."""
from __future__ import annotations

import argparse
import sys

import rclpy

from ov3dseg_ros.query_client import QueryClient, format_response, write_hits_ply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what to look for, e.g. 'chair'")
    parser.add_argument("--top-k", type=int, default=0, help="keep at most K voxels, best first (0 = all)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="relevancy threshold in [0, 1]; 0 (default) = the node's calibrated default")
    parser.add_argument("--out", metavar="FILE.ply", help="write the matching voxels (x, y, z, score) as PLY")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the service and answer")


def main(args: argparse.Namespace) -> int:
    rclpy.init()
    try:
        with QueryClient() as client:
            if not client.wait_for_service(args.timeout):
                print(f"ov3dseg query: no /query service within {args.timeout:g} s (is `ov3dseg run` or "
                      "`ros2 launch ov3dseg_ros mapping.launch.py` running on this ROS_DOMAIN_ID?)", file=sys.stderr)
                return 1
            response = client.call(args.text, args.top_k, args.threshold, timeout_s=args.timeout,
                                   retry_s=args.timeout)
    except TimeoutError as exc:
        print(f"ov3dseg query: {exc}", file=sys.stderr)
        return 1
    finally:
        rclpy.try_shutdown()
    print(format_response(args.text, response))
    if not response.success:
        return 1
    if args.out:
        print(f"wrote {write_hits_ply(response, args.out)} voxels to {args.out}")
    return 0
