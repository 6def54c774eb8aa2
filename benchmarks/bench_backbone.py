"""Sparse U-Net backbone speed and memory: forward and forward+backward of SpUNet14A / SpUNet34C.

Input: a synthetic room (floor and walls of an 8 x 6 x 3 m box plus six box-shaped objects), voxelised at 5.5 cm
(about 52k voxels) and 2.8 cm (about 203k voxels), RGB features, one scene per batch. Prints a table of median wall
times and peak memory of the first pass (CPU: process peak RSS above the pre-forward level, Linux only; CUDA: max
allocated above the pre-forward level). Each configuration runs in a fresh process.

    python benchmarks/bench_backbone.py [--device cpu|cuda] [--repeats 3] [--models SpUNet14A SpUNet34C]
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ov3dseg_core.models.backbones import SpUNet14A, SpUNet34C

MODELS = {"SpUNet14A": SpUNet14A, "SpUNet34C": SpUNet34C}
VOXEL_SIZES = (0.055, 0.028)


def room_points(rng: np.random.Generator, spacing: float) -> np.ndarray:
    """(N, 3) float32 points, metres, on the surfaces of a synthetic room, about ``spacing`` apart."""
    def plane(origin, u, v):
        n_u, n_v = int(np.linalg.norm(u) / spacing), int(np.linalg.norm(v) / spacing)
        a, b = np.meshgrid(np.linspace(0, 1, n_u), np.linspace(0, 1, n_v), indexing="ij")
        return origin + a.reshape(-1, 1) * u + b.reshape(-1, 1) * v

    def box(corner, size):
        x, y, z = (np.eye(3) * np.asarray(size)).tolist()
        corner = np.asarray(corner, dtype=float)
        top = corner + np.array([0, 0, size[2]])
        return [plane(corner, x, y), plane(top, x, y), plane(corner, x, z), plane(corner, y, z),
                plane(corner + x, y, z), plane(corner + y, x, z)]

    faces = box((0, 0, 0), (8.0, 6.0, 3.0))[:1] + box((0, 0, 0), (8.0, 6.0, 3.0))[2:]  # no ceiling
    for _ in range(6):
        size = rng.uniform(0.4, 1.8, 3) * np.array([1, 1, 0.8])
        faces += box(rng.uniform(0.2, 6.0, 3) * np.array([1, 0.8, 0]), size)
    points = np.concatenate(faces)
    return points.astype(np.float32)


def voxel_input(voxel_size: float, device: torch.device) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    coords = np.unique(np.floor(room_points(rng, voxel_size / 2) / voxel_size).astype(np.int64), axis=0)
    coords -= coords.min(axis=0)
    grid = torch.from_numpy(coords).to(device)
    return {
        "grid_coord": grid,
        "feat": torch.rand(len(coords), 3, device=device),
        "offset": torch.tensor([len(coords)], device=device),
    }


def peak_rss_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the current baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_kib() * 1024


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return peak_rss_kib() * 1024


def measure(
    model: torch.nn.Module, data: dict[str, torch.Tensor], backward: bool, device: torch.device
) -> tuple[float, int]:
    """(seconds, peak bytes above the baseline) of one forward (+ backward) pass."""
    model.zero_grad(set_to_none=True)
    baseline = reset_peak(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        features, f3d = model(data, return_global=True)
        if backward:
            (features.square().mean() + f3d.square().mean()).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, peak_bytes(device) - baseline


def run_job(name: str, voxel_size: float, backward: bool, device_name: str, repeats: int) -> tuple[int, float, int]:
    """(voxels, median seconds, peak bytes) for one configuration, in a fresh process.

    The peak is taken on the first (cold) pass: later passes reuse memory the allocator already holds, which the
    process RSS cannot see.
    """
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = MODELS[name](3, 64).to(device).train()
    data = voxel_input(voxel_size, device)
    _, peak = measure(model, data, backward, device)
    seconds = statistics.median(measure(model, data, backward, device)[0] for _ in range(repeats))
    return len(data["feat"]), seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    jobs = [(name, size, backward) for name in args.models for size in VOXEL_SIZES for backward in (False, True)]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for name, size, backward in tqdm(jobs, desc="backbone benchmark"):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            voxels, seconds, peak = pool.submit(run_job, name, size, backward, args.device, args.repeats).result()
        rows.append((name, voxels, "fwd+bwd" if backward else "fwd", seconds, peak))
    print(f"\ndevice: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"median of {args.repeats} after a cold pass (the peak-memory pass)")
    print(f"{'model':<10} {'voxels':>8} {'pass':<8} {'time [s]':>9} {'peak mem [MiB]':>15}")
    for name, voxels, kind, seconds, memory in rows:
        print(f"{name:<10} {voxels:>8} {kind:<8} {seconds:>9.3f} {memory / 2**20:>15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
