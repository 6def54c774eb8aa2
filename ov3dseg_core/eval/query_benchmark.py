"""The query benchmark: for every class name of a vocabulary, does the default query find the class when the scene
has it, stay silent when it does not, and point at it first?

Per class: ``present`` = the class has ground-truth points; ``found`` = the answer says found; ``top1_correct`` =
the best object's centre lies within TOP1_RADIUS_VOXELS voxels of a ground-truth point of the class (None when not
found); ``num_objects``; ``score`` = the highest voxel relevancy of the answer; ``confidence`` = the best object's
confidence (None when not found). Summary: present_recall = found / present, absent_false_alarm = found / absent,
top1_precision = top1_correct / (found and present); None where the denominator is 0.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ov3dseg_core.eval.report import _pct

TOP1_RADIUS_VOXELS = 2
"""The best object is correct when its centre lies within this many voxel sizes of a point of the class."""
SUMMARY_KEYS = ("present_recall", "absent_false_alarm", "top1_precision")


def class_record(class_points: np.ndarray, found: bool, best_center: Sequence[float] | None, num_objects: int,
                 score: float, confidence: float | None, voxel_size: float) -> dict[str, Any]:
    """The benchmark entry of one class: class_points (P, 3) ground-truth points of the class (metres, map frame;
    P = 0 when absent), best_center (3,) of the best object (None when not found)."""
    points = np.asarray(class_points, dtype=np.float64).reshape(-1, 3)
    present = len(points) > 0
    top1 = None
    if found:
        distance = np.linalg.norm(points - np.asarray(best_center, dtype=np.float64), axis=1).min(initial=np.inf)
        top1 = bool(distance <= TOP1_RADIUS_VOXELS * voxel_size)
    return {"present": present, "found": bool(found), "top1_correct": top1, "num_objects": int(num_objects),
            "score": round(float(score), 4), "confidence": None if confidence is None else round(float(confidence), 4)}


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """present_recall, absent_false_alarm and top1_precision over per-class records (of one or many scenes)."""
    records = list(records)
    present = [r for r in records if r["present"]]
    absent = [r for r in records if not r["present"]]
    found_present = [r for r in present if r["found"]]
    return {"present_recall": _ratio(len(found_present), len(present)),
            "absent_false_alarm": _ratio(sum(r["found"] for r in absent), len(absent)),
            "top1_precision": _ratio(sum(bool(r["top1_correct"]) for r in found_present), len(found_present))}


def query_report(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's "query" section: {"per_class": ..., "present_recall", "absent_false_alarm", "top1_precision"}."""
    return {"per_class": per_class, **summarize(per_class.values())}


def markdown_query(section: dict[str, Any]) -> str:
    """The query section as markdown: the three summary numbers (percent) and one row per class."""
    summary = " | ".join(_pct(section[k]) for k in SUMMARY_KEYS)
    lines = ["", "Queries (default /query per class name):", "",
             "| present recall (%) | absent false alarm (%) | top-1 precision (%) |", "|---:|---:|---:|",
             f"| {summary} |", "", "| class | present | found | top-1 | objects | score | confidence |",
             "|---|---|---|---|---:|---:|---:|"]
    for name, r in section["per_class"].items():
        top1 = "-" if r["top1_correct"] is None else ("yes" if r["top1_correct"] else "no")
        confidence = "-" if r.get("confidence") is None else f"{r['confidence']:.2f}"
        lines.append(f"| {name} | {'yes' if r['present'] else 'no'} | {'yes' if r['found'] else 'no'} | {top1} "
                     f"| {r['num_objects']} | {r['score']:.2f} | {confidence} |")
    return "\n".join(lines) + "\n"


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator
