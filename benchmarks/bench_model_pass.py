"""Model pass of the embedded default over a voxel window, and what its input check used to cost.

A window of V voxels on the walls of a box room (5 cm voxels, random colours) goes through
``MapSegmenter.update`` (window selection, backbone + heads, superpoint pooling, feature fusion into the map),
through the model alone (``MapSegmenter.features``) and through the superpoint segmentation alone
(``voxel_superpoints`` with the default's settings). In the same run, alternating: the duplicate-voxel input check as it was
(``torch.unique(rows, dim=0)`` on (V, 4) batch + coordinate rows) and as it is (1-D unique on packed keys).

    python benchmarks/bench_model_pass.py [--threads 1] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig  # noqa: E402
from ov3dseg_core.models.backbones.spunet import _packed_rows  # noqa: E402
from ov3dseg_core.models.map_segmenter import MapSegmenter  # noqa: E402
from ov3dseg_core.models.superpoints import SuperpointConfig, voxel_superpoints  # noqa: E402
from ov3dseg_core.models.voxel_inputs import grid_coordinates  # noqa: E402

VOXEL = 0.05


def box_walls(voxels: int) -> np.ndarray:
    """(V', 3) int32 voxel indices on the 6 walls of a cube with about ``voxels`` wall voxels."""
    side = int(np.sqrt(voxels / 6)) + 2
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    on_wall = ((grid == 0) | (grid == side - 1)).any(axis=1)
    return grid[on_wall].astype(np.int32) - side // 2


def window_map(voxels: int, feature_dim: int, rng) -> VoxelMap:
    keys = box_walls(voxels)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VOXEL, feature_dim=feature_dim))
    vmap.integrate(((keys + 0.5) * VOXEL).astype(np.float32),
                   colors=rng.integers(0, 256, (len(keys), 3), dtype=np.uint8))
    return vmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    segmenter = MapSegmenter.from_checkpoint("default", device=args.device)
    load_before = os.getloadavg()[0]
    rows = []
    for target in (32_000, 130_000):
        vmap = window_map(target, segmenter.feature_dim, rng)
        keys, positions, colors = vmap.keys(), vmap.positions(), vmap.colors()
        coord = torch.from_numpy(grid_coordinates(keys)).to(args.device)
        batch = torch.zeros(len(coord), dtype=torch.int64, device=args.device)
        indices = torch.cat((batch[:, None], coord.long()), dim=1).int()
        extent = coord.max(dim=0).values + 1
        cases = {
            "update": lambda: segmenter.update(vmap),
            "model": lambda: segmenter.features(keys, positions, colors),
            "superpoints": lambda: voxel_superpoints(keys, positions, colors=colors,
                                                     **vars(segmenter.superpoints or SuperpointConfig())),
            "old check": lambda: torch.unique(indices, dim=0),
            "new check": lambda: torch.unique(_packed_rows(batch, coord, extent)),
        }
        times = {name: [] for name in cases}
        for r in range(args.repeats + 1):
            for name in (list(cases) if r % 2 else list(cases)[::-1]):
                start = time.perf_counter()
                cases[name]()
                if r:
                    times[name].append((time.perf_counter() - start) * 1e3)
        t = {name: np.median(v) for name, v in times.items()}
        rows.append(f"| {len(keys):,} | {t['update']:.0f} | {t['model']:.0f} | {len(keys) / t['model'] * 1e3:,.0f} "
                    f"| {len(keys) / t['update'] * 1e3:,.0f} | {t['superpoints']:.0f} | {t['old check']:.1f} "
                    f"| {t['new check']:.2f} |")
    print(f"\nModel pass, embedded default on {args.device}, {args.threads} thread(s), {args.repeats} repeats; "
          f"1-min load {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| voxels | update ms | model ms | model voxels/s | update voxels/s | superpoints ms "
          "| old unique(dim=0) check ms | 1-D unique check ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
