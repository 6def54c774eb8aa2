"""Semantic update with the embedded default model: one model pass over the local map window (the live mapper's
model stage) at several window radii, on a simulated room fused at 5 cm; then /query scoring over the result.

    python benchmarks/bench_semantic.py [--threads N] [--repeats R] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ov3dseg_core.eval.query_calibration import read_calibration
from ov3dseg_core.mapping.query import query_embeddings, query_features
from ov3dseg_core.models.map_segmenter import MapSegmenter, resolve_checkpoint
from ov3dseg_core.sim.world import SimConfig, generate_scene
from ov3dseg_core.training.evaluation import fuse_scene


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scene = generate_scene(900_001, "living_room", config=SimConfig(frames=24, use_lidar=False)).to_scene()
    segmenter = MapSegmenter.from_checkpoint("default", device=args.device)
    voxel_map = fuse_scene(scene, 0.05, segmenter.feature_dim)
    centre = scene.frames[len(scene.frames) // 2].pose[:3, 3]
    print(f"Semantic update: embedded default on {args.device}, {args.threads} thread(s), {len(voxel_map):,} voxels "
          f"in the map, load average {os.getloadavg()[0]:.1f}\n")
    print("| window radius (m) | voxels | median ms | min ms | voxels/s (median) |")
    print("|---:|---:|---:|---:|---:|")
    for radius in (1.5, 2.5, 4.0, 0.0):
        n = segmenter.update(voxel_map, center=centre, radius=radius).num_voxels
        times = timed(lambda: segmenter.update(voxel_map, center=centre, radius=radius), args.repeats)
        med = statistics.median(times)
        print(f"| {radius if radius > 0 else 'whole map'} | {n:,} | {med:.0f} | {min(times):.0f} | "
              f"{n / med * 1e3:,.0f} |")
    query, negatives = query_embeddings("sofa", segmenter.vocabulary, segmenter.embed, segmenter.text_encoder.encode)
    calibration = read_calibration(resolve_checkpoint("default"))
    times = timed(lambda: query_features(voxel_map, query, negatives, calibration, label="sofa"), 20)
    print(f"\n/query scoring + grouping on this map (text embedding cached): median {statistics.median(times):.1f} ms, "
          f"max {max(times):.1f} ms")


if __name__ == "__main__":
    main()
