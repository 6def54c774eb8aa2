"""``ov3dseg fuse-sample``: fuse the living-room sample RGB-D frames into a voxel map, write a PLY, summarise.

The sample is found as documented in ov3dseg_core.data.samples.find_living_room (--from DIR, $OV3DSEG_SAMPLE_DIR,
../shared/data/living_room, or Open3D's downloader).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.frames import depth_reprojection_error, frame_points
from ov3dseg_core.data.readers.redwood import open_redwood
from ov3dseg_core.data.samples import find_living_room
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig

CONSISTENCY_TOLERANCE_M = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", metavar="DIR", default=None,
                        help="sample folder (color/, depth/, trajectory.log); default: see find_living_room")
    parser.add_argument("--out", default="out/sample_map.ply", help="output PLY path (default: %(default)s)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="voxel edge in metres (default: %(default)s)")
    parser.add_argument("--max-range", type=float, default=10.0, help="depth cut-off in metres (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    try:
        folder = find_living_room(args.source)
    except FileNotFoundError as exc:
        print(f"ov3dseg fuse-sample: {exc}", file=sys.stderr)
        return 1
    scene = open_redwood(folder)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=args.voxel_size))
    frames, times_ms, total_points = [], [], 0
    for frame in tqdm(scene.frames, desc="fusing", unit="frame"):
        if frame.pose is None:
            continue
        points, colors, _ = frame_points(frame, max_range=args.max_range)
        start = time.perf_counter()
        voxel_map.integrate(points, colors=colors, sensor_origin=frame.pose[:3, 3])
        times_ms.append((time.perf_counter() - start) * 1e3)
        total_points += len(points)
        frames.append(frame)
    if not frames:
        print(f"ov3dseg fuse-sample: no posed frames in {folder}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    voxel_map.export_ply(out)
    positions = voxel_map.positions()
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    print(f"sample        {folder} ({len(frames)} posed frames of {len(scene.frames)})")
    print(f"points        {total_points:,} back-projected (<= {args.max_range:g} m)")
    print(f"voxels        {len(voxel_map):,} at {args.voxel_size * 100:g} cm")
    print(f"bounds [m]    x {lo[0]:+.2f}..{hi[0]:+.2f}  y {lo[1]:+.2f}..{hi[1]:+.2f}  z {lo[2]:+.2f}..{hi[2]:+.2f}"
          f"  (extent {hi[0] - lo[0]:.2f} x {hi[1] - lo[1]:.2f} x {hi[2] - lo[2]:.2f})")
    print("integration   per frame [ms]: " + " ".join(f"{t:.1f}" for t in times_ms)
          + f"  (median {np.median(times_ms):.1f})")
    if len(frames) > 1:
        errors = depth_reprojection_error(frames[0], frames[-1], max_range=args.max_range)
        if len(errors):
            print(f"consistency   frame 0 depth reprojected into frame {len(frames) - 1}: median error "
                  f"{np.median(errors) * 100:.2f} cm, {np.mean(errors < CONSISTENCY_TOLERANCE_M) * 100:.1f} % "
                  f"within {CONSISTENCY_TOLERANCE_M * 100:g} cm ({len(errors):,} overlapping pixels)")
        else:
            print(f"consistency   frames 0 and {len(frames) - 1} do not overlap")
    print(f"output        {out}")
    return 0
