"""RGB-D integration against Open3D's VoxelBlockGrid on the same frames, on one core, paired ratios.

Per 640x480 frame, ours = ``frame_points`` (back-projection, transform, colour and label gather) +
``VoxelMap.integrate`` (5 cm voxels, colour + 20-label histograms), into a map that already holds the scene (steady
state).
Reference = Open3D ``t.geometry.VoxelBlockGrid`` (tsdf / weight / color, block 16, 5 cm) on the same depth and colour
images: ``compute_unique_block_coordinates`` + ``integrate``. The two alternate frame by frame; each frame's ratio
is ours / Open3D measured back to back, so machine load hits both alike. Scenes: the living-room sample (real depth,
synthetic label image), a simulated living room (``ov3dseg_core.sim``, 24 frames with ground-truth labels) and a
synthetic 8 x 3 x 8 m box room (every pixel valid, depth 1.5-7.5 m).

Sustained replay: each scene's frames looped to SUSTAINED_FRAMES frames, back to back (ours, then Open3D, twice,
alternating), frames per second of the whole loop.

    python benchmarks/bench_integration.py [--repeats 20]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy/Open3D load their thread pools
# Open3D's CPU kernels run on all cores whatever OMP_NUM_THREADS says (2.1 ms a living-room frame on 2 idle cores,
# 4.0 ms on one): the process is pinned to one core so that both sides get one.
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402
import open3d.core as o3c  # noqa: E402
import torch  # noqa: E402

from bench_voxel_map import NUM_LABELS, living_room_frames, synthetic_room_frames  # noqa: E402
from ov3dseg_core.data import RGBDFrame  # noqa: E402
from ov3dseg_core.data.frames import frame_points  # noqa: E402
from ov3dseg_core.geometry.transforms import invert_transform  # noqa: E402
from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig  # noqa: E402
from ov3dseg_core.sim.world import SimConfig, generate_scene  # noqa: E402

VOXEL_SIZE = 0.05
MAX_RANGE = 10.0
SUSTAINED_FRAMES = 60


class Open3DReference:
    """Open3D VoxelBlockGrid TSDF integration of RGB-D frames (CPU)."""

    def __init__(self, frames: list[RGBDFrame]):
        self.device = o3c.Device("CPU:0")
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1,), (1,), (3,)), voxel_size=VOXEL_SIZE, block_resolution=16, block_count=100_000,
            device=self.device)
        self.inputs = [self._inputs(f) for f in frames]

    def _inputs(self, frame: RGBDFrame):
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(frame.depth, np.float32)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(frame.color, np.float32) / 255.0))
        intrinsic = o3c.Tensor(frame.camera.K, o3c.float64)
        extrinsic = o3c.Tensor(invert_transform(frame.pose), o3c.float64)  # T_camera_world
        return depth, color, intrinsic, extrinsic

    def integrate(self, i: int) -> None:
        depth, color, intrinsic, extrinsic = self.inputs[i]
        blocks = self.grid.compute_unique_block_coordinates(depth, intrinsic, extrinsic, 1.0, MAX_RANGE)
        self.grid.integrate(blocks, depth, color, intrinsic, extrinsic, 1.0, MAX_RANGE)


def ours(frames: list[RGBDFrame]):
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VOXEL_SIZE, num_labels=NUM_LABELS))

    def integrate(i: int) -> None:
        frame = frames[i]
        points, colors, labels = frame_points(frame, max_range=MAX_RANGE)
        vmap.integrate(points, colors, labels, sensor_origin=frame.pose[:3, 3])
    return integrate, vmap


def paired(frames: list[RGBDFrame], repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """(ours ms, Open3D ms), each (repeats x frames), steady state, alternating which one runs first."""
    mine, _ = ours(frames)
    reference = Open3DReference(frames)
    for i in range(len(frames)):  # warm-up: both hold the scene
        mine(i)
        reference.integrate(i)
    a, b = np.zeros((repeats, len(frames))), np.zeros((repeats, len(frames)))
    for r in range(repeats):
        for i in range(len(frames)):
            order = ((a, mine), (b, reference.integrate)) if (r + i) % 2 == 0 else \
                ((b, reference.integrate), (a, mine))
            for out, fn in order:
                start = time.perf_counter()
                fn(i)
                out[r, i] = (time.perf_counter() - start) * 1e3
    return a, b


def sustained(frames: list[RGBDFrame], count: int) -> tuple[float, float]:
    """(ours, Open3D) frames/s over ``count`` looped frames, best of two alternating runs each."""
    mine, _ = ours(frames)
    reference = Open3DReference(frames)
    rates = {"ours": [], "open3d": []}
    for r in range(2):
        for name in (("ours", "open3d") if r == 0 else ("open3d", "ours")):
            fn = mine if name == "ours" else reference.integrate
            start = time.perf_counter()
            for i in range(count):
                fn(i % len(frames))
            rates[name].append(count / (time.perf_counter() - start))
    return max(rates["ours"]), max(rates["open3d"])


def simulated_room() -> list[RGBDFrame]:
    """24 frames of a simulated living room with ground-truth labels (remapped into NUM_LABELS bins)."""
    scene = generate_scene(900_001, "living_room", config=SimConfig(frames=24, use_lidar=False)).to_scene()
    frames = list(scene.frames)
    for frame in frames:
        frame.labels = np.where(frame.labels >= 0, frame.labels % NUM_LABELS, -1).astype(np.int32)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows, rates = [], []
    scenes = [("simulated living room", simulated_room()), ("synthetic box room", synthetic_room_frames())]
    living = living_room_frames()
    if living is not None:
        scenes.insert(0, ("living-room sample", living))
    for name, frames in scenes:
        points = int(np.mean([len(frame_points(f, max_range=MAX_RANGE)[0]) for f in frames]))
        a, b = paired(frames, args.repeats)
        ratio = a / b
        rows.append(f"| {name} | {points:,} | {np.median(a):.1f} | {np.median(b):.1f} | {np.median(ratio):.2f} "
                    f"| {np.percentile(ratio, 25):.2f}-{np.percentile(ratio, 75):.2f} |")
        mine, theirs = sustained(frames, SUSTAINED_FRAMES)
        rates.append(f"| {name} | {SUSTAINED_FRAMES} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f} |")
    print(f"\nIntegration vs Open3D VoxelBlockGrid: 640x480, {VOXEL_SIZE * 100:.0f} cm, 1 core, {args.repeats} "
          f"repeats per frame; {os.cpu_count()} CPUs, 1-min load {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after; Open3D {o3d.__version__}\n")
    print("| scene | points/frame | ours median ms | Open3D median ms | paired ratio (median) | IQR |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    print("\nSustained (geometry + colour + 20-label histograms, back-projection included), frames/s:\n")
    print("| scene | frames | ours | Open3D | ours / Open3D |\n|---|---:|---:|---:|---:|")
    print("\n".join(rates))


if __name__ == "__main__":
    main()
