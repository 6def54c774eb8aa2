"""Calibrating a model's query decision (relevancy threshold and cosine floor, see ov3dseg_core.mapping.query) on
validation scenes, and storing it in the model checkpoint's metadata (``extra["query"]``), where the mapping node,
``ov3dseg eval`` and ``ov3dseg demo`` read it.

Validation scenes are simulated with seeds VALIDATION_SEEDS (training uses 0.., held-out evaluation 100000..).
Each is fused into a voxel map, the model runs over the whole map once (as ``ov3dseg evaluate`` does), and every
class name of the model's split is queried as the node queries it (negatives: the model's vocabulary). The grid
search keeps the (threshold, floor) with the highest present_recall - absent_false_alarm (ties: higher
top1_precision, then the stricter threshold and floor).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ov3dseg_core.eval.query_benchmark import class_record, summarize
from ov3dseg_core.mapping.query import (FEATURE_CALIBRATION, QueryCalibration, decide, group_voxels,
                                        query_embeddings)
from ov3dseg_core.mapping.voxel_map import VoxelMap

VALIDATION_SEEDS = range(50000, 50024)
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.901, 0.05), 3))
"""Relevancy thresholds tried."""
FLOORS = (-1.0, *(float(f) for f in np.round(np.arange(0.5, 0.801, 0.025), 3)))
"""Cosine floors tried (-1 = none)."""
QUERY_KEY = "query"
"""Key of the calibration in a checkpoint's ``extra`` metadata."""


@dataclass
class ClassScores:
    """One class name queried on one map: what the decision needs, computed once for every grid point."""

    name: str
    keys: np.ndarray
    """(M, 3) int voxel indices."""
    voxel_size: float
    query_cosine: np.ndarray
    """(M,) cos(f, q), -inf where a voxel has no feature."""
    hardest_negative: np.ndarray
    """(M,) max over the negatives of cos(f, n_i)."""
    class_points: np.ndarray
    """(P, 3) ground-truth points of the class, metres (P = 0: absent)."""


def class_scores(segmenter, voxel_map: VoxelMap, points: np.ndarray, labels: np.ndarray,
                 label_names: Sequence[str], classes: Sequence[str]) -> list[ClassScores]:
    """Query cosines of every name in ``classes`` on a feature map of ``segmenter`` (a MapSegmenter or a semantic
    stage: ``vocabulary``, ``embed``, ``text_encoder``), against the
    labelled ground truth (points (N, 3) metres, labels (N,) ids into label_names)."""
    keys = voxel_map.keys()
    out = []
    for name in classes:
        query, negatives = query_embeddings(name, segmenter.vocabulary, segmenter.embed,
                                            segmenter.text_encoder.encode)
        cosine = voxel_map.feature_similarity(np.vstack([query, negatives]))
        ids = [i for i, n in enumerate(label_names) if n == name]
        out.append(ClassScores(name, keys, voxel_map.voxel_size, cosine[:, 0],
                               np.max(cosine[:, 1:], axis=1, initial=-np.inf), points[np.isin(labels, ids)]))
    return out


def record(scores: ClassScores, calibration: QueryCalibration, min_voxels: int) -> dict[str, Any]:
    """The query benchmark entry of one class under ``calibration`` (as the node would answer by default)."""
    score, matches = decide(scores.query_cosine, scores.hardest_negative, calibration)
    objects, _ = group_voxels(scores.keys[matches], score[matches], scores.voxel_size, min_voxels=min_voxels)
    best = objects[0] if objects else None
    return class_record(scores.class_points, best is not None, None if best is None else best.center, len(objects),
                        float(score.max(initial=0.0)), None if best is None else best.confidence, scores.voxel_size)


def fit_calibration(scores: Sequence[ClassScores], min_voxels: int, source: str,
                    ) -> tuple[QueryCalibration, dict[str, float | None]]:
    """The grid point with the best present_recall - absent_false_alarm over ``scores``, and its summary."""
    best_key, best = None, None
    for threshold, floor in itertools.product(THRESHOLDS, FLOORS):
        calibration = QueryCalibration(threshold, floor, source)
        summary = summarize(record(s, calibration, min_voxels) for s in scores)
        key = ((summary["present_recall"] or 0.0) - (summary["absent_false_alarm"] or 0.0),
               summary["top1_precision"] or 0.0, threshold, floor)
        if best_key is None or key > best_key:
            best_key, best = key, (calibration, summary)
    return best


def read_calibration(checkpoint: str | Path) -> QueryCalibration:
    """The query calibration stored in a checkpoint, or FEATURE_CALIBRATION when it has none; ValueError when the
    stored one is malformed."""
    from ov3dseg_core.training.checkpoint import read_metadata

    stored = read_metadata(checkpoint)["extra"].get(QUERY_KEY)
    return FEATURE_CALIBRATION if stored is None else QueryCalibration.from_dict(stored)


def calibration_entry(calibration: QueryCalibration, details: dict[str, Any]) -> dict[str, Any]:
    """The ``extra["query"]`` metadata entry: threshold, floor, calibrated_on and ``details``."""
    return {"threshold": calibration.threshold, "floor": calibration.floor, "calibrated_on": calibration.source,
            **details}


def write_calibration(checkpoint: str | Path, calibration: QueryCalibration, details: dict[str, Any],
                      out: str | Path | None = None) -> Path:
    """Rewrite ``checkpoint`` (or write a copy to ``out``) atomically with ``extra["query"]``; tensors, config and
    vocabulary are kept as they are."""
    from ov3dseg_core.training.checkpoint import update_extra

    return update_extra(checkpoint, {QUERY_KEY: calibration_entry(calibration, details)}, out)
