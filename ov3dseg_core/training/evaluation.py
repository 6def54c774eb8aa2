"""Evaluating a trained model the way the robot runs it: fuse a scene's frames into a voxel map, run the model
over the map (MapSegmenter), label each voxel by its nearest text embedding, and score the labelled points."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.frames import Scene, frame_points
from ov3dseg_core.eval.evaluate import EvalReport, combine_reports, evaluate_map
from ov3dseg_core.eval.splits import Split
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.map_segmenter import MapSegmenter


def fuse_scene(scene: Scene, voxel_size: float, feature_dim: int, max_range: float = 6.0,
               stride: int = 1) -> VoxelMap:
    """A colour map of all posed frames of ``scene`` with an (empty) feature layer of ``feature_dim``."""
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=voxel_size, feature_dim=feature_dim))
    for frame in scene.frames:
        if frame.pose is None:
            continue
        points, colors, _ = frame_points(frame, max_range=max_range, stride=stride)
        voxel_map.integrate(points, colors=colors, sensor_origin=frame.pose[:3, 3])
    return voxel_map


def evaluate_scene(segmenter: MapSegmenter, scene: Scene, split: Split | None, voxel_size: float) -> EvalReport:
    """Per-scene report over the split's classes (all the scene's classes without a split)."""
    if scene.points is None or scene.labels is None:
        raise ValueError(f"scene {scene.name} has no labelled points to evaluate against")
    voxel_map = fuse_scene(scene, voxel_size, segmenter.feature_dim)
    segmenter.update(voxel_map)
    return evaluate_features(segmenter, voxel_map, scene.points, scene.labels, scene.label_names, split)


def evaluate_features(segmenter: MapSegmenter, voxel_map: VoxelMap, points: np.ndarray, labels: np.ndarray,
                      label_names: Sequence[str], split: Split | None) -> EvalReport:
    """Label each voxel by its nearest class text embedding (the split's classes, else ``label_names``) and
    score the labelled ``points`` (N, 3) metres, map frame; voxels without features count as unlabelled."""
    vocabulary = split.evaluated if split is not None else list(label_names)
    with voxel_map.lock:
        features, has_features = voxel_map.features(), voxel_map.feature_weights() > 0
    voxel_labels, _ = segmenter.classify(features, vocabulary)
    return evaluate_map(voxel_map, points, labels, label_names, split=split, map_label_names=vocabulary,
                        voxel_labels=np.where(has_features, voxel_labels, -1))


def evaluate_scenes(segmenter: MapSegmenter, scenes: Sequence[Scene], split: Split,
                    voxel_size: float) -> EvalReport:
    """One report over all ``scenes`` (confusion counts accumulated)."""
    reports = [evaluate_scene(segmenter, s, split, voxel_size) for s in tqdm(scenes, desc="evaluate", unit="scene")]
    report = combine_reports(reports)
    report.voxel_purity = float(np.mean([r.voxel_purity for r in reports if r.voxel_purity is not None]))
    return report
