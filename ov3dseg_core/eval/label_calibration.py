"""Calibrating how a model labels voxels: the margin (cosine) taken off the classes it was trained on with labels
(calibrated stacking), fitted for the best harmonic mean of base and novel mIoU on validation scenes and stored in
the checkpoint's metadata (``extra["labelled_margin"]``), where MapSegmenter reads it.

A model whose segmentation loss saw labels only for the base classes scores them higher than the novel names it
learned from captions; without a margin novel voxels drift to the nearest base class. The margin is fitted on
validation seeds (never training or held-out ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ov3dseg_core.eval.evaluate import EvalReport, combine_reports, evaluate_map
from ov3dseg_core.eval.splits import Split
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.models.map_segmenter import label_offsets

MARGINS = tuple(float(m) for m in np.round(np.arange(0.0, 0.2501, 0.01), 3))
"""Margins tried (cosine units)."""


@dataclass
class SceneCosines:
    """One validation scene's feature map, scored against the split's class names once for every margin."""

    voxel_map: VoxelMap
    cosines: np.ndarray
    """(V, L) float32 cosine of each voxel's feature to each evaluated name."""
    has_features: np.ndarray
    """(V,) bool, voxels the model wrote features for."""
    points: np.ndarray
    """(N, 3) labelled ground-truth points, metres, map frame."""
    labels: np.ndarray
    """(N,) class ids into label_names."""
    label_names: list[str]


def scene_cosines(segmenter, voxel_map: VoxelMap, points: np.ndarray, labels: np.ndarray,
                  label_names: Sequence[str], vocabulary: Sequence[str]) -> SceneCosines:
    """The cosines of ``segmenter``'s (a MapSegmenter) features in ``voxel_map`` to ``vocabulary``."""
    with voxel_map.lock:
        features, weights = voxel_map.features(), voxel_map.feature_weights()
    cosines = segmenter.cosines(features, vocabulary).cpu().numpy()
    return SceneCosines(voxel_map, cosines, weights > 0, points, labels, list(label_names))


def report_at(scenes: Sequence[SceneCosines], split: Split, labelled: Sequence[str], margin: float) -> EvalReport:
    """The pooled report over ``scenes`` when the ``labelled`` names compete with ``margin`` off their cosines."""
    offsets = label_offsets(split.evaluated, labelled, margin)
    reports = []
    for scene in scenes:
        voxel_labels = np.where(scene.has_features, np.argmax(scene.cosines + offsets, axis=1), -1)
        reports.append(evaluate_map(scene.voxel_map, scene.points, scene.labels, scene.label_names, split=split,
                                    map_label_names=split.evaluated, voxel_labels=voxel_labels))
    return combine_reports(reports)


def fit_labelled_margin(scenes: Sequence[SceneCosines], split: Split, labelled: Sequence[str],
                        margins: Sequence[float] = MARGINS) -> tuple[float, list[dict[str, Any]]]:
    """The margin with the highest hIoU (ties: the smaller margin) and the table of every margin tried
    ({margin, base_miou, novel_miou, hiou}, fractions)."""
    table = []
    for margin in margins:
        m = report_at(scenes, split, labelled, margin).metrics
        table.append({"margin": margin, "base_miou": m.base_miou, "novel_miou": m.novel_miou, "hiou": m.hiou})
    best = max(table, key=lambda row: (row["hiou"] or 0.0, -row["margin"]))
    return best["margin"], table
