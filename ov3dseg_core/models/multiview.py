"""Multi-view 2D -> 3D feature fusion (OpenScene's protocol, used by SAS and GeoGuide): every point takes the mean
of the per-pixel features of the frames that see it, after a depth (occlusion) test.

A point at camera depth z that projects to pixel (u, v) with measured depth D = depth[v, u] is linked to that pixel
only if |z - D| <= rel_tol * D (SAS: rel_tol 0.2 on ScanNet-like data, 0.02 on Matterport-like data; LiDAR-only
outdoor data skips the test). Frames are taken with a stride (ScanNet: 1 of every 20).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.models.lifting import point_pixel_index

DEPTH_REL_TOL = {"scannet": 0.2, "matterport": 0.02}
"""SAS's depth-test tolerance sigma / D per dataset kind."""


@dataclass
class PixelFeatures:
    """Per-pixel features of one image, factorised: pixel (y, x) of an (h, w) grid has feature table[index[y, x]],
    none where index is -1. A dense teacher's (h, w, C) map is table = map.reshape(-1, C), index = arange;
    painted masks share one table row per mask. The grid may be coarser than the image (it is scaled to it).

    table: (M, C) float tensor in the text space; index: (h, w) int64 tensor.
    """

    table: torch.Tensor
    index: torch.Tensor

    @classmethod
    def dense(cls, features: torch.Tensor) -> "PixelFeatures":
        """From an (h, w, C) feature map."""
        h, w, c = features.shape
        return cls(features.reshape(h * w, c), torch.arange(h * w, device=features.device).reshape(h, w))

    def at_pixels(self, pixel: np.ndarray, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (P, C) and validity (P,) bool at image pixels v * width + u (P,) of a width x height image."""
        h, w = self.index.shape
        u, v = pixel % width, pixel // width
        cell = torch.from_numpy((v * h // height) * w + (u * w // width)).to(self.index.device)
        rows = self.index.reshape(-1)[cell]
        return self.table[rows.clamp_min(0)], rows >= 0


def fuse_multiview(points: np.ndarray, frames: Sequence[RGBDFrame],
                   features: Callable[[int, RGBDFrame], PixelFeatures], stride: int = 1,
                   rel_tol: float | None = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean 2D feature of each point over the frames that see it.

    points: (N, 3) float metres, world frame; frames: posed RGB-D frames (frames without a pose are skipped);
    features(frame_index, frame) -> that frame's PixelFeatures; stride: use frames 0, stride, 2 * stride, ...;
    rel_tol: depth test tolerance sigma / D, or None for no depth test. Returns (features (N, C) float32, zero
    where unseen; view counts (N,) int64).
    """
    total: torch.Tensor | None = None
    count = torch.zeros(len(points), dtype=torch.int64)
    for i in range(0, len(frames), stride):
        frame = frames[i]
        if frame.pose is None:
            continue
        pixel = point_pixel_index(points, frame.camera, frame.pose, None if rel_tol is None else frame.depth,
                                  abs_tol=0.0, rel_tol=0.0 if rel_tol is None else rel_tol)
        seen = np.flatnonzero(pixel >= 0)
        feats, valid = features(i, frame).at_pixels(pixel[seen], frame.camera.width, frame.camera.height)
        if not bool(valid.any()):
            continue
        feats, rows = feats[valid].float().cpu(), torch.from_numpy(seen)[valid.cpu()]
        if total is None:
            total = torch.zeros(len(points), feats.shape[1])
        total.index_add_(0, rows, feats)
        count.index_add_(0, rows, torch.ones_like(rows))
    if total is None:
        raise ValueError("no frame gave features to any point")
    return total / count.clamp_min(1)[:, None].float(), count
