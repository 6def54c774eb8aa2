"""2D-to-3D lifting of XMask3D: point-pixel correspondences (K, view matrix, depth check), back-projected binary
masks M3d, pseudo mask features F2d = M3d G2d and mask-pooled 3D embeddings G3d (Eq. 5).
"""
from __future__ import annotations

import numpy as np
import torch

from ov3dseg_core.geometry.camera import PinholeCamera, project_points
from ov3dseg_core.geometry.transforms import invert_transform, transform_points


def point_pixel_index(points: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray | None,
                      depth: np.ndarray | None = None, abs_tol: float = 0.05, rel_tol: float = 0.02) -> np.ndarray:
    """Pixel v * W + u seen by each point, or -1 (outside the image, behind the camera, or occluded).

    points: (N, 3) float, metres, world frame (camera frame when T_world_camera is None); depth: (H, W) float32
    metres (0 = invalid) registered to the camera, or None to skip the visibility test. A point is visible when
    |z - depth[v, u]| <= max(abs_tol, rel_tol * depth[v, u]) at its nearest pixel. Returns (N,) int64.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if T_world_camera is not None:
        points = transform_points(invert_transform(T_world_camera), points.astype(np.float64))
    uv, z, valid = project_points(camera, points.astype(np.float32, copy=False))
    uv = np.where(valid[:, None], uv, 0.0)
    u = np.rint(uv[:, 0]).astype(np.int64)
    v = np.rint(uv[:, 1]).astype(np.int64)
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != (camera.height, camera.width):
            raise ValueError(f"depth is {depth.shape}, camera is {camera.height}x{camera.width}")
        d = depth[v, u]
        valid &= (d > 0) & (np.abs(z - d) <= np.maximum(abs_tol, rel_tol * d))
    return np.where(valid, v * camera.width + u, -1).astype(np.int64)


def gather_pixels(maps: torch.Tensor, pixel_index: torch.Tensor) -> torch.Tensor:
    """Values of per-pixel maps (Q, H, W) at pixel_index (P,) int64 in [0, H * W) -> (P, Q)."""
    return maps.flatten(1)[:, pixel_index].t()


def exclusive_masks(mask_probs: torch.Tensor, scores: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Non-overlapping binary masks M3d from mask probabilities (P, Q) and mask scores (Q,) -> (P, Q) bool.

    Each point goes to the mask with the largest score * probability, and only if that mask's probability is at
    least ``threshold`` (the panoptic assignment of the official implementation), so each point has <= 1 mask.
    """
    if mask_probs.shape[1] == 0:
        return mask_probs.bool()
    best = (mask_probs * scores[None]).argmax(dim=1)
    one_hot = torch.nn.functional.one_hot(best, mask_probs.shape[1]).bool()
    return one_hot & (mask_probs >= threshold)


def pseudo_mask_features(m3d: torch.Tensor, g2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F2d = M3d G2d (points x masks times masks x D), divided by the number of masks covering each point
    (1 for exclusive masks, where this is exactly the paper's product). Returns (F2d (P, D), has_2d (P,) bool)."""
    m = m3d.to(g2d.dtype)
    count = m.sum(dim=1, keepdim=True)
    return (m @ g2d) / count.clamp_min(1.0), count[:, 0] > 0


def mask_pool(f3d: torch.Tensor, m3d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: G3d_i = average of F3d over the points of mask i. f3d (P, D), m3d (P, Q) bool ->
    (G3d (Q, D), point count (Q,)); empty masks give zero rows."""
    m = m3d.to(f3d.dtype)
    count = m.sum(dim=0)
    return (m.t() @ f3d) / count.clamp_min(1.0)[:, None], count


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(H, W) of an image resized by ``factor`` (rounded as ``PinholeCamera.scaled``)."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def downsample_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Area-averaged colour image: (H, W, 3) uint8 -> (h, w, 3) uint8 with (h, w) = scaled_size(H, W, factor)."""
    if factor == 1.0:
        return image
    h, w = scaled_size(*image.shape[:2], factor)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(t, size=(h, w), mode="area")
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def downsample_nearest(image: np.ndarray, factor: float) -> np.ndarray:
    """Nearest-pixel resize of a label or depth image (H, W) -> (h, w): each output pixel takes the input pixel
    under its centre."""
    if factor == 1.0:
        return image
    h, w = scaled_size(*image.shape[:2], factor)
    rows = np.minimum(((np.arange(h) + 0.5) * image.shape[0] / h).astype(np.int64), image.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * image.shape[1] / w).astype(np.int64), image.shape[1] - 1)
    return image[rows[:, None], cols[None, :]]


def downsample_pixel_index(pixel_index: np.ndarray, width: int, height: int, factor: float) -> np.ndarray:
    """Pixel indices v * W + u of a (height, width) image (-1 kept) -> indices into the image resized by
    ``factor``: the output pixel whose area contains input pixel (u, v)."""
    if factor == 1.0:
        return pixel_index
    h, w = scaled_size(height, width, factor)
    u, v = pixel_index % width, pixel_index // width
    small = (v * h // height) * w + u * w // width
    return np.where(pixel_index >= 0, small, -1).astype(np.int64)
