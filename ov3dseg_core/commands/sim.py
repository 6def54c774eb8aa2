"""``ov3dseg sim --seed N --out PATH.mcap [--dataset-dir DIR] [--frames K] [--lidar/--no-lidar]``

Generates labelled synthetic indoor scene ``N`` (deterministic by seed) and writes it as a ROS 2 bag and/or a
ScanNet-style dataset folder. ``--count M`` generates scenes N .. N+M-1, suffixing each output with the seed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ov3dseg_core.config import ConfigError, from_dict, load_yaml
from ov3dseg_core.sim.layout import ROOM_TYPES
from ov3dseg_core.sim.sensors import DepthNoiseModel
from ov3dseg_core.sim.world import CameraConfig, SimConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="scene number; same seed, same scene (default 0)")
    parser.add_argument("--out", type=Path, help="bag to write (a rosbag2 folder, e.g. scene.mcap)")
    parser.add_argument("--dataset-dir", type=Path, help="also/instead write a ScanNet-style dataset folder here")
    parser.add_argument("--count", type=int, default=1, help="generate seeds N .. N+count-1 (outputs get _<seed>)")
    parser.add_argument("--config", type=Path, help="SimConfig YAML (options below override it)")
    parser.add_argument("--frames", type=int, help="camera frames (default 30)")
    parser.add_argument("--fps", type=float, help="frame rate in Hz (default 2)")
    parser.add_argument("--room-type", choices=ROOM_TYPES, help="room type (default: drawn from the seed)")
    parser.add_argument("--lidar", action=argparse.BooleanOptionalAction, default=None,
                        help="simulate the spinning LiDAR (default on)")
    parser.add_argument("--width", type=int, help="image width in pixels (default 640)")
    parser.add_argument("--height", type=int, help="image height in pixels (default 480)")
    for name in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{name}", type=float, help=f"intrinsic {name} in pixels (default from the size)")
    parser.add_argument("--depth-noise", type=float,
                        help="depth noise and dropout scale: 1 structured-light defaults, 0 exact depth (default 1)")
    parser.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=None,
                        help="cast shadows from the room light (default on)")
    parser.add_argument("--gt-spacing", type=float, help="ground-truth cloud spacing in metres (default 0.02)")
    parser.add_argument("--gt-all-surfaces", action="store_true",
                        help="ground-truth cloud of every surface, not only those the camera saw")
    parser.add_argument("--color-format", choices=("jpg", "png"), default="jpg",
                        help="dataset folder colour images (default jpg)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def build_config(args: argparse.Namespace) -> SimConfig:
    """SimConfig from --config (if any) with the command-line options on top."""
    data = load_yaml(args.config) if args.config else {}
    config = from_dict(SimConfig, data)
    camera = config.camera
    camera_overrides = {k: getattr(args, k) for k in ("width", "height", "fx", "fy", "cx", "cy")
                        if getattr(args, k) is not None}
    if camera_overrides:
        camera = CameraConfig(**{**vars(camera), **camera_overrides})
    noise = config.depth_noise
    if args.depth_noise is not None:
        noise = DepthNoiseModel(**{**vars(noise), "scale": args.depth_noise})
    overrides = {"room_type": args.room_type, "frames": args.frames, "fps": args.fps, "use_lidar": args.lidar,
                 "shadows": args.shadows, "gt_spacing": args.gt_spacing}
    merged = {**vars(config), "camera": camera, "depth_noise": noise,
              **{k: v for k, v in overrides.items() if v is not None}}
    config = SimConfig(**merged)
    config.validate()
    return config


def _numbered(path: Path, seed: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}_{seed:05d}{path.suffix}")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.sim.export import write_bag, write_dataset
    from ov3dseg_core.sim.world import generate_scene

    if args.out is None and args.dataset_dir is None:
        print("ov3dseg sim: give --out PATH.mcap and/or --dataset-dir DIR", file=sys.stderr)
        return 2
    if args.count < 1:
        print(f"ov3dseg sim: --count must be >= 1, got {args.count}", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"ov3dseg sim: {exc}", file=sys.stderr)
        return 2
    for seed in range(args.seed, args.seed + args.count):
        bag = args.out and _numbered(args.out, seed, args.count)
        folder = args.dataset_dir and _numbered(args.dataset_dir, seed, args.count)
        outputs = [p for p in (bag, folder) if p]
        existing = [str(p) for p in outputs if p.exists() and (p == bag or any(p.iterdir()))]
        if existing:
            print(f"ov3dseg sim: {', '.join(existing)} already exists; remove it or choose another path",
                  file=sys.stderr)
            return 1
        start = time.perf_counter()
        scene = generate_scene(seed, config=config, progress=args.progress)
        generated = time.perf_counter() - start
        observed_only = not args.gt_all_surfaces
        if bag:
            bag.parent.mkdir(parents=True, exist_ok=True)
            write_bag(scene, bag, lidar=config.use_lidar, observed_only=observed_only, progress=args.progress)
        if folder:
            write_dataset(scene, folder, observed_only=observed_only, color_format=args.color_format,
                          progress=args.progress)
        points = scene.gt_cloud(observed_only)[0]
        kinds = sorted(o.kind for o in scene.room.objects)
        print(f"{scene.name}: {scene.room.size[0]:.1f} x {scene.room.size[1]:.1f} x {scene.room.size[2]:.1f} m, "
              f"{len(kinds)} objects ({', '.join(kinds)}), {len(scene.frames)} frames, {len(scene.lidar)} LiDAR "
              f"scans, {len(points):,} ground-truth points; generated in {generated:.1f} s, total "
              f"{time.perf_counter() - start:.1f} s -> {', '.join(str(p) for p in outputs)}")
    return 0
