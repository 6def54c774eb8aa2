"""Open-vocabulary 3D instance evaluation of Mosaic3D's decoder (Tab. 2 protocol, 3D only) on fused scenes.

Each scene is fused into a voxel map like the mapper's (``map_windows.cached_fused_scene``); ground-truth
instances are the voxels' majority instance ids, with the majority class of their voxels. Predicted objects
(``voxel_objects``) are labelled by their embedding's nearest class text among the evaluated classes; stuff
classes (wall, floor, ceiling) are left out of both sides, as ScanNet's instance benchmark does. Per class,
predictions are sorted by score and greedily matched to unmatched ground truth at an IoU threshold; AP is the
area under the interpolated precision-recall curve. mAP averages over IoU 0.50:0.95:0.05, AP50 / AP25 at 0.5 /
0.25, over the classes present in the ground truth; base / novel split the classes by the split; agnostic_AP50 /
_AP25 score the thing masks without their labels (the decoder's segmentation alone).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ov3dseg_core.eval.splits import Split
from ov3dseg_core.models.methods.mosaic3d.data_engine import STUFF, mask_iou, proposal_masks
from ov3dseg_core.models.methods.mosaic3d.model import Mosaic3D, voxel_objects
from ov3dseg_core.training.map_windows import FusedScene, _majority, cached_fused_scene

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


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


def scene_instances(scene: FusedScene, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth instance masks (G, V) bool of a fused scene and their class index into ``classes`` (G,);
    instances whose majority class is not in ``classes`` are dropped."""
    ids = np.where(scene.instances >= 0, scene.instances, -1)
    _, local = np.unique(ids, return_inverse=True)
    local = np.where(ids >= 0, local - int((ids < 0).any()), -1)
    masks = proposal_masks(local)
    inside = local >= 0
    label = _majority(local[inside], scene.labels[inside], len(masks))
    lookup = {name: i for i, name in enumerate(classes)}
    cls = np.array([lookup.get(scene.label_names[c], -1) if c >= 0 else -1 for c in label], dtype=np.int64)
    return masks[cls >= 0], cls[cls >= 0]


def evaluate_instances(model: Mosaic3D, text: torch.Tensor, classes: Sequence[str], scenes: Sequence[FusedScene],
                       split: Split | None = None, score_threshold: float = 0.05) -> dict:
    """mAP, AP50, AP25 (all / base / novel classes), class-agnostic AP50 / AP25, per-class AP50 and seconds per
    scene of the decoder's objects on ``scenes``; text (C, D) the unit embeddings of ``classes``."""
    things = [i for i, c in enumerate(classes) if c not in STUFF]
    records = {c: [] for c in things + [-1]}  # per class (-1: class-agnostic): (scores, iou (P, G)) per scene
    num_gt = dict.fromkeys(things + [-1], 0)
    seconds = []
    for scene in scenes:
        t0 = time.perf_counter()
        objects = voxel_objects(model, scene.keys, scene.positions, scene.colors, score_threshold)
        seconds.append(time.perf_counter() - t0)
        label = (objects.embeddings @ text.to(objects.embeddings).t()).argmax(1).cpu().numpy()
        pred, scores = objects.masks.cpu().numpy(), objects.scores.cpu().numpy()
        gt, gt_cls = scene_instances(scene, classes)
        is_thing = np.isin(label, things)
        for c in things + [-1]:
            pick, truth = (label == c, gt_cls == c) if c >= 0 else (is_thing, np.ones(len(gt), bool))
            num_gt[c] += int(truth.sum())
            records[c].append((scores[pick], mask_iou(pred[pick], gt[truth])))
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
           "per_class_AP50": {classes[c]: table[0.5][c] for c in things if num_gt[c]},
           "seconds_per_scene": float(np.mean(seconds)) if seconds else float("nan")}
    if split is not None:
        for group, names in (("base", split.base), ("novel", split.novel)):
            out.update({f"{group}_mAP": mean(IOU_THRESHOLDS.tolist(), names), f"{group}_AP50": mean([0.5], names),
                        f"{group}_AP25": mean([0.25], names)})
    return out


def format_instances(report: dict) -> str:
    """The summary numbers (percent) as a markdown table."""
    keys = [k for k, v in report.items() if isinstance(v, float) and k != "seconds_per_scene"]
    cells = [f"{100 * report[k]:.1f}" if report[k] == report[k] else "n/a" for k in keys]
    return ("| " + " | ".join(keys) + " | s/scene |\n|" + "---|" * (len(keys) + 1) + "\n| " + " | ".join(cells)
            + f" | {report['seconds_per_scene']:.2f} |")


def instance_report(segmenter, scenes: Sequence, split: Split, voxel_size: float, cache_dir: str | Path,
                    out_dir: str | Path) -> dict:
    """``evaluate_instances`` of a MapSegmenter holding a Mosaic3D on dataset scenes (fused and cached under
    cache_dir, like the training scenes), over the split's evaluated classes; writes OUT/instances.json."""
    fused = [cached_fused_scene(s, voxel_size, Path(cache_dir) / "fused") for s in scenes]
    report = evaluate_instances(segmenter.model, segmenter.embed(split.evaluated), split.evaluated, fused, split)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "instances.json").write_text(json.dumps(report, indent=2))
    return report
