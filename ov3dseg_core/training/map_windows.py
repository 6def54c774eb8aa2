"""Training samples cut from fused voxel maps, the way the live mapper runs its model.

The mapper fuses frames into a ``VoxelMap`` and runs the backbone over the voxels within ``model_window_radius``
of the camera (``MapSegmenter.update``); the evaluation runs it over the whole fused room. Training does the
same: each scene is fused once by the same ``VoxelMap`` code (cached as ``.npz``), and a sample is a window of
that map around a camera position, with a random radius, optionally only the voxels seen up to that frame (the
map as it stood then), or the whole room. Per voxel:

- ``label``: target among the BASE classes (majority ground-truth class of the voxel's points), -1 otherwise
  (novel-class names never reach a loss);
- ``is_novel``: 1 where the voxel is annotated with a class that is not a base class (a novel class or "other
  furniture"), 0 for base classes, -1 unannotated. This is the base / not-base mask PLA's and XMask3D's binary
  head are trained on (Eq. 13): it says *where* unlabelled categories are, never *which* they are;
- caption regions: object regions made imperfect as a 2D detector or SAM would give them (a box around the
  object that takes in floor and wall, a dilated mask, a partial mask, or a miss), each with a free-form caption
  from the simulated captioner (captions.py), and a view caption of the window. Captions are the only channel
  through which novel categories reach a loss (L_mask, L_region, L_view).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset
from tqdm import tqdm

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.data.frames import Scene
from ov3dseg_core.eval.matching import match_points_to_voxels, pack_keys, voxel_indices
from ov3dseg_core.geometry.camera import backproject_depth
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.voxel_inputs import grid_coordinates, point_features
from ov3dseg_core.training.captions import CaptionerConfig, SeenObject, region_caption, view_caption

FUSED_FORMAT = 1
"""Version of the cached fused-scene files; bump it when their content changes."""


@dataclass
class FusedScene:
    """A scene fused into a voxel map (V voxels, F frames), with ground truth per voxel.

    keys (V, 3) int32 voxel indices; positions (V, 3) float32 mean point positions, metres, map frame;
    colors (V, 3) uint8; labels / instances (V,) int64 majority ground-truth class / instance of the label and
    instance pixels that fell into the voxel (-1 = none); first_seen (V,) int32 index of the first frame that observed the voxel;
    cameras (F, 3) float32 camera positions, metres, map frame.
    """

    name: str
    label_names: list[str]
    keys: np.ndarray
    positions: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    first_seen: np.ndarray
    cameras: np.ndarray


def fuse_training_scene(scene: Scene, voxel_size: float, max_range: float = 6.0) -> FusedScene:
    """Fuse all posed frames of ``scene`` into a ``VoxelMap`` like the live mapper and attach per-voxel ground
    truth: the majority class and instance of the frames' label and instance pixels that fell into each voxel
    (what an oracle mapper sees), and the first frame that observed it."""
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=voxel_size))
    observed = []
    for f, frame in enumerate(scene.frames):
        if frame.pose is None or frame.labels is None or frame.instances is None or frame.color is None:
            raise ValueError(f"scene {scene.name}: training frames need colour, labels, instances and a pose")
        points_cam, pixels = backproject_depth(frame.camera, frame.depth, min_range=0.1, max_range=max_range)
        points = transform_points(frame.pose, points_cam).astype(np.float32)
        voxel_map.integrate(points, colors=frame.color.reshape(-1, 3)[pixels], sensor_origin=frame.pose[:3, 3])
        observed.append((points, frame.labels.reshape(-1)[pixels], frame.instances.reshape(-1)[pixels],
                         frame.pose[:3, 3]))
    with voxel_map.lock:
        keys, positions, colors = voxel_map.keys(), voxel_map.positions(), voxel_map.colors()
    rows = [match_points_to_voxels(points, keys, np.arange(len(keys)), voxel_size) for points, *_ in observed]
    row = np.concatenate([r[in_map] for r, in_map in rows])
    frame_of = np.concatenate([np.full(in_map.sum(), f) for f, (_, in_map) in enumerate(rows)])
    first_seen = np.full(len(keys), len(observed) - 1, dtype=np.int64)
    np.minimum.at(first_seen, row, frame_of)
    labels = np.concatenate([o[1][in_map] for o, (_, in_map) in zip(observed, rows)])
    instances = np.concatenate([o[2][in_map] for o, (_, in_map) in zip(observed, rows)])
    return FusedScene(
        name=scene.name, label_names=list(scene.label_names), keys=keys.astype(np.int32),
        positions=positions.astype(np.float32), colors=colors, labels=_majority(row, labels, len(keys)),
        instances=_majority(row, instances, len(keys)), first_seen=first_seen.astype(np.int32),
        cameras=np.array([o[3] for o in observed], dtype=np.float32).reshape(-1, 3))


def _majority(row: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
    """(num_rows,) int64 most frequent non-negative value per row (``row`` (N,) the row of each value); -1 where
    a row has none."""
    values = np.asarray(values, dtype=np.int64)
    keep = values >= 0
    row, values = row[keep].astype(np.int64), values[keep]
    out = np.full(num_rows, IGNORE_LABEL, dtype=np.int64)
    if len(row) == 0:
        return out
    span = int(values.max()) + 1
    pairs, counts = np.unique(row * span + values, return_counts=True)
    order = np.lexsort((counts, pairs // span))  # by row, then count: the last entry per row wins
    pairs = pairs[order]
    last = np.r_[pairs[1:] // span != pairs[:-1] // span, True]
    out[pairs[last] // span] = pairs[last] % span
    return out


def cached_fused_scene(scene: Scene, voxel_size: float, cache_dir: str | Path, max_range: float = 6.0) -> FusedScene:
    """``fuse_training_scene`` once per (scene, voxel size, range), cached as an .npz under ``cache_dir``."""
    tag = hashlib.sha1(f"{scene.name}|{voxel_size}|{max_range}|{FUSED_FORMAT}".encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"fused_{Path(scene.name).name}_{tag}.npz"
    if path.is_file():
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k not in ("name", "label_names")}
            return FusedScene(name=str(data["name"]), label_names=[str(n) for n in data["label_names"]], **arrays)
    fused = fuse_training_scene(scene, voxel_size, max_range)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **vars(fused))
    return fused


@dataclass
class MapWindowConfig:
    voxel_size: float = 0.05                   # metres; the map's voxel size
    max_range: float = 6.0                     # metres; depth range fused
    radius_range: tuple[float, float] = (2.5, 5.0)   # window radius around a camera position, metres
    whole_room_prob: float = 0.2               # sample the whole fused room (what the evaluation runs)
    partial_map_prob: float = 0.5              # only voxels seen up to the window's frame (the map then)
    max_voxels: int = 60_000                   # nearest voxels kept per window
    samples_per_scene: int = 4                 # windows per scene per epoch
    augment: bool = True
    scale_range: tuple[float, float] = (0.9, 1.1)
    jitter_m: float = 0.005
    color_jitter: float = 0.05                 # in [-1, 1] colour units
    min_region_voxels: int = 8                 # smaller objects get no caption region
    box_region_prob: float = 0.3               # region = the object's box, floor and wall inside included
    dilate_region_prob: float = 0.3            # region = object voxels plus those within dilate_m
    partial_region_prob: float = 0.2           # region = the object's voxels on one side of a random plane
    dilate_m: float = 0.1
    neighbour_m: float = 1.5                   # objects within this distance can be named as context
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)


def base_targets(labels: np.ndarray, label_names: Sequence[str], base_classes: Sequence[str]) -> np.ndarray:
    """Dataset class ids -> index among ``base_classes``; novel, unknown and ignored ids -> -1."""
    lookup = np.full(len(label_names) + 1, IGNORE_LABEL, dtype=np.int64)
    for i, name in enumerate(label_names):
        if name in base_classes:
            lookup[i] = list(base_classes).index(name)
    ids = np.where((labels >= 0) & (labels < len(label_names)), labels, len(label_names))
    return lookup[ids]


def novel_targets(labels: np.ndarray, label_names: Sequence[str], base_classes: Sequence[str]) -> np.ndarray:
    """(N,) int64 binary-head targets of dataset class ids: 1 annotated but not a base class, 0 base, -1 none."""
    annotated = (labels >= 0) & (labels < len(label_names))
    return np.where(annotated, (base_targets(labels, label_names, base_classes) < 0).astype(np.int64), IGNORE_LABEL)


def base_class_weights(scenes: Sequence[FusedScene], base_classes: Sequence[str], power: float = 0.5) -> np.ndarray:
    """(B,) float32 CE weights (voxel frequency ** -power, mean 1 over present classes; absent classes 0)."""
    counts = np.zeros(len(base_classes))
    for s in scenes:
        t = base_targets(s.labels, s.label_names, base_classes)
        counts += np.bincount(t[t >= 0], minlength=len(base_classes))
    weights = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    return (weights / weights[counts > 0].mean()).astype(np.float32)


class MapWindowDataset(Dataset):
    """Windows of fused training scenes; see the module docstring.

    ``embed_text(texts) -> (n, D) tensor`` embeds captions (a cached MiniLM encoder in practice).
    """

    def __init__(self, scenes: Sequence[FusedScene], base_classes: Sequence[str],
                 embed_text: Callable[[list[str]], torch.Tensor], config: MapWindowConfig | None = None,
                 seed: int = 0):
        self.scenes = list(scenes)
        self.base_classes = list(base_classes)
        self.embed_text = embed_text
        self.cfg = config or MapWindowConfig()
        self.seed = seed
        self.epoch = 0
        for scene in self.scenes:
            missing = [n for n in self.base_classes if n not in scene.label_names]
            if missing:
                raise ValueError(f"scene {scene.name} has no classes {missing} (its classes: {scene.label_names})")

    def __len__(self) -> int:
        return len(self.scenes) * self.cfg.samples_per_scene

    def set_epoch(self, epoch: int) -> None:
        """Samples are a deterministic function of (seed, epoch, index)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        scene = self.scenes[index // self.cfg.samples_per_scene]
        select, points, feats, keys = self._sample(scene, rng)
        region_point, region_id, texts, view_text = self._captions(scene, select, rng)
        embeddings = self.embed_text(texts + [view_text]).float()
        return {
            "coord": torch.from_numpy(points),
            "grid_coord": torch.from_numpy(grid_coordinates(keys)),
            "feat": torch.from_numpy(feats),
            "label": torch.from_numpy(base_targets(scene.labels[select], scene.label_names, self.base_classes)),
            "is_novel": torch.from_numpy(novel_targets(scene.labels[select], scene.label_names, self.base_classes)),
            "region_point": torch.from_numpy(region_point),
            "region_id": torch.from_numpy(region_id),
            "mask_target": embeddings[:-1],
            "view_target": embeddings[-1],
        }

    def _sample(self, scene: FusedScene, rng: np.random.Generator):
        """One augmented window of ``scene``: voxel rows ``select`` (W,) into the scene, augmented points (W, 3)
        metres, input features (W, 4) and voxel indices (W, 3) of the augmented points, one voxel per index (a
        random one wins where augmentation merges two)."""
        select = self._window(scene, rng)
        points, feats = self._augment(scene.positions[select], scene.colors[select], rng)
        keys = voxel_indices(points, self.cfg.voxel_size)
        order = rng.permutation(len(keys))
        _, first = np.unique(pack_keys(keys[order]), return_index=True)
        keep = np.sort(order[first])
        return select[keep], points[keep], feats[keep], keys[keep]

    def _window(self, scene: FusedScene, rng: np.random.Generator) -> np.ndarray:
        """(K,) indices of the window's voxels: whole room, or within a random radius of a camera position."""
        if rng.random() < self.cfg.whole_room_prob:
            select = np.arange(len(scene.keys))
            dist = np.linalg.norm(scene.positions - scene.positions.mean(axis=0), axis=1)
        else:
            frame = int(rng.integers(len(scene.cameras)))
            dist = np.linalg.norm(scene.positions - scene.cameras[frame], axis=1)
            inside = dist <= rng.uniform(*self.cfg.radius_range)
            if rng.random() < self.cfg.partial_map_prob:
                inside &= scene.first_seen <= frame
            select = np.flatnonzero(inside)
        if len(select) > self.cfg.max_voxels:
            select = select[np.argsort(dist[select])[: self.cfg.max_voxels]]
        return select

    def _augment(self, points: np.ndarray, colors: np.ndarray, rng: np.random.Generator):
        """Rotated (about z), scaled, mirrored and jittered points (N, 3) and features (N, 4), taken before, so
        the height channel keeps the map's z."""
        feats = point_features(colors, points)
        points = points.astype(np.float32, copy=True)
        if not self.cfg.augment:
            return points, feats
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)
        centre = points.mean(axis=0)
        points = (points - centre) @ rot.T * np.float32(rng.uniform(*self.cfg.scale_range)) + centre
        if rng.random() < 0.5:
            points[:, 0] = 2 * centre[0] - points[:, 0]
        points = points + rng.normal(0, self.cfg.jitter_m, points.shape).astype(np.float32)
        feats[:, :3] = np.clip(feats[:, :3] + rng.normal(0, self.cfg.color_jitter, (1, 3)), -1, 1)
        return points.astype(np.float32), feats

    def _captions(self, scene: FusedScene, select: np.ndarray, rng: np.random.Generator):
        """Caption regions of the window's voxels ``select``: (P,) point indices and (P,) region ids (pairs; a
        point can lie in several regions), the region captions (R,) and the view caption."""
        cfg = self.cfg
        positions, instances = scene.positions[select], scene.instances[select]
        ids, inverse, sizes = np.unique(instances, return_inverse=True, return_counts=True)
        objects, members = [], []
        for k in np.flatnonzero((ids >= 0) & (sizes >= cfg.min_region_voxels)):
            member = np.flatnonzero(inverse == k)
            labels = scene.labels[select[member]]
            labels = labels[labels >= 0]
            if len(labels) == 0:
                continue
            pos = positions[member]
            objects.append(SeenObject(scene.label_names[np.bincount(labels).argmax()],
                                      scene.colors[select[member]].mean(axis=0), np.ptp(pos, axis=0)))
            members.append(member)
        centres = np.array([positions[m].mean(axis=0) for m in members]).reshape(-1, 3)
        tree = cKDTree(positions) if members else None
        region_point, region_id, texts = [], [], []
        for i, (obj, member) in enumerate(zip(objects, members)):
            near = np.linalg.norm(centres - centres[i], axis=1) <= cfg.neighbour_m
            near[i] = False
            caption = region_caption(obj, [o for o, n in zip(objects, near) if n and o.name not in ("wall", "floor")],
                                     rng, cfg.captioner)
            if caption is None:
                continue
            region = self._imperfect_region(positions, member, tree, rng)
            if len(region) == 0:
                continue
            region_point.append(region)
            region_id.append(np.full(len(region), len(texts), dtype=np.int64))
            texts.append(caption)
        view_text = view_caption(objects, rng, cfg.captioner)
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), texts, view_text
        return np.concatenate(region_point).astype(np.int64), np.concatenate(region_id), texts, view_text

    def _imperfect_region(self, positions: np.ndarray, member: np.ndarray, tree: cKDTree,
                          rng: np.random.Generator) -> np.ndarray:
        """The region a 2D mask generator would give for the object ``member`` (indices into ``positions``)."""
        cfg = self.cfg
        r = rng.random()
        pos = positions[member]
        if r < cfg.box_region_prob:
            lo, hi = pos.min(axis=0) - cfg.dilate_m, pos.max(axis=0) + cfg.dilate_m
            return np.flatnonzero(np.all((positions >= lo) & (positions <= hi), axis=1))
        r -= cfg.box_region_prob
        if r < cfg.dilate_region_prob:
            near = tree.query_ball_point(pos, cfg.dilate_m, return_sorted=False)
            return np.unique(np.concatenate([np.asarray(n, dtype=np.int64) for n in near]))
        r -= cfg.dilate_region_prob
        if r < cfg.partial_region_prob:
            normal = rng.normal(size=3)
            return member[(pos - pos.mean(axis=0)) @ normal > 0]
        return member


def collate_windows(samples: Sequence[dict]) -> dict:
    """Concatenate samples for spconv: per-point tensors stacked, ``offset`` (B,) cumulative point counts, region
    pairs shifted to batch-wide point and region indices (``mask_target`` rows follow them), ``view_target`` (B, D)."""
    counts = torch.tensor([len(s["coord"]) for s in samples])
    point_shift = torch.cumsum(counts, 0) - counts
    region_shift = np.cumsum([0] + [len(s["mask_target"]) for s in samples])[:-1]
    return {
        "coord": torch.cat([s["coord"] for s in samples]),
        "grid_coord": torch.cat([s["grid_coord"] for s in samples]),
        "feat": torch.cat([s["feat"] for s in samples]),
        "label": torch.cat([s["label"] for s in samples]),
        "is_novel": torch.cat([s["is_novel"] for s in samples]),
        "region_point": torch.cat([s["region_point"] + p for s, p in zip(samples, point_shift.tolist())]),
        "region_id": torch.cat([s["region_id"] + int(r) for s, r in zip(samples, region_shift)]),
        "mask_target": torch.cat([s["mask_target"] for s in samples]),
        "view_target": torch.stack([s["view_target"] for s in samples]),
        "offset": torch.cumsum(counts, 0),
        "batch_size": len(samples),
    }


def fused_scenes(scenes: Sequence[Scene], cfg: MapWindowConfig, cache_dir: str | Path) -> list[FusedScene]:
    """The fused (cached) versions of ``scenes``, with a progress bar."""
    return [cached_fused_scene(s, cfg.voxel_size, Path(cache_dir) / "fused", cfg.max_range)
            for s in tqdm(scenes, desc="fuse scenes", unit="scene")]
