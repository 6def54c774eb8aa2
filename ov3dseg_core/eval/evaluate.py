"""Evaluate a semantic voxel map (or point-wise predictions) against labelled ground-truth points.

Protocol: see metrics.py (per-class IoU/Acc, absent classes excluded from means) and confusion.py (ignore label).
Class ids are matched by name: the ground truth's ``label_names`` define the id space; a map labelled with another
vocabulary passes ``map_label_names`` and its ids are mapped by name (names the ground truth lacks become misses).
Map ids outside the class list without such a mapping raise ValueError. With a split, only its base and novel
classes are evaluated; ground-truth points of its ignore classes are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ov3dseg_core.eval.confusion import ConfusionMatrix, check_label_ids
from ov3dseg_core.eval.matching import match_points_to_voxels, voxel_purity
from ov3dseg_core.eval.metrics import SegmentationMetrics, compute_metrics
from ov3dseg_core.eval.splits import Split, name_mapping
from ov3dseg_core.labels import IGNORE_LABEL


@dataclass
class EvalReport:
    """Metrics over ``class_names`` (C) with confusion counts (C, C + 1) (last column = predicted IGNORE)."""

    class_names: list[str]
    confusion: np.ndarray
    metrics: SegmentationMetrics
    split: Split | None = None
    coverage: float | None = None  # fraction of evaluated points inside a mapped voxel
    voxel_size: float | None = None  # metres
    voxel_purity: float | None = None  # upper bound on point accuracy at voxel_size (matching.voxel_purity)

    @property
    def num_points(self) -> int:
        return int(self.confusion.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report; every metric a fraction in [0, 1], None (null) where undefined."""
        m = self.metrics
        out: dict[str, Any] = {
            "miou": m.miou, "macc": m.macc, "fmiou": m.fmiou, "fmacc": m.fmacc,
            "per_class_iou": dict(zip(self.class_names, _nullable(m.iou))),
            "per_class_acc": dict(zip(self.class_names, _nullable(m.acc))),
            "per_class_points": dict(zip(self.class_names, (int(n) for n in m.gt_points))),
            "num_points": self.num_points, "coverage": self.coverage, "voxel_size": self.voxel_size,
            "voxel_purity": self.voxel_purity,
            "classes": list(self.class_names),
            "confusion": self.confusion.tolist(),
        }
        if self.split is not None:
            out.update(split=self.split.name, base_miou=m.base_miou, novel_miou=m.novel_miou, hiou=m.hiou,
                       base_classes=[c for c in self.class_names if c in self.split.base],
                       novel_classes=[c for c in self.class_names if c in self.split.novel])
        return out


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def _lookup_table(label_names: Sequence[str], split: Split | None) -> tuple[np.ndarray, list[str]]:
    """(L + 1,) table from ground-truth ids (and -1 via the last entry) to evaluated ids, and the evaluated names."""
    if split is None:
        return name_mapping(label_names, label_names), list(label_names)
    return split.label_lookup(label_names), split.evaluated


def evaluate_labels(gt_labels: np.ndarray, pred_labels: np.ndarray, label_names: Sequence[str],
                    split: Split | None = None) -> EvalReport:
    """Point-wise evaluation: gt_labels and pred_labels (N,) int ids into ``label_names`` (-1 = ignore / none)."""
    lookup, names = _lookup_table(label_names, split)
    gt = lookup[check_label_ids(gt_labels, len(label_names), "ground-truth labels", "check label_names")]
    pred = lookup[check_label_ids(pred_labels, len(label_names), "predicted labels",
                                  "map predicted ids to these names first")]
    confusion = ConfusionMatrix(len(names))
    confusion.update(gt, pred)
    base, novel = (split.base, split.novel) if split is not None else (None, None)
    metrics = compute_metrics(confusion.counts, names, base, novel)
    return EvalReport(class_names=names, confusion=confusion.counts, metrics=metrics, split=split)


def evaluate_map(voxel_map: Any, scene_points: np.ndarray, scene_labels: np.ndarray, label_names: Sequence[str],
                 split: Split | None = None, map_label_names: Sequence[str] | None = None,
                 voxel_labels: np.ndarray | None = None) -> EvalReport:
    """Evaluate a VoxelMap against labelled points.

    voxel_map: a ``mapping.voxel_map.VoxelMap`` (uses ``keys()``, ``labels()`` and ``config.voxel_size``);
    scene_points (N, 3) metres, map frame; scene_labels (N,) int ids into ``label_names`` (-1 = unlabelled);
    map_label_names: names of the map's label ids when they differ from ``label_names``;
    voxel_labels: (M,) predicted ids in ``keys()`` order (e.g. from a model's per-voxel features) instead of the
    map's own label distribution.
    """
    scene_points = np.asarray(scene_points)
    scene_labels = np.asarray(scene_labels)
    if scene_points.ndim != 2 or scene_points.shape[1] != 3 or len(scene_points) != len(scene_labels):
        raise ValueError(f"scene points {scene_points.shape} and labels {scene_labels.shape} must be (N, 3) and (N,)")
    voxel_size = float(voxel_map.config.voxel_size)
    if voxel_labels is None:
        voxel_labels, _ = voxel_map.labels()
    voxel_labels = np.asarray(voxel_labels, dtype=np.int64)
    if map_label_names is not None:
        ids = check_label_ids(voxel_labels, len(map_label_names), "map labels", "check map_label_names")
        voxel_labels = name_mapping(map_label_names, label_names)[ids]
    else:
        check_label_ids(voxel_labels, len(label_names), "map labels",
                        "pass map_label_names to map the map's ids by name")
    pred, in_map = match_points_to_voxels(scene_points, voxel_map.keys(), voxel_labels, voxel_size)
    report = evaluate_labels(scene_labels, pred, label_names, split)
    lookup, _ = _lookup_table(label_names, split)
    evaluated = lookup[scene_labels.astype(np.int64)] != IGNORE_LABEL  # ids already checked by evaluate_labels
    report.coverage = float(in_map[evaluated].mean()) if evaluated.any() else None
    report.voxel_size = voxel_size
    report.voxel_purity = voxel_purity(scene_points[evaluated], scene_labels[evaluated], voxel_size)
    return report


def combine_reports(reports: Sequence[EvalReport]) -> EvalReport:
    """One report over several scenes: confusion counts summed (so large scenes weigh more, as in the published
    protocols that accumulate one confusion matrix over the whole validation set), coverage point-weighted."""
    if not reports:
        raise ValueError("no reports to combine")
    first = reports[0]
    if any(r.class_names != first.class_names for r in reports):
        raise ValueError("reports evaluate different class lists")
    counts = np.sum([r.confusion for r in reports], axis=0)
    base, novel = (first.split.base, first.split.novel) if first.split is not None else (None, None)
    metrics = compute_metrics(counts, first.class_names, base, novel)
    weights = np.array([r.num_points for r in reports], dtype=np.float64)
    coverage = [r.coverage for r in reports]
    combined_coverage = (float(np.dot(weights, coverage) / weights.sum())
                         if None not in coverage and weights.sum() > 0 else None)
    return EvalReport(class_names=list(first.class_names), confusion=counts, metrics=metrics, split=first.split,
                      coverage=combined_coverage, voxel_size=first.voxel_size)
