"""Open-vocabulary 3D instance metrics (ScanNet's instance benchmark, 3D only): mAP, AP50, AP25.

Per class, predictions are sorted by score and greedily matched to unmatched ground truth of that class at an IoU
threshold; AP is the area under the interpolated precision-recall curve. mAP averages over IoU 0.50:0.95:0.05,
AP50 / AP25 at 0.5 / 0.25, over the classes present in the ground truth; base / novel split the classes by the
split; agnostic_AP50 / _AP25 score all thing masks without their labels (segmentation alone). Stuff classes
(``STUFF_CLASSES``) are left out of both sides, as ScanNet's benchmark does.

``instance_metrics`` scores masks over any per-scene element set (points, voxels); ``evaluate_map_instances``
scores a voxel map's instance layer (``mapping.instances``) against labelled ground-truth points with instance ids
(a bag's ``/ground_truth/points``): each map voxel takes the majority ground-truth instance of the points inside
it, each ground-truth instance the majority class of its points, and each map instance the class whose text
embedding is nearest to its embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ov3dseg_core.eval.matching import match_points_to_voxels
from ov3dseg_core.eval.splits import Split
from ov3dseg_core.training.map_windows import _majority

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
STUFF_CLASSES = ("wall", "floor", "ceiling")
"""Classes without instances in ScanNet's instance benchmark."""


@dataclass
class SceneInstances:
    """One scene over N elements: predicted masks (P, N) bool, scores (P,), class indices (P,) into the evaluated
    classes; ground-truth masks (G, N) bool and class indices (G,)."""

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    gt_masks: np.ndarray
    gt_labels: np.ndarray


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (K, L) of binary masks a (K, N) and b (L, N) bool."""
    inter = a.astype(np.float32) @ b.T.astype(np.float32)
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / np.maximum(union, 1.0)


def average_precision(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float:
    """Area under the interpolated precision-recall curve of predictions (scores (P,), true_positive (P,) bool)
    against num_gt ground-truth instances; nan without ground truth."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(true_positive[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / num_gt
    precision = np.maximum.accumulate(np.r_[precision, 0.0][::-1])[::-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision[:-1])) if len(tp) else 0.0


def greedy_match(iou: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """True-positive flags (P,) of predictions matched greedily, best score first, to unmatched ground truth with
    IoU >= threshold; iou (P, G)."""
    taken = np.zeros(iou.shape[1], dtype=bool)
    tp = np.zeros(iou.shape[0], dtype=bool)
    for p in np.argsort(-scores, kind="stable"):  # one step per prediction
        candidates = np.where(taken, -1.0, iou[p])
        g = int(np.argmax(candidates)) if iou.shape[1] else -1
        if g >= 0 and candidates[g] >= threshold:
            taken[g] = tp[p] = True
    return tp


def instance_metrics(scenes: Sequence[SceneInstances], classes: Sequence[str], split: Split | None = None) -> dict:
    """mAP, AP50, AP25 (all / base / novel classes), class-agnostic AP50 / AP25 and per-class AP50 (fractions;
    nan where undefined) over ``scenes``, whose labels index ``classes``."""
    things = [i for i, c in enumerate(classes) if c not in STUFF_CLASSES]
    records = {c: [] for c in things + [-1]}  # per class (-1: class-agnostic): (scores, iou (P, G)) per scene
    num_gt = dict.fromkeys(things + [-1], 0)
    for s in scenes:
        is_thing = np.isin(s.labels, things)
        for c in things + [-1]:
            pick, truth = (s.labels == c, s.gt_labels == c) if c >= 0 else (is_thing, np.isin(s.gt_labels, things))
            num_gt[c] += int(truth.sum())
            records[c].append((s.scores[pick], mask_iou(s.masks[pick], s.gt_masks[truth])))
    table = {}
    for thr in IOU_THRESHOLDS.tolist() + [0.25]:
        table[thr] = {c: average_precision(np.concatenate([s for s, _ in records[c]]),
                                           np.concatenate([greedy_match(i, s, thr) for s, i in records[c]]),
                                           num_gt[c]) for c in things + [-1]}

    def mean(thresholds, names=None) -> float:
        values = [table[t][c] for t in thresholds for c in things
                  if num_gt[c] and (names is None or classes[c] in names)]
        return float(np.mean(values)) if values else float("nan")

    out = {"mAP": mean(IOU_THRESHOLDS.tolist()), "AP50": mean([0.5]), "AP25": mean([0.25]),
           "agnostic_AP50": table[0.5][-1], "agnostic_AP25": table[0.25][-1],
           "per_class_AP50": {classes[c]: table[0.5][c] for c in things if num_gt[c]}}
    if split is not None:
        for group, names in (("base", split.base), ("novel", split.novel)):
            out.update({f"{group}_mAP": mean(IOU_THRESHOLDS.tolist(), names), f"{group}_AP50": mean([0.5], names),
                        f"{group}_AP25": mean([0.25], names)})
    return out


def _index_in(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` (N,) in ascending ``values`` (K,); -1 where absent."""
    if len(values) == 0:
        return np.full(len(ids), -1, np.int64)
    at = np.minimum(np.searchsorted(values, ids), len(values) - 1)
    return np.where(values[at] == ids, at, -1)


def evaluate_map_instances(voxel_map, points: np.ndarray, labels: np.ndarray, instances: np.ndarray,
                           label_names: Sequence[str], classes: Sequence[str], text: np.ndarray,
                           split: Split | None = None) -> dict:
    """``instance_metrics`` of a VoxelMap's instances (see the module docstring) plus counts: points (N, 3)
    metres, map frame; labels (N,) ids into ``label_names`` (-1 none); instances (N,) ground-truth instance ids
    (-1 none); classes: the evaluated class names; text (C, D) their unit text embeddings in the map's feature
    space."""
    with voxel_map.lock:
        keys, voxel_ids, table = voxel_map.keys(), voxel_map.instances(), voxel_map.instance_table()
    m = len(keys)
    voxel_of_point, _ = match_points_to_voxels(points, keys, np.arange(m), voxel_map.voxel_size)
    inside = voxel_of_point >= 0
    gt_of_voxel = _majority(voxel_of_point[inside], np.asarray(instances)[inside], m)
    gt_ids = np.unique(gt_of_voxel[gt_of_voxel >= 0])  # the ground-truth instances the map holds
    gt_local = _index_in(gt_ids, gt_of_voxel)
    point_instance = _index_in(gt_ids, np.asarray(instances))
    lookup = np.array([list(classes).index(n) if n in classes else -1 for n in label_names] + [-1])
    on = point_instance >= 0
    gt_class = _majority(point_instance[on], lookup[np.asarray(labels, dtype=np.int64)][on], len(gt_ids))
    live = np.unique(voxel_ids[voxel_ids >= 0])
    predicted = (table.embeddings[live] @ np.asarray(text, dtype=np.float32).T).argmax(1)
    keep = np.flatnonzero(gt_class >= 0)  # ground-truth instances of the evaluated classes
    scene = SceneInstances(live[:, None] == voxel_ids[None], table.scores[live], predicted,
                           keep[:, None] == gt_local[None], gt_class[keep])
    return {**instance_metrics([scene], classes, split), "map_instances": int(len(live)), "gt_instances": len(keep)}


def live_instance_report(voxel_map, embed, points: np.ndarray, labels: np.ndarray, instances: np.ndarray,
                         label_names: Sequence[str], split: Split | None = None) -> dict | None:
    """The report.json section "instances" of a map written by the live node (``evaluate_map_instances`` over the
    split's evaluated classes, else the ground truth's; null where undefined), or None when the map holds no
    instances (a model without an instance decoder). embed: texts -> (C, D) unit text embeddings in the map's
    feature space (the stage's)."""
    if not (voxel_map.instances() >= 0).any():
        return None
    classes = list(split.evaluated if split is not None else label_names)
    text = embed(classes)
    text = text.detach().cpu().numpy() if hasattr(text, "detach") else np.asarray(text)
    report = evaluate_map_instances(voxel_map, points, labels, instances, label_names, classes, text, split)
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in report.items()}


def markdown_instances(report: dict, extra: dict[str, str] | None = None) -> str:
    """The metrics of an instance report (its float or null entries, in percent; n/a = undefined) as a one-row
    markdown table, followed by the ``extra`` columns (name: formatted value)."""
    keys = [k for k, v in report.items() if isinstance(v, float) or v is None]
    cells = ["n/a" if report[k] is None or np.isnan(report[k]) else f"{100 * report[k]:.1f}" for k in keys]
    keys, cells = keys + list(extra or {}), cells + list((extra or {}).values())
    return "| " + " | ".join(keys) + " |\n|" + "---:|" * len(keys) + "\n| " + " | ".join(cells) + " |\n"
