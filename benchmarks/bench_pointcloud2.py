"""PointCloud2 encode/decode throughput of ov3dseg_core.msgs.pointcloud2 against a per-point Python baseline.

Cloud: x, y, z (float32), rgb (PCL packed float32), label (int32) = 20 bytes per point.
Encode: (N, 3) float32 points + (N, 3) uint8 colours + (N,) int32 labels -> PointCloud2 field dict with data bytes.
Decode: message with an array.array('B') data buffer (as rclpy delivers it) -> the same three arrays.
The baseline does the same work point by point, in the style of sensor_msgs_py's create_cloud / read_points:
arrays -> Python rows -> struct.pack_into per point, and struct.unpack_from per point -> rows -> arrays, packing and
splitting the colour with integer shifts. It is timed on a subset and its rate extrapolated.
Targets: > 20 M points/s and >= 50x the baseline.

    python benchmarks/bench_pointcloud2.py [--points 1000000] [--baseline-points 20000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import array
import os
import struct
import time
from types import SimpleNamespace

import numpy as np

from ov3dseg_core.msgs.pointcloud2 import (array_to_pointcloud2_fields, pack_rgb, pointcloud2_to_array,
                                            pointcloud2_to_xyz, unpack_rgb)

POINT_FORMAT = struct.Struct("<fffIi")
"""Baseline per-point layout: x, y, z, rgb bits, label (little endian, 20 bytes)."""

TARGET_RATE = 20e6
TARGET_SPEEDUP = 50.0


def make_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (N, 3) float32 points in metres, (N, 3) uint8 colours and (N,) int32 labels."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-20, 20, size=(n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    labels = rng.integers(-1, 20, size=n, dtype=np.int32)
    return points, colors, labels


def encode(points: np.ndarray, colors: np.ndarray, labels: np.ndarray) -> dict:
    """Vectorised encode into PointCloud2 fields."""
    cloud = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<i4")])
    cloud["x"], cloud["y"], cloud["z"] = points.T
    cloud["rgb"] = pack_rgb(colors)
    cloud["label"] = labels
    return array_to_pointcloud2_fields(cloud)


def decode(msg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised decode back to (points, colours, labels)."""
    points, _ = pointcloud2_to_xyz(msg, remove_nans=False)
    cloud = pointcloud2_to_array(msg)
    return points, unpack_rgb(cloud["rgb"]), cloud["label"].astype(np.int32)


def as_message(fields: dict) -> SimpleNamespace:
    """A duck-typed PointCloud2 whose data is an array.array('B'), like a received rclpy message."""
    msg_fields = [SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]
    return SimpleNamespace(**{**fields, "fields": msg_fields, "data": array.array("B", fields["data"].tobytes())})


def baseline_encode(points: np.ndarray, colors: np.ndarray, labels: np.ndarray) -> bytearray:
    """Per-point struct.pack_into of (x, y, z, rgb bits, label)."""
    data = bytearray(POINT_FORMAT.size * len(points))
    rows = zip(points.tolist(), colors.tolist(), labels.tolist())
    for i, ((x, y, z), (r, g, b), label) in enumerate(rows):
        POINT_FORMAT.pack_into(data, i * POINT_FORMAT.size, x, y, z, (r << 16) | (g << 8) | b, label)
    return data


def baseline_decode(data: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point struct.unpack_from back to (points, colours, labels)."""
    xyz, rgb, label = [], [], []
    for i in range(n):
        x, y, z, bits, lab = POINT_FORMAT.unpack_from(data, i * POINT_FORMAT.size)
        xyz.append((x, y, z))
        rgb.append(((bits >> 16) & 255, (bits >> 8) & 255, bits & 255))
        label.append(lab)
    return np.array(xyz, dtype=np.float32), np.array(rgb, dtype=np.uint8), np.array(label, dtype=np.int32)


def paired_seconds(fn, baseline, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall times (s) of ``repeats`` pairs of calls of ``fn`` and ``baseline``, alternating which runs first (so
    machine load hits both alike)."""
    times = np.zeros((repeats, 2))
    for r in range(repeats):
        for j in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (fn, baseline)[j]()
            times[r, j] = time.perf_counter() - start
    return times[:, 0], times[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--baseline-points", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    points, colors, labels = make_inputs(args.points)
    fields = encode(points, colors, labels)
    msg = as_message(fields)
    decoded = decode(msg)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, (points, colors, labels))), "round trip failed"

    n_base = min(args.baseline_points, args.points)
    subset = (points[:n_base], colors[:n_base], labels[:n_base])
    base_bytes = bytes(baseline_encode(*subset))
    assert base_bytes == fields["data"][:n_base * POINT_FORMAT.size].tobytes(), "baseline encode differs"
    base_decoded = baseline_decode(base_bytes, n_base)
    assert all(np.array_equal(a, b) for a, b in zip(base_decoded, subset)), "baseline decode differs"

    load_before = os.getloadavg()[0]
    timings = {
        "encode": paired_seconds(lambda: encode(points, colors, labels), lambda: baseline_encode(*subset),
                                 args.repeats),
        "decode": paired_seconds(lambda: decode(msg), lambda: baseline_decode(base_bytes, n_base), args.repeats),
    }
    print(f"PointCloud2 x, y, z, rgb, label ({fields['point_step']} B/point), {args.points:,} points; "
          f"per-point baseline on {n_base:,} points, extrapolated; {args.repeats} alternating pairs, 1-min load "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| operation | vectorised time (ms) | vectorised rate (M pts/s) | per-point rate (M pts/s) "
          "| paired speed-up (median) | target met (> 20 M/s, >= 50x) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, (ours_s, base_s) in timings.items():
        rate, base_rate = args.points / np.median(ours_s), n_base / np.median(base_s)
        speedup = float(np.median((args.points / ours_s) / (n_base / base_s)))
        met = "yes" if rate > TARGET_RATE and speedup >= TARGET_SPEEDUP else "no"
        print(f"| {name} | {np.median(ours_s) * 1e3:.1f} | {rate / 1e6:.1f} | {base_rate / 1e6:.2f} | {speedup:.0f}x "
              f"| {met} |")

if __name__ == "__main__":
    main()
