"""The model stage of the mapping node: an open-vocabulary model over the local map window, in the worker thread.

Runs after geometry integration on RGB-D frames whose source time is at least 1 / model_rate_hz after the
previous pass (source time keeps bag replays deterministic), over the voxels within model_window_radius of the
camera, and fuses the features into the map's float16 feature layer (ov3dseg_core.models.map_segmenter).
"""
from __future__ import annotations

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.models.map_segmenter import MapSegmenter


def load_segmenter(model: str, device: str) -> MapSegmenter:
    """Parameter ``model`` ('default' or a checkpoint path) -> MapSegmenter; FileNotFoundError naming the path."""
    return MapSegmenter.from_checkpoint(model, device=device)


class SemanticStage:
    """Frame stage ``stage(frame, voxel_map)``; counts its passes and the voxels they covered."""

    def __init__(self, segmenter: MapSegmenter, rate_hz: float, radius: float):
        self.segmenter = segmenter
        self.period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
        self.radius = radius
        self.last_stamp_ns: int | None = None
        self.passes = 0
        self.voxels = 0

    def __call__(self, frame: RGBDFrame, voxel_map: VoxelMap) -> None:
        if self.last_stamp_ns is not None and 0 <= frame.stamp_ns - self.last_stamp_ns < self.period_ns:
            return
        self.last_stamp_ns = frame.stamp_ns
        result = self.segmenter.update(voxel_map, center=frame.pose[:3, 3], radius=self.radius)
        self.passes += 1
        self.voxels += result.num_voxels
