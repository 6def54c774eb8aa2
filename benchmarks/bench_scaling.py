"""Voxel map scaling, one thread: growth stalls, new-voxel frames, queries and memory from 10k to 5M voxels.

1. Growth: an empty map (max_voxels 5M, 20 labels) takes frames of the synthetic 640x480 room, each shifted to
   fresh space (about 31k new voxels a frame), until it reaches its budget, then 30 frames more (budget evictions,
   5 % of the map each). Recorded per call: how long the map's lock was held (the stall other threads see) and the
   whole call (including the index merges and evictions done outside the lock).
2. New-voxel frames at size M vs 10k: two maps (10k and M voxels, 20 labels) take the same fresh frames in turn;
   the paired ratio is time(M) / time(10k) for the same frame.
3. Queries: feature maps (384-d) at 10k / 100k / 1M voxels, floor -1 (every voxel scored against the query and 19
   negatives) and the shipped embedded default's calibrated floor (0.525),
   alternating with the memory-read floor: a NumPy pass over the int8 feature store's bytes (and over the float16
   features for comparison). Top-100 agreement of the int8 ranking with float32. Label-only maps up to 5M voxels.
4. Memory per voxel (``memory_bytes() / len``) of both kinds.

    python benchmarks/bench_scaling.py [--max-voxels 5000000] [--repeats 15]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_voxel_map import FEATURE_DIM, NUM_LABELS, NUM_NEGATIVES, random_state, synthetic_room_frames  # noqa: E402
from ov3dseg_core.data.frames import frame_points  # noqa: E402
from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig, query_features, query_labels  # noqa: E402
from ov3dseg_core.mapping.query import FEATURE_CALIBRATION, QueryCalibration  # noqa: E402

CALIBRATED = QueryCalibration(0.7, 0.525, "the embedded default's calibration (5000 steps)")


class TimedLock:
    """A re-entrant lock that records how long each outermost acquisition was held (ms)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._depth = 0
        self._since = 0.0
        self.held_ms: list[float] = []

    def __enter__(self):
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            self._since = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self.held_ms.append((time.perf_counter() - self._since) * 1e3)
        self._lock.release()


def fresh_frames(count: int, start: int = 0):
    """``count`` synthetic-room clouds (points, colours, labels, origin), each shifted 10 m further along +y so all
    its voxels are new (y shifts interleave the new keys with a map's keys in packed order)."""
    base = [(*frame_points(f), f.pose[:3, 3]) for f in synthetic_room_frames()]
    for i in range(start, start + count):
        points, colors, labels, origin = base[i % len(base)]
        shift = np.array([0.0, 20.0 + 10.0 * i, 0.0], np.float32)
        yield points + shift, colors, labels, origin + shift


def bench_growth(max_voxels: int, evicting_frames: int = 30) -> list[str]:
    """Growth of a map with budget ``max_voxels`` up to it, then ``evicting_frames`` more frames at the budget
    (each eviction evicts 5 %, ahead of the next frame)."""
    vmap = VoxelMap(VoxelMapConfig(num_labels=NUM_LABELS, max_voxels=max_voxels))
    vmap.lock = TimedLock()
    calls, held, sizes, evicted = [], [], [], []
    frames = fresh_frames(10 ** 6)
    while len(evicted) < evicting_frames:
        points, colors, labels, origin = next(frames)
        vmap.lock.held_ms.clear()
        start = time.perf_counter()
        stats = vmap.integrate(points, colors, labels, sensor_origin=origin)
        calls.append((time.perf_counter() - start) * 1e3)
        held.append(max(vmap.lock.held_ms))
        sizes.append(stats.num_voxels)
        if vmap.voxels_evicted:
            evicted.append(stats.voxels_evicted)
    held, calls, evicted = np.asarray(held), np.asarray(calls), np.asarray(evicted)
    growing, budget = slice(0, len(held) - evicting_frames), slice(len(held) - evicting_frames, None)
    rows = [f"| growth 0 -> {sizes[growing.stop - 1]:,} voxels, {growing.stop} frames of ~31k new voxels "
            f"| max {held[growing].max():.1f} ms, p99 {np.percentile(held[growing], 99):.1f} ms, median "
            f"{np.median(held[growing]):.1f} ms | max {calls[growing].max():.1f} ms, median "
            f"{np.median(calls[growing]):.1f} ms |"]
    at = budget.start + np.flatnonzero(evicted)
    rows.append(f"| at the budget ({max_voxels:,}): {evicting_frames} frames, {np.count_nonzero(evicted)} evicting "
                f"{int(evicted.max()):,} voxels | max {held[budget].max():.1f} ms (evicting frames: max "
                f"{held[at].max():.1f} ms), median {np.median(held[budget]):.1f} ms | evicting frames max "
                f"{calls[at].max():.1f} ms, others median {np.median(np.delete(calls[budget], at - budget.start)):.1f}"
                f" ms |")
    return rows


def label_map(m: int, rng) -> VoxelMap:
    return VoxelMap.from_state(VoxelMapConfig(num_labels=NUM_LABELS, max_voxels=2 * m + 1_000_000),
                               random_state(m, NUM_LABELS, 0, rng))


def bench_new_voxels(sizes: list[int], repeats: int, rng) -> list[str]:
    small = label_map(10_000, rng)
    rows = []
    for m in sizes:
        big = label_map(m, rng)
        times = np.zeros((repeats, 2))
        for r, (points, colors, labels, origin) in enumerate(fresh_frames(repeats, start=1000)):
            for j in ((0, 1) if r % 2 else (1, 0)):
                vmap = (small, big)[j]
                start = time.perf_counter()
                vmap.integrate(points, colors, labels, sensor_origin=origin)
                times[r, j] = (time.perf_counter() - start) * 1e3
        ratio = times[:, 1] / times[:, 0]
        rows.append(f"| {m:,} | {np.median(times[:, 1]):.1f} | {np.median(times[:, 0]):.1f} | {np.median(ratio):.2f} "
                    f"| {big.memory_bytes() / len(big):.0f} |")
        small = label_map(10_000, rng)  # the 10k map grew: start the next size from 10k again
    return rows


def feature_map(m: int, rng) -> tuple[VoxelMap, np.ndarray]:
    """A 384-d feature map whose first voxels hold a 1,000-voxel object near the query ``text`` (returned)."""
    state = random_state(m, NUM_LABELS, FEATURE_DIM, rng)
    text = rng.standard_normal(FEATURE_DIM).astype(np.float32)
    text /= np.linalg.norm(text)
    blob = np.argsort(np.abs(state["keys"].numpy() - state["keys"].numpy()[0]).max(axis=1), kind="stable")[:1000]
    noisy = text + rng.uniform(0.5, 1.5, (blob.size, 1)) * rng.standard_normal((blob.size, FEATURE_DIM)) / 20
    state["feature"][blob] = torch.from_numpy(noisy.astype(np.float16))
    return VoxelMap.from_state(VoxelMapConfig(num_labels=NUM_LABELS, feature_dim=FEATURE_DIM, max_voxels=2 * m),
                               state), text


def top_agreement(vmap: VoxelMap, text: np.ndarray, k: int = 100) -> float:
    """Share of the float32 top-k voxels (cosine with ``text``) that the int8 store also ranks in its top k."""
    features = vmap.features().astype(np.float32)
    exact = features @ text / np.maximum(np.linalg.norm(features, axis=1), 1e-30)
    compact = vmap.feature_similarity(text, compact=True)
    return len(set(np.argsort(-exact)[:k]) & set(np.argsort(-compact)[:k])) / k


def bench_queries(sizes: list[int], repeats: int, rng) -> list[str]:
    rows = []
    for m in sizes:
        vmap, text = feature_map(m, rng)
        negatives = rng.standard_normal((NUM_NEGATIVES, FEATURE_DIM)).astype(np.float32)
        codes = vmap._slots["feature_code"][:m].numpy().view(np.int64)
        halves = vmap._slots["feature"][:m].numpy().view(np.int64)
        cases = {
            "query, floor -1": lambda: query_features(vmap, text, negatives, FEATURE_CALIBRATION, label="q"),
            "query, floor 0.525": lambda: query_features(vmap, text, negatives, CALIBRATED, label="q"),
            "floor int8": lambda: codes.sum(),
            "floor f16": lambda: halves.sum(),
        }
        times = {name: [] for name in cases}
        for r in range(repeats + 1):
            for name in (list(cases) if r % 2 else list(cases)[::-1]):
                start = time.perf_counter()
                cases[name]()
                if r:  # the first round warms up
                    times[name].append((time.perf_counter() - start) * 1e3)
        t = {name: np.asarray(v) for name, v in times.items()}
        for name in ("query, floor -1", "query, floor 0.525"):
            rows.append(f"| features {m:,} | {name} | {np.median(t[name]):.1f} | {np.percentile(t[name], 95):.1f} "
                        f"| {np.median(t['floor int8']):.1f} | {np.median(t[name] / t['floor int8']):.2f} "
                        f"| {np.median(t['floor f16']):.1f} | {top_agreement(vmap, text):.2f} "
                        f"| {vmap.memory_bytes() / m:.0f} |")
        del vmap, codes, halves
    return rows


def bench_label_queries(sizes: list[int], repeats: int, rng) -> list[str]:
    rows = []
    names = [f"class{i}" for i in range(NUM_LABELS)]
    table = rng.standard_normal((NUM_LABELS, FEATURE_DIM)).astype(np.float32)
    query = table[5] + 0.2 * rng.standard_normal(FEATURE_DIM).astype(np.float32)
    negatives = np.delete(table, 5, axis=0)
    for m in sizes:
        vmap = label_map(m, rng)
        t = []
        for r in range(repeats + 1):
            start = time.perf_counter()
            query_labels(vmap, query, negatives, table, names, FEATURE_CALIBRATION)
            if r:
                t.append((time.perf_counter() - start) * 1e3)
        rows.append(f"| labels {m:,} | label-name query | {np.median(t):.1f} | {np.percentile(t, 95):.1f} "
                    f"| | | | | {vmap.memory_bytes() / m:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-voxels", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    growth = bench_growth(args.max_voxels)
    sizes = [s for s in (100_000, 1_000_000, 4_000_000, 5_000_000) if s <= args.max_voxels]
    new_voxels = bench_new_voxels(sizes, args.repeats, rng)
    queries = bench_queries([s for s in (10_000, 100_000, 1_000_000) if s <= args.max_voxels], args.repeats, rng)
    queries += bench_label_queries([10_000] + sizes, args.repeats, rng)
    print(f"\nVoxel map scaling: 1 thread, {args.repeats} repeats, {os.cpu_count()} CPUs, 1-min load "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| growth | lock held per call | integrate call |\n|---|---|---|\n" + "\n".join(growth))
    print("\nNew-voxel frames (synthetic room, ~31k new voxels, colour + 20 labels), paired with a 10k-voxel map:\n")
    print("| map voxels | ms at size | ms at 10k | paired ratio | B/voxel |\n|---:|---:|---:|---:|---:|")
    print("\n".join(new_voxels))
    print("\nQueries (1 thread) against the memory-read floor of the int8 feature store in the same run:\n")
    print("| map | case | median ms | p95 ms | int8 floor ms | ratio to floor | f16 read ms | top-100 agreement "
          "| B/voxel |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(queries))


if __name__ == "__main__":
    main()
