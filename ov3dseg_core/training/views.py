"""Training samples: windows of a few consecutive posed RGB-D views, fused and voxelised.

XMask3D trains on a view's partial point cloud ("a corner of the room"); the live mapper runs its 3D backbone
over a local window of the voxel map. A sample here is both: ``window`` consecutive frames back-projected into
the world frame, voxelised at the map's voxel size (one point per voxel), augmented, with

- ``label``: per-point training target, the index of the point's class among the BASE classes, -1 otherwise
  (novel-class labels never reach a loss);
- ``instance`` + ``mask_target``: object regions (the frames' instance images stand in for the class-agnostic
  2D masks) with the text embedding of a simulated region caption each (captions.py);
- ``view_target``: the text embedding of a view caption (XMask3D's L_view target).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.geometry.camera import backproject_depth
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.training.captions import CaptionerConfig, region_captions, view_caption


@dataclass
class ViewSampleConfig:
    voxel_size: float = 0.05          # metres; the map's voxel size
    window: int = 3                   # consecutive frames fused per sample
    window_stride: int = 2            # frames between the starts of consecutive windows
    pixel_stride: int = 4             # back-project every k-th pixel
    max_range: float = 6.0            # metres
    augment: bool = True
    scale_range: tuple[float, float] = (0.9, 1.1)
    jitter_m: float = 0.005
    color_jitter: float = 0.05        # in [-1, 1] colour units
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)


def point_features(colors: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Backbone input features (N, 4) float32: RGB in [-1, 1] and height z / 2 (metres, map frame, z up).

    The live mapper builds the same features from voxel colours and positions.
    """
    rgb = colors.astype(np.float32) / 127.5 - 1.0
    return np.concatenate([rgb, points[:, 2:3].astype(np.float32) * 0.5], axis=1)


def voxelise(points: np.ndarray, voxel_size: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of one point per occupied voxel (a random one when ``rng`` is given, else the first)."""
    order = rng.permutation(len(points)) if rng is not None else np.arange(len(points))
    keys = np.floor(points[order] / voxel_size).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return order[np.sort(first)]


def grid_coordinates(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, 3) int32 voxel indices shifted to start at 0 (spconv input)."""
    grid = np.floor(points / voxel_size).astype(np.int64)
    return (grid - grid.min(axis=0)).astype(np.int32)


def base_targets(labels: np.ndarray, label_names: Sequence[str], base_classes: Sequence[str]) -> np.ndarray:
    """Dataset class ids -> index among ``base_classes``; novel, unknown and ignored ids -> -1."""
    lookup = np.full(len(label_names) + 1, IGNORE_LABEL, dtype=np.int64)
    for i, name in enumerate(label_names):
        if name in base_classes:
            lookup[i] = list(base_classes).index(name)
    ids = np.where((labels >= 0) & (labels < len(label_names)), labels, len(label_names))
    return lookup[ids]


class ViewWindowDataset(Dataset):
    """Samples of ``window`` fused views from labelled, posed scenes; see the module docstring.

    ``embed_text(texts) -> (n, D) tensor`` embeds captions (a cached MiniLM encoder in practice).
    """

    def __init__(self, scenes: Sequence[Scene], base_classes: Sequence[str],
                 embed_text: Callable[[list[str]], torch.Tensor], config: ViewSampleConfig | None = None,
                 seed: int = 0):
        self.scenes = list(scenes)
        self.base_classes = list(base_classes)
        self.embed_text = embed_text
        self.cfg = config or ViewSampleConfig()
        self.seed = seed
        self.epoch = 0
        self.items = [(s, start) for s, scene in enumerate(self.scenes)
                      for start in range(0, max(1, len(scene.frames) - self.cfg.window + 1), self.cfg.window_stride)]
        for scene in self.scenes:
            missing = [n for n in self.base_classes if n not in scene.label_names]
            if missing:
                raise ValueError(f"scene {scene.name} has no classes {missing} (its classes: {scene.label_names})")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Samples are a deterministic function of (seed, epoch, index)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        s, start = self.items[index]
        scene = self.scenes[s]
        pts, cols, labs, insts = [], [], [], []
        for frame in scene.frames[start:start + self.cfg.window]:
            if frame.labels is None or frame.color is None or frame.pose is None:
                raise ValueError(f"scene {scene.name}: training frames need colour, labels and a pose")
            p_cam, pixels = backproject_depth(frame.camera, frame.depth, max_range=self.cfg.max_range,
                                              stride=self.cfg.pixel_stride)
            pts.append(transform_points(frame.pose, p_cam).astype(np.float32))
            cols.append(frame.color.reshape(-1, 3)[pixels])
            labs.append(frame.labels.reshape(-1)[pixels].astype(np.int64))
            insts.append(np.full(len(pixels), IGNORE_LABEL, dtype=np.int64) if frame.instances is None
                         else frame.instances.reshape(-1)[pixels].astype(np.int64))
        points, colors = np.concatenate(pts), np.concatenate(cols)
        labels, instances = np.concatenate(labs), np.concatenate(insts)
        points, feats = self._augment(points, colors, rng)
        keep = voxelise(points, self.cfg.voxel_size, rng)
        return self._sample(points[keep], feats[keep], labels[keep], instances[keep], scene.label_names, rng)

    def _augment(self, points: np.ndarray, colors: np.ndarray, rng: np.random.Generator):
        """Rotated (about z), scaled, mirrored and jittered points, and features (taken before, so the height
        channel keeps the map's z); voxelisation follows, so augmented points never share a voxel."""
        feats = point_features(colors, points)
        if not self.cfg.augment:
            return points, feats
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)
        centre = points.mean(axis=0)
        points = (points - centre) @ rot.T * rng.uniform(*self.cfg.scale_range) + centre
        if rng.random() < 0.5:
            points[:, 0] = 2 * centre[0] - points[:, 0]
        points = points + rng.normal(0, self.cfg.jitter_m, points.shape).astype(np.float32)
        feats[:, :3] = np.clip(feats[:, :3] + rng.normal(0, self.cfg.color_jitter, (1, 3)), -1, 1)
        return points.astype(np.float32), feats

    def _sample(self, points, feats, labels, instances, label_names, rng) -> dict:
        ids, inverse = np.unique(instances, return_inverse=True)
        valid_ids = ids >= 0
        region_names = []
        for k in np.flatnonzero(valid_ids):
            region_labels = labels[inverse == k]
            region_labels = region_labels[region_labels >= 0]
            region_names.append(label_names[np.bincount(region_labels).argmax()] if len(region_labels) else None)
        named = [n for n in region_names if n is not None]
        captions = region_captions(named, list(label_names), rng, self.cfg.captioner)
        caption_of = iter(captions)
        region_captions_all = [next(caption_of) if n is not None else None for n in region_names]
        # local instance index per point: position among captioned regions, -1 otherwise
        region_index = np.full(len(ids), IGNORE_LABEL, dtype=np.int64)
        kept = [i for i, cap in zip(np.flatnonzero(valid_ids), region_captions_all) if cap is not None]
        region_index[kept] = np.arange(len(kept))
        texts = [cap for cap in region_captions_all if cap is not None]
        view_text = view_caption([n for n in region_names if n is not None], rng, self.cfg.captioner)
        embeddings = self.embed_text(texts + [view_text]).float()
        return {
            "coord": torch.from_numpy(points),
            "grid_coord": torch.from_numpy(grid_coordinates(points, self.cfg.voxel_size)),
            "feat": torch.from_numpy(feats),
            "label": torch.from_numpy(base_targets(labels, label_names, self.base_classes)),
            "instance": torch.from_numpy(region_index[inverse]),
            "mask_target": embeddings[:-1],
            "view_target": embeddings[-1],
        }


def collate_views(samples: Sequence[dict]) -> dict:
    """Concatenate samples for spconv: per-point tensors stacked, ``offset`` (B,) cumulative point counts,
    instance ids made unique across the batch (``mask_target`` rows follow them), ``view_target`` (B, D)."""
    counts = torch.tensor([len(s["coord"]) for s in samples])
    region_counts = [len(s["mask_target"]) for s in samples]
    shifts = np.concatenate([[0], np.cumsum(region_counts)[:-1]])
    instance = torch.cat([torch.where(s["instance"] >= 0, s["instance"] + int(k), s["instance"])
                          for s, k in zip(samples, shifts)])
    return {
        "coord": torch.cat([s["coord"] for s in samples]),
        "grid_coord": torch.cat([s["grid_coord"] for s in samples]),
        "feat": torch.cat([s["feat"] for s in samples]),
        "label": torch.cat([s["label"] for s in samples]),
        "instance": instance,
        "mask_target": torch.cat([s["mask_target"] for s in samples]),
        "view_target": torch.stack([s["view_target"] for s in samples]),
        "offset": torch.cumsum(counts, 0),
        "batch_size": len(samples),
    }
