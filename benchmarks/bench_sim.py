"""Synthetic scene generation rate of ``ov3dseg sim`` (ov3dseg_core.sim).

Per scene: layout + trajectory + ground-truth cloud + K RGB-D frames (ray cast, shaded with shadows, structured-light
noise) + K LiDAR scans (16 beams x 900 columns), then writing the MCAP bag and the dataset folder (jpg colour).
Prints a table per room type (wall seconds per stage, frames/s of rendering, CPU seconds per scene, scenes/minute
end to end) and the total; CPU seconds (all threads) tell the cost apart from the load of a shared machine.
Goal: a few hundred training scenes in reasonable time, i.e. >= 5 scenes/minute at 30 frames of 640 x 480 on a
2-core CPU.

    python benchmarks/bench_sim.py [--scenes-per-type 2] [--frames 30] [--width 640 --height 480] [--no-write]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ov3dseg_core.sim.export import write_bag, write_dataset
from ov3dseg_core.sim.layout import ROOM_TYPES
from ov3dseg_core.sim.world import CameraConfig, SimConfig, generate_scene

TARGET_SCENES_PER_MINUTE = 5.0


def folder_megabytes(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes-per-type", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                        help="also write the bag and the dataset folder")
    args = parser.parse_args()
    config = SimConfig(frames=args.frames, camera=CameraConfig(args.width, args.height))

    print(f"{args.frames} frames of {args.width}x{args.height} + LiDAR per scene, {args.scenes_per_type} scenes "
          f"per room type")
    print("| room type | generate s | frames/s | bag s | dataset s | CPU s | bag MB | GT points | scenes/min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    totals = []
    work = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        for room_type in ROOM_TYPES:
            rows = []
            for seed in range(args.scenes_per_type):
                start, cpu_start = time.perf_counter(), time.process_time()
                scene = generate_scene(seed, room_type, config=config)
                generated = time.perf_counter()
                bag_s = dataset_s = megabytes = 0.0
                if args.write:
                    bag = write_bag(scene, work / f"{room_type}_{seed}.mcap")
                    written = time.perf_counter()
                    write_dataset(scene, work / f"{room_type}_{seed}")
                    bag_s, dataset_s = written - generated, time.perf_counter() - written
                    megabytes = folder_megabytes(bag)
                    shutil.rmtree(bag)
                    shutil.rmtree(work / f"{room_type}_{seed}")
                rows.append((generated - start, bag_s, dataset_s, time.process_time() - cpu_start, megabytes,
                             int(scene.observed.sum())))
            generate, bag_s, dataset_s, cpu, megabytes, points = np.mean(rows, axis=0)
            total = generate + bag_s + dataset_s
            totals.append(total)
            print(f"| {room_type} | {generate:.2f} | {args.frames / generate:.1f} | {bag_s:.2f} | {dataset_s:.2f} | "
                  f"{cpu:.1f} | {megabytes:.0f} | {points:,.0f} | {60.0 / total:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = 60.0 / float(np.mean(totals))
    print(f"\noverall: {rate:.1f} scenes/minute end to end (target >= {TARGET_SCENES_PER_MINUTE:.0f}); "
          f"300 scenes in about {300 / rate:.0f} minutes")


if __name__ == "__main__":
    main()
