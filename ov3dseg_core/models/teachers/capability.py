"""SAS's Annotation-free Model Capability Construction (Sec. 3.2): each teacher's per-class capability S in [0, 1]^K.

For every class j, m images of "a good photo of <class>" are synthesised with a pseudo ground-truth mask each
(``ImageSynthesizer``); every teacher segments them, and S_j = (1/m) sum_i mIoU(M_ij^pseudo, M_ij^teacher) (Eq. 3,
4), where a teacher's mask is the pixels it assigns to class j (argmax of its text-space features over the
vocabulary) and mIoU is the mean of the foreground and background IoU of two binary masks.

- ``DiffusionSAMSynthesizer``: the paper's route, as a plug-in: a text-to-image model (Stable Diffusion) gives the
  image and its class-token cross-attention maps, aggregated over layers and steps (Eq. 2), thresholded into a
  coarse mask, points sampled inside it prompt SAM, whose mask is the pseudo ground truth. The two models are
  callables supplied by the user (local weights).
- ``SimulatedSynthesizer``: the offline stand-in used here: a rendered label image with one object of the class
  (an ellipse of random size and place) in front of a wall and a floor; its pseudo mask is the object's mask with
  a pixel of boundary error (what SAM gives). The teachers see it exactly as they see simulated scenes, so S
  measures their per-class habits without any annotation of the training scenes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.models.multiview import PixelFeatures

PROMPT = "a good photo of {}"


@dataclass
class SyntheticImage:
    frame: RGBDFrame          # the image (depth and camera are placeholders for image-only teachers)
    mask: np.ndarray          # (H, W) bool pseudo ground-truth mask of the prompted class


def aggregate_cross_attention(maps: torch.Tensor) -> torch.Tensor:
    """Eq. 2: M_bar = 1 / (Y Z) sum_{y, z} M^{y,z} / max(M^{y,z}) of one token's maps (Y layers, Z steps, H, W),
    resized to a common (H, W) -> (H, W)."""
    peak = maps.flatten(2).amax(dim=2).clamp_min(1e-12)[..., None, None]
    return (maps / peak).mean(dim=(0, 1))


def binary_miou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the foreground and background IoU of two binary masks of equal shape."""
    ious = []
    for x, y in ((a, b), (~a, ~b)):
        union = np.logical_or(x, y).sum()
        ious.append(np.logical_and(x, y).sum() / union if union else 1.0)
    return float(np.mean(ious))


def class_mask(features: PixelFeatures, vocab_text: torch.Tensor, class_index: int, height: int,
               width: int) -> np.ndarray:
    """(H, W) bool: image pixels whose teacher feature is nearest (cosine) to vocabulary entry ``class_index``."""
    pixel = np.arange(height * width)
    feats, valid = features.at_pixels(pixel, width, height)
    label = (torch.nn.functional.normalize(feats.float(), dim=-1) @ vocab_text.t()).argmax(dim=1)
    return ((label == class_index) & valid).numpy().reshape(height, width)


class ImageSynthesizer(ABC):
    @abstractmethod
    def __call__(self, class_name: str, index: int) -> SyntheticImage | None:
        """Image ``index`` of class ``class_name``, or None when the class cannot be synthesised."""


class DiffusionSAMSynthesizer(ImageSynthesizer):
    """Stable Diffusion + SAM (the paper's route). ``generate(prompt, seed) -> (rgb (H, W, 3) uint8, attention
    (Y, Z, H, W) of the class token)``; ``segment(rgb, points (P, 2) x, y) -> (H, W) bool``."""

    def __init__(self, generate: Callable[[str, int], tuple[np.ndarray, torch.Tensor]],
                 segment: Callable[[np.ndarray, np.ndarray], np.ndarray], threshold: float = 0.5,
                 num_prompts: int = 3, seed: int = 0):
        self.generate, self.segment = generate, segment
        self.threshold, self.num_prompts, self.seed = threshold, num_prompts, seed

    def __call__(self, class_name: str, index: int) -> SyntheticImage | None:
        rgb, attention = self.generate(PROMPT.format(class_name), self.seed + index)
        coarse = (aggregate_cross_attention(attention) >= self.threshold).numpy()
        ys, xs = np.nonzero(coarse)
        if len(ys) == 0:
            return None
        pick = np.random.default_rng((self.seed, index)).choice(len(ys), min(self.num_prompts, len(ys)), False)
        mask = self.segment(rgb, np.stack([xs[pick], ys[pick]], axis=1))
        h, w = mask.shape
        camera = PinholeCamera(width=w, height=h, fx=w, fy=w, cx=(w - 1) / 2, cy=(h - 1) / 2)
        return SyntheticImage(RGBDFrame(rgb, np.ones((h, w), np.float32), camera), mask)


class SimulatedSynthesizer(ImageSynthesizer):
    """Offline stand-in (see the module docstring); ``label_names`` are the simulator's class names."""

    def __init__(self, label_names: Sequence[str], width: int = 160, height: int = 120, seed: int = 0):
        self.label_names, self.width, self.height, self.seed = list(label_names), width, height, seed
        self.camera = PinholeCamera(width=width, height=height, fx=width, fy=width, cx=(width - 1) / 2,
                                    cy=(height - 1) / 2)

    def __call__(self, class_name: str, index: int) -> SyntheticImage | None:
        if class_name not in self.label_names:
            return None
        rng = np.random.default_rng((self.seed, self.label_names.index(class_name), index))
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w]
        horizon = int(h * rng.uniform(0.45, 0.7))
        background = np.where(yy < horizon, 0, 1)
        centre = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
        axes = rng.uniform([0.1 * w, 0.1 * h], [0.35 * w, 0.4 * h])
        obj = ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 <= 1.0
        if class_name in ("wall", "floor"):  # a surface fills its part of the image
            obj = background == (0 if class_name == "wall" else 1)
        names = ["wall", "floor", class_name]
        labels = np.array([self.label_names.index(n) if n in self.label_names else -1 for n in names])
        instances = np.where(obj, 2, background).astype(np.int32)
        color = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8).repeat(h, 0).repeat(w, 1)
        frame = RGBDFrame(color, np.ones((h, w), np.float32), self.camera, pose=np.eye(4),
                          labels=labels[instances].astype(np.int32), instances=instances)
        pseudo = ndimage.binary_dilation(obj) if rng.random() < 0.5 else ndimage.binary_erosion(obj)
        return SyntheticImage(frame, pseudo)


def estimate_capability(vocabulary: Sequence[str], vocab_text: torch.Tensor, synthesize: ImageSynthesizer,
                        teachers: Mapping[str, Callable[[int, RGBDFrame], PixelFeatures]],
                        images_per_class: int = 8, default: float = 0.5) -> dict[str, np.ndarray]:
    """Eq. 3-5: per teacher, (K,) float32 capabilities over ``vocabulary`` (text embeddings (K, D), unit);
    classes that cannot be synthesised get ``default``."""
    scores = {name: np.full(len(vocabulary), default, dtype=np.float32) for name in teachers}
    for j, class_name in enumerate(vocabulary):
        images = [synthesize(class_name, i) for i in range(images_per_class)]
        images = [im for im in images if im is not None]
        if not images:
            continue
        for name, teacher in teachers.items():
            ious = [binary_miou(im.mask, class_mask(teacher(10_000 * j + i, im.frame), vocab_text, j,
                                                    *im.mask.shape)) for i, im in enumerate(images)]
            scores[name][j] = np.mean(ious)
    return scores
