"""XMask3D live pass on a GPU: the 2D+3D semantic stage of the mapping node over a map window, per key frame.

A simulated room (``--frames`` views at ``--width`` x ``--height``) is fused into a voxel map at the model's voxel
size; each pass is ``XMask3DStage.update`` over the window within ``--radius`` metres of a camera (at most
``--max-window-voxels``) with k = 0, 1, 2 key frames waiting (k = 0: the 3D branch alone). Reported per pass (median
over ``--repeats``, after one warm-up): the whole pass (window selection, model, map write), and device-synchronised
forward times of the parts: 3D backbone, binary head, implicit captioner, diffusion (VAE + UNet), pixel decoder
(with the feature projection), mask decoder and fusion (Eq. 7); "rest" is the lifting of masks to voxels, the
class scoring and the map write. Each key frame is one view of the whole window: a pass with k >= 1 key frames
runs the 3D backbone and the binary head k times. Weights are random (the real-size architecture, no download)
unless ``--checkpoint`` names an XMask3D checkpoint: times do not depend on the weights' values.

    python benchmarks/bench_xmask3d_gpu.py [--config xmask3d_scannet] [--device cuda] [--amp] [--repeats 5]
    python benchmarks/bench_xmask3d_gpu.py --device cpu --tiny      # the xmask3d_tiny config: checks the script

Without CUDA the real-size run is refused (minutes per pass on a CPU); ``--device cpu --tiny`` runs anywhere.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ov3dseg_core.config import CONFIG_DIR, load_yaml  # noqa: E402
from ov3dseg_core.models.semantic_stage import KeyFramePolicy, XMask3DStage  # noqa: E402
from ov3dseg_core.models.xmask3d import build_xmask3d  # noqa: E402
from ov3dseg_core.sim.world import CameraConfig, SimConfig, generate_scene  # noqa: E402
from ov3dseg_core.training.evaluation import fuse_scene  # noqa: E402

PARTS = {"3D backbone": "backbone", "binary head": "binary_head", "captioner": "captioner",
         "diffusion": "diffusion", "pixel decoder": ("projection", "pixel_decoder"), "mask decoder": "mask_decoder",
         "fusion": "fusion"}
"""Reported part -> XMask3D submodule(s) whose forwards it sums."""
BRANCH_2D = ("captioner", "diffusion", "pixel decoder", "mask decoder")
"""The parts of the 2D branch proper (run once per key frame)."""
KEY_FRAMES = (0, 1, 2)


class PartTimer:
    """Forward wall time (ms) of XMask3D parts, synchronising ``device`` at each entry and exit; ``reset`` clears."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.ms: dict[str, float] = defaultdict(float)
        for part, names in PARTS.items():
            for name in (names,) if isinstance(names, str) else names:
                module = getattr(model, name)
                if module is not None:
                    module.register_forward_pre_hook(self._start)
                    module.register_forward_hook(lambda m, args, out, part=part: self._stop(m, part))
        self._started: dict[int, float] = {}

    def _start(self, module, args) -> None:
        self.sync()
        self._started[id(module)] = time.perf_counter()

    def _stop(self, module, part: str) -> None:
        self.sync()
        self.ms[part] += (time.perf_counter() - self._started.pop(id(module))) * 1e3

    def reset(self) -> None:
        self.ms.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="xmask3d_scannet", help="XMask3D config name or YAML path")
    parser.add_argument("--checkpoint", help="an XMask3D checkpoint (ov3dseg train) instead of random weights")
    parser.add_argument("--tiny", action="store_true", help="the xmask3d_tiny config and a small scene")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--frames", type=int, default=8, help="simulated camera frames fused into the map")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--radius", type=float, default=4.0, help="window radius around the camera, metres")
    parser.add_argument("--max-window-voxels", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=900_002, help="scene seed")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_xmask3d_gpu: CUDA is not available here; this benchmark times the real-size model on a GPU. "
              "Run `--device cpu --tiny` to check the script on a CPU.", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.tiny:
        print("bench_xmask3d_gpu: the real-size model takes minutes per pass on a CPU; use a CUDA device, or "
              "--tiny to check the script", file=sys.stderr)
        return 2
    if args.tiny:
        args.config, args.width, args.height, args.frames = "xmask3d_tiny", 160, 120, 4
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = load_yaml(args.config if args.config.endswith(".yaml") else CONFIG_DIR / f"{args.config}.yaml")
    if args.checkpoint:
        from ov3dseg_core.training.xmask3d import load_xmask3d
        model = load_xmask3d(args.checkpoint)
    else:
        model = build_xmask3d(config["model"])
    stage = XMask3DStage(model, KeyFramePolicy(min_translation_m=0.0, max_pending=max(KEY_FRAMES)),
                         image_size=config.get("views", {}).get("image_size"), device=device,
                         max_window_voxels=args.max_window_voxels)
    timer = PartTimer(stage.model, device)
    scene = generate_scene(args.seed, "living_room", config=SimConfig(
        frames=args.frames, use_lidar=False, camera=CameraConfig(width=args.width, height=args.height))).to_scene()
    voxel_map = fuse_scene(scene, model.cfg.voxel_size, model.cfg.feature_dim)
    frames = [f for f in scene.frames if f.pose is not None]
    center = frames[len(frames) // 2].pose[:3, 3]
    autocast = (torch.autocast("cuda", dtype=torch.float16) if args.amp and device.type == "cuda"
                else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()

    rows, pass_ms, branch_2d = [], {}, {}
    for k in KEY_FRAMES:
        totals, parts = [], defaultdict(list)
        for r in range(args.repeats + 1):
            for i in range(k):
                stage.offer_frame(frames[(r + i) % len(frames)])
            timer.reset()
            start = time.perf_counter()
            with autocast:
                result = stage.update(voxel_map, center=center, radius=args.radius)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:  # the first pass warms up (allocator, kernels)
                totals.append((time.perf_counter() - start) * 1e3)
                for part in PARTS:
                    parts[part].append(timer.ms.get(part, 0.0))
        if result.passes["2d"] != k:
            raise RuntimeError(f"expected {k} key frames in the pass, got {result.passes}")
        pass_ms[k] = float(np.median(totals))
        medians = {part: float(np.median(v)) for part, v in parts.items()}
        rest = pass_ms[k] - sum(medians.values())
        branch_2d[k] = sum(medians[p] for p in BRANCH_2D)
        rows.append(f"| {k} | {result.num_voxels:,} | {pass_ms[k]:.1f} | "
                    + " | ".join(f"{medians[p]:.1f}" for p in PARTS) + f" | {rest:.1f} |")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    peak = (f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
            if device.type == "cuda" else "")
    print(f"\nXMask3D live pass ({args.config}{', ' + args.checkpoint if args.checkpoint else ', random weights'}) "
          f"on {name}{', fp16 autocast' if args.amp and device.type == 'cuda' else ''}; key frames "
          f"{args.width}x{args.height} -> {stage.image_size or 'as is'}; voxel {model.cfg.voxel_size} m, window "
          f"radius {args.radius} m; median of {args.repeats}{peak}")
    print(f"machine load (1/5/15 min): {' '.join(f'{v:.2f}' for v in load_before)} before, "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} after; {os.cpu_count()} CPUs\n")
    print("| key frames | window voxels | pass ms | " + " | ".join(f"{p} ms" for p in PARTS) + " | rest ms |")
    print("|" + "---:|" * (len(PARTS) + 4))
    print("\n".join(rows))
    ks = [k for k in KEY_FRAMES if k]
    print(f"\n3D window alone: {pass_ms[0]:.1f} ms; each key frame adds (pass(k) - pass(0)) / k = "
          f"{', '.join(f'{(pass_ms[k] - pass_ms[0]) / k:.1f}' for k in ks)} ms (k = {', '.join(map(str, ks))}: the "
          f"binary head, the 2D branch, lifting and fusion, from the second key frame on a 3D pass too); the 2D "
          f"branch ({', '.join(BRANCH_2D)}) per key frame {', '.join(f'{branch_2d[k] / k:.1f}' for k in ks)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
