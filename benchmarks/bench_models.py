"""Forward time and peak memory of XMask3D's components, at toy and at the paper's size, on the CPU and on CUDA.

    python benchmarks/bench_models.py [--sizes tiny real] [--devices cpu cuda] [--repeats 3] [--batch 1]

One view per sample: tiny = 64x64 image and 4k points (xmask3d_tiny); real = 240x320 image (the official ScanNet
input size) and 40k points (xmask3d_scannet: SD 1.5 UNet + VAE, CLIP ViT-L/14, SpUNet34C; random weights, about
6 GB of memory to build). Times: median of --repeats runs after one warm-up, torch.no_grad() except
the training step (forward + Eq. 8 loss + backward). Memory: peak torch.cuda.max_memory_allocated above the memory
in use before the call (CUDA), or peak resident-set growth sampled every millisecond (CPU; an estimate).
Where spconv cannot be imported (e.g. a CUDA machine without spconv's CUDA build), the 3D rows, the full forward
and the training step are skipped and the 2D-branch parts are built from the config sections on their own.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ov3dseg_core.config import from_dict, load_yaml  # noqa: E402
from ov3dseg_core.models.captioner import CaptionerConfig, ImplicitCaptioner  # noqa: E402
from ov3dseg_core.models.diffusion_features import (DiffusionConfig, DiffusionFeatureExtractor,  # noqa: E402
                                                    MultiScaleProjection)
from ov3dseg_core.models.mask_decoder import MaskDecoder, MaskDecoderConfig  # noqa: E402
from ov3dseg_core.models.maskclip import MaskCLIP  # noqa: E402
from ov3dseg_core.models.pixel_decoder import PixelDecoder, PixelDecoderConfig  # noqa: E402

SIZES = {"tiny": ("xmask3d_tiny", (64, 64), 4_000), "real": ("xmask3d_scannet", (240, 320), 40_000)}


@dataclass
class Parts:
    diffusion: Any
    projection: Any
    pixel_decoder: Any
    mask_decoder: Any
    captioner: Any
    maskclip: Any
    model: Any = None  # the full XMask3D where spconv is available


def build_parts(config: str, device: str) -> Parts:
    try:
        from ov3dseg_core.models.xmask3d import build_xmask3d
    except ImportError as exc:
        print(f"# full model unavailable ({exc}); building the 2D branch only", file=sys.stderr)
    else:
        m = build_xmask3d(config).to(device).eval()
        return Parts(m.diffusion, m.projection, m.pixel_decoder, m.mask_decoder, m.captioner, m.maskclip, m)
    data = load_yaml(config)["model"]
    dcfg = from_dict(DiffusionConfig, data["diffusion"])
    diffusion = DiffusionFeatureExtractor(dcfg)
    projection = MultiScaleProjection(diffusion.taps, dcfg.projection_dim, dcfg.min_stride, dcfg.max_stride)
    pd = from_dict(PixelDecoderConfig, data["pixel_decoder"])
    md = from_dict(MaskDecoderConfig, data["mask_decoder"])
    pixel_decoder = PixelDecoder(projection.out_strides, dcfg.projection_dim, pd.dim, pd.mask_dim, pd.num_heads,
                                 pd.ffn_dim, pd.num_layers, pd.num_points)
    mask_decoder = MaskDecoder(pd.dim, data["feature_dim"], md.hidden_dim, md.num_queries, md.num_heads, md.ffn_dim,
                               md.num_layers, pd.mask_dim, len(pixel_decoder.transformer_strides))
    cap = from_dict(CaptionerConfig, data["captioner"])
    captioner = ImplicitCaptioner(256, cap.latent_dim, diffusion.num_tokens, diffusion.cross_attention_dim,
                                  diffusion.time_embed_dim)  # 256: SpUNet34C's bottleneck width
    maskclip = MaskCLIP.from_open_clip(data["text_encoder"]["model_name"])
    parts = Parts(diffusion, projection, pixel_decoder, mask_decoder, captioner, maskclip)
    for name in ("diffusion", "projection", "pixel_decoder", "mask_decoder", "captioner", "maskclip"):
        getattr(parts, name).to(device).eval()
    return parts


def synthetic_batch(model, image_size: tuple[int, int], num_points: int, batch: int, seed: int = 0):
    """Random views: images, points in a 3 m box, 80 % of them seen at a random pixel, base labels."""
    from ov3dseg_core.models.xmask3d import make_view_batch

    rng = np.random.default_rng(seed)
    h, w = image_size
    k = len(model.base_classes)
    images, points, colors, pixels, labels, novel, label_images = [], [], [], [], [], [], []
    for _ in range(batch):
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        points.append((rng.random((num_points, 3)) * 3.0).astype(np.float32))
        colors.append(rng.integers(0, 256, (num_points, 3), dtype=np.uint8))
        pix = rng.integers(0, h * w, num_points)
        pix[rng.random(num_points) < 0.2] = -1
        pixels.append(pix)
        labels.append(rng.integers(-1, k, num_points))
        novel.append(rng.integers(0, 2, num_points))
        quadrants = np.zeros((h, w), np.int64)
        quadrants[h // 2:] += 2
        quadrants[:, w // 2:] += 1
        label_images.append(quadrants % k)
    captions = model.embed_captions(["a room"] * batch)
    return make_view_batch(images, points, colors, pixels, model.cfg.voxel_size, labels, novel, label_images,
                           captions)


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator statistics, or sampled RSS on the CPU."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc = psutil.Process()
            self.base = self.proc.memory_info().rss
            self.rss_peak = self.base
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.rss_peak, self.proc.memory_info().rss) - self.base


def measure(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of fn() after one warm-up."""
    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.peak / 2 ** 20


def bench(size: str, device: str, repeats: int, batch: int) -> list[tuple[str, float, float]]:
    config, image_size, num_points = SIZES[size]
    parts = build_parts(config, device)
    h, w = image_size
    div = parts.diffusion.size_divisibility
    ph, pw = h + -h % div, w + -w % div
    image = torch.rand(batch, 3, ph, pw, device=device)
    prefix_dim = parts.captioner.adapter.in_features
    null = parts.diffusion.null_condition
    rows = []
    with torch.no_grad():
        tokens, offset = parts.captioner(torch.randn(batch, prefix_dim, device=device), null)
        feats = parts.diffusion(image, tokens, offset)
        ms = parts.projection(feats, (ph, pw))
        mask_features, levels = parts.pixel_decoder(ms)
        preds = parts.mask_decoder(levels, mask_features)
        logits = preds[-1].mask_logits
        steps = [
            ("captioner", lambda: parts.captioner(torch.randn(batch, prefix_dim, device=device), null)),
            ("diffusion: VAE + UNet (frozen)", lambda: parts.diffusion(image, tokens, offset)),
            ("feature projection + pixel decoder", lambda: parts.pixel_decoder(parts.projection(feats, (ph, pw)))),
            ("mask decoder", lambda: parts.mask_decoder(levels, mask_features)),
            ("MaskCLIP (G_CLIP)", lambda: parts.maskclip(image[..., :h, :w], logits)),
        ]
        model = parts.model
        if model is not None:
            data = synthetic_batch(model, image_size, num_points, batch).to(device)
            voxels = {"grid_coord": data.grid_coord, "feat": data.feat, "offset": data.offset}
            steps = [("3D backbone", lambda: model.backbone(voxels, return_global=True)),
                     ("binary head", lambda: model.binary_head(voxels))] + steps
            steps.append(("full forward (both branches, lifting, fusion)", lambda: model(data)))
        for name, fn in tqdm(steps, desc=f"{size}/{device}", leave=False):
            rows.append((name, *measure(fn, device, repeats)))
    if parts.model is not None and (device == "cuda" or size == "tiny"):
        model.train()

        def step():
            total, _ = model.loss(data, model(data), progress=1e9)
            total.backward()
            model.zero_grad(set_to_none=True)

        rows.append(("training step (forward + loss + backward)", *measure(step, device, repeats)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "real"], choices=sorted(SIZES))
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="views per forward")
    args = parser.parse_args()
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device"))
    print(f"{'size':<5} {'device':<6} {'component':<48} {'time ms':>10} {'peak MiB':>10}")
    for size in args.sizes:
        for device in devices:
            for name, seconds, mib in bench(size, device, args.repeats, args.batch):
                print(f"{size:<5} {device:<6} {name:<48} {seconds * 1e3:>10.1f} {mib:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
