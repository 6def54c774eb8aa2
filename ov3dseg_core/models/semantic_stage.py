"""The semantic stage of the live mapper: the model that turns a window of the voxel map into per-voxel features
in a text-embedding space, in two kinds.

- ``"3d"`` (``MapStage``): today's ``MapSegmenter``: the 3D network over the window's voxels (OpenVocab3D, SAS,
  GeoGuide, Mosaic3D checkpoints). Key frames are not used. A model with an instance decoder (Mosaic3D:
  ``window_objects``) also gives objects from the window's features, folded into the map's instance layer
  (``VoxelMap.update_instances``: ids kept across passes by voxel IoU; /query then answers from them).
- ``"2d+3d"`` (``XMask3DStage``): the full XMask3D. For each pending key frame (RGB, depth, K, pose in the map
  frame) the window's voxels are the view's points: the 3D branch runs on them and gives the global feature that
  conditions the 2D branch (diffusion UNet on the key frame's RGB, Eq. 4); the predicted masks are lifted onto the
  window voxels the key frame sees (projection with K and pose, depth test against the key frame's depth), their
  mask embeddings become F2d and Eq. 7 fuses them with F3d. Voxels seen by no key frame get F3d (Eq. 7's
  "no correspondence" row); voxels seen by several get the mean of their fused features. Without a pending key
  frame an update runs the 3D branch alone.

How it is used (the mapping node, ``ov3dseg_ros/semantic_stage.py``; ``ov3dseg calibrate``)::

    from ov3dseg_core.models.semantic_stage import KeyFramePolicy, load_semantic_stage

    stage = load_semantic_stage(model_param, device=device_param,            # "default" or a checkpoint path
                                policy=KeyFramePolicy(min_translation_m=..., min_rotation_deg=...,
                                                      max_interval_s=..., max_pending=...))
    # sensor path (any thread; cheap: a pose comparison and a reference kept under a lock). The frame's pose is
    # T_map_camera (optical frame), its depth registered to the colour image, both at the camera's resolution:
    stage.offer_frame(RGBDFrame(color, depth, camera, pose=T_map_camera, stamp_ns=stamp))
    # model worker thread (never the executor thread):
    result = stage.update(voxel_map, center=camera_position_in_map, radius=model_window_radius)
    # queries and labels in the stage's text space (CLIP for XMask3D, MiniLM for the default):
    stage.embed(["a chair"]); stage.classify(voxel_map.features(), vocabulary)

``stage.kind`` says which kind was loaded; ``result.passes`` counts the 2D-branch runs (key frames used) and the
3D-branch runs of the update. Both kinds write through ``VoxelMap.integrate_features`` (weighted running average),
so repeated passes settle the features.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.models.lifting import downsample_image, downsample_pixel_index, point_pixel_index

KINDS = ("3d", "2d+3d")
OBJECT_SCORE = 0.2
"""Default smallest objectness of an instance decoder's objects kept as map instances (the node's object_score)."""


@dataclass
class KeyFramePolicy:
    """When a frame becomes a key frame for the 2D branch: the first frame, then whenever the camera moved
    ``min_translation_m`` metres or turned ``min_rotation_deg`` degrees since the last key frame, or
    ``max_interval_s`` seconds passed (<= 0: never by time). At most ``max_pending`` key frames wait for the next
    update (older ones are dropped)."""

    min_translation_m: float = 0.5
    min_rotation_deg: float = 30.0
    max_interval_s: float = 5.0
    max_pending: int = 2

    def is_key_frame(self, pose: np.ndarray, stamp_ns: int, last_pose: np.ndarray | None,
                     last_stamp_ns: int | None) -> bool:
        """pose / last_pose (4, 4) T_map_camera; stamps in nanoseconds."""
        if last_pose is None or last_stamp_ns is None:
            return True
        if self.max_interval_s > 0 and (stamp_ns - last_stamp_ns) * 1e-9 >= self.max_interval_s:
            return True
        if np.linalg.norm(pose[:3, 3] - last_pose[:3, 3]) >= self.min_translation_m:
            return True
        cos = (np.trace(last_pose[:3, :3].T @ pose[:3, :3]) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))) >= self.min_rotation_deg


@dataclass
class StageResult:
    """num_voxels: window voxels written; seconds: model time; passes: {"2d": 2D-branch runs, "3d": 3D runs}."""

    num_voxels: int
    seconds: float
    passes: dict[str, int] = field(default_factory=lambda: {"2d": 0, "3d": 0})


def select_window(positions: np.ndarray, center: np.ndarray | None, radius: float, max_voxels: int) -> np.ndarray:
    """Indices of the voxels within ``radius`` metres of ``center`` (all when radius <= 0), the nearest
    ``max_voxels`` at most."""
    if center is None or radius <= 0:
        return np.arange(min(len(positions), max_voxels))
    dist = np.linalg.norm(positions - np.asarray(center, dtype=np.float32)[None], axis=1)
    select = np.flatnonzero(dist <= radius)
    if len(select) > max_voxels:
        select = select[np.argsort(dist[select])[:max_voxels]]
    return select


class SemanticStage:
    """Common interface: ``kind``, ``feature_dim``, ``offer_frame``, ``update``, ``embed``, ``classify``, and the
    text space: ``text_encoder`` (bare-name encoder: ``name``, ``dim``, ``encode``), ``template`` (the prompt
    template ``embed`` applies) and ``vocabulary`` (the class names that label the map by default)."""

    kind: str = ""
    text_encoder = None
    template: str = "{}"
    vocabulary: list[str] = []

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def offer_frame(self, frame: RGBDFrame) -> bool:
        """Consider a posed RGB-D frame as a key frame; returns whether it was kept."""
        return False

    def update(self, voxel_map, center: np.ndarray | None = None, radius: float = 0.0) -> StageResult:
        """Run the model on the window (voxels within ``radius`` metres of ``center``, map frame) and fuse the
        features into ``voxel_map``."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(L, D) unit text embeddings of class names or queries in the stage's feature space."""
        raise NotImplementedError

    def classify(self, features: np.ndarray, vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Labels (V,) int64 into ``vocabulary`` and cosine scores (V,) of per-voxel features (V, D)."""
        raise NotImplementedError


class MapStage(SemanticStage):
    """The 3D-only kind: a ``MapSegmenter`` (OpenVocab3D / SAS / GeoGuide / Mosaic3D checkpoint).

    object_score: the score threshold of an instance decoder's objects (``Mosaic3D.window_objects``)."""

    kind = "3d"

    def __init__(self, segmenter, object_score: float = OBJECT_SCORE):
        self.segmenter = segmenter
        self.object_score = object_score
        self.text_encoder, self.template = segmenter.text_encoder, segmenter.template
        self.vocabulary = segmenter.vocabulary

    @property
    def feature_dim(self) -> int:
        return self.segmenter.feature_dim

    def update(self, voxel_map, center=None, radius=0.0) -> StageResult:
        result = self.segmenter.update(voxel_map, center, radius)
        seconds = result.seconds
        decoder = getattr(self.segmenter.model, "window_objects", None)
        if decoder is not None and result.num_voxels:  # an instance decoder: objects into the instance layer
            t0 = time.perf_counter()
            objects = decoder(result.features, result.positions, self.object_score)
            seconds += time.perf_counter() - t0
            voxel_map.update_instances(result.keys, objects.masks.cpu().numpy(), objects.scores.cpu().numpy(),
                                       objects.embeddings.float().cpu().numpy())
        return StageResult(result.num_voxels, seconds, {"2d": 0, "3d": int(result.num_voxels > 0)})

    def embed(self, texts):
        return self.segmenter.embed(texts)

    def classify(self, features, vocabulary):
        return self.segmenter.classify(features, vocabulary)


class XMask3DStage(SemanticStage):
    """The 2D+3D kind: XMask3D on the map window and the pending key frames (see the module docstring).

    image_size: (H, W) of the training views (the checkpoint's ``views.image_size``); a key frame is resized by
    W / its width before the 2D branch (its depth test runs at full resolution); None keeps the frames' size.
    depth_abs_tol / depth_rel_tol: the voxel-visibility test (metres / fraction of depth)."""

    kind = "2d+3d"

    def __init__(self, model, policy: KeyFramePolicy | None = None, image_size: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", max_window_voxels: int = 100_000):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.text_encoder, self.template = model.text_encoder, model.cfg.prompt_template
        self.vocabulary = [*model.base_classes, *model.novel_classes]
        self.policy = policy or KeyFramePolicy()
        self.image_size = None if image_size is None else tuple(image_size)
        self.max_window_voxels = max_window_voxels
        self._pending: deque[RGBDFrame] = deque(maxlen=self.policy.max_pending)
        self._last: tuple[np.ndarray, int] | None = None
        self._lock = threading.Lock()

    @property
    def feature_dim(self) -> int:
        return self.model.cfg.feature_dim

    def offer_frame(self, frame: RGBDFrame) -> bool:
        if frame.color is None or frame.pose is None:
            return False
        with self._lock:
            last_pose, last_stamp = self._last if self._last is not None else (None, None)
            if not self.policy.is_key_frame(frame.pose, frame.stamp_ns, last_pose, last_stamp):
                return False
            self._pending.append(frame)
            self._last = (np.asarray(frame.pose), frame.stamp_ns)
        return True

    def take_key_frames(self) -> list[RGBDFrame]:
        """The pending key frames, oldest first; the queue is emptied."""
        with self._lock:
            frames = list(self._pending)
            self._pending.clear()
        return frames

    def update(self, voxel_map, center=None, radius=0.0) -> StageResult:
        with voxel_map.lock:
            positions, colors = voxel_map.positions(), voxel_map.colors()
        select = select_window(positions, center, radius, self.max_window_voxels)
        if len(select) == 0:
            return StageResult(0, 0.0)
        t0 = time.perf_counter()
        feats, passes = self.window_features(positions[select], colors[select], self.take_key_frames())
        seconds = time.perf_counter() - t0
        voxel_map.integrate_features(positions[select], feats.cpu().numpy())
        return StageResult(len(select), seconds, passes)

    @torch.no_grad()
    def window_features(self, positions: np.ndarray, colors: np.ndarray, frames: Sequence[RGBDFrame]
                        ) -> tuple[torch.Tensor, dict[str, int]]:
        """Unit features (V, D) float32 of window voxels (positions (V, 3) metres, map frame; colours (V, 3) uint8)
        from the key frames (one view each: the whole window with the frame's pixel correspondences), and the
        pass counts. Without key frames: F3d of one 3D pass."""
        from ov3dseg_core.models.xmask3d import make_view_batch

        model = self.model
        positions = np.asarray(positions, dtype=np.float32)
        views = [(self._resized(f), self._pixels(positions, f)) for f in frames]
        if not views:
            return F.normalize(model.point_features_3d(positions, colors), dim=-1), {"2d": 0, "3d": 1}
        batch = make_view_batch([image for image, _ in views], [positions] * len(views), [colors] * len(views),
                                [pixel for _, pixel in views], model.cfg.voxel_size).to(self.device)
        out = model(batch)
        fused = F.normalize(out.f_fuse, dim=-1).view(len(views), len(positions), -1)
        seen = out.has_2d.view(len(views), len(positions))
        count = seen.sum(0)
        mean_seen = (fused * seen[..., None]).sum(0) / count.clamp_min(1)[:, None]
        feats = torch.where((count > 0)[:, None], mean_seen, fused[0])  # no correspondence: F3d (Eq. 7)
        return F.normalize(feats, dim=-1).float(), {"2d": len(views), "3d": len(views)}

    def _scale(self, frame: RGBDFrame) -> float:
        return 1.0 if self.image_size is None else self.image_size[1] / frame.camera.width

    def _resized(self, frame: RGBDFrame) -> np.ndarray:
        return downsample_image(frame.color, self._scale(frame))

    def _pixels(self, positions: np.ndarray, frame: RGBDFrame) -> np.ndarray:
        inf = self.model.cfg.inference
        cam = frame.camera
        pixel = point_pixel_index(positions, cam, frame.pose, frame.depth, inf.depth_abs_tol, inf.depth_rel_tol)
        return downsample_pixel_index(pixel, cam.width, cam.height, self._scale(frame))

    def embed(self, texts):
        return F.normalize(self.model.embed_classes(list(texts)), dim=-1)

    def classify(self, features, vocabulary):
        feats = F.normalize(torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device), dim=-1)
        cosines = feats @ self.embed(vocabulary).t()
        best, labels = cosines.max(dim=-1)
        return labels.cpu().numpy(), best.cpu().numpy()


def checkpoint_kind(config: dict) -> str:
    """The stage kind ("2d+3d" for XMask3D, else "3d") of a checkpoint's config (its metadata's "config")."""
    return "2d+3d" if config.get("model", {}).get("type") == "XMask3D" else "3d"


def load_semantic_stage(model: str | Path = "default", device: str = "cpu", policy: KeyFramePolicy | None = None,
                        object_score: float = OBJECT_SCORE, **kwargs) -> SemanticStage:
    """The stage of a checkpoint written by ``ov3dseg train`` ("default" = the embedded default model): XMask3D
    checkpoints give the 2D+3D kind, all others the 3D kind (``MapSegmenter``; kwargs go to it; ``object_score``
    to ``MapStage``)."""
    from ov3dseg_core.models.map_segmenter import MapSegmenter, resolve_checkpoint
    from ov3dseg_core.training.checkpoint import read_metadata

    path = resolve_checkpoint(model)
    config = read_metadata(path)["config"]
    if checkpoint_kind(config) == "2d+3d":
        from ov3dseg_core.training.xmask3d import load_xmask3d

        image_size = config.get("views", {}).get("image_size")
        return XMask3DStage(load_xmask3d(path), policy, image_size, device=device)
    return MapStage(MapSegmenter.from_checkpoint(path, device=device, **kwargs), object_score)
