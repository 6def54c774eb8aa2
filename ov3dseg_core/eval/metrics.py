"""Semantic segmentation metrics from a confusion matrix (see confusion.py for its layout).

Protocol (as in PLA / the ScanNet benchmark, per class c over all evaluated points):
- IoU_c = TP / (TP + FP + FN) and Acc_c = TP / (TP + FN), fractions in [0, 1]. Points predicted IGNORE count in FN.
- Classes with no ground-truth points are absent: their IoU and Acc are undefined (NaN here, null in reports) and
  they are left out of every mean. Their false positives still lower the IoU of the classes they were taken from.
- mIoU / mAcc: means over present classes. f-mIoU / f-mAcc: the same without wall, floor and ceiling.
- base / novel mIoU: means over the present classes of each set; hIoU = 2 B N / (B + N) (0 when B + N = 0).
  A mean over an empty set (no present class) is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

BACKGROUND_CLASSES = ("wall", "floor", "ceiling")
"""Classes left out of f-mIoU / f-mAcc (foreground means)."""


@dataclass
class SegmentationMetrics:
    """Per-class arrays (C,) float64 (NaN = class absent from the ground truth) and the means (None = no class)."""

    iou: np.ndarray
    acc: np.ndarray
    gt_points: np.ndarray  # (C,) int64 ground-truth points per class
    miou: float | None
    macc: float | None
    fmiou: float | None
    fmacc: float | None
    base_miou: float | None = None
    novel_miou: float | None = None
    hiou: float | None = None


def per_class_iou_acc(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iou, acc, gt_points)`` from confusion counts (C, C + 1); NaN where a class has no ground truth."""
    counts = np.asarray(counts, dtype=np.int64)
    c = counts.shape[0]
    if counts.ndim != 2 or counts.shape[1] != c + 1:
        raise ValueError(f"confusion counts must have shape (C, C + 1), got {counts.shape}")
    tp = np.diagonal(counts[:, :c]).astype(np.float64)
    gt = counts.sum(axis=1)
    predicted = counts[:, :c].sum(axis=0)
    union = gt + predicted - tp
    present = gt > 0
    iou = np.full(c, np.nan)
    acc = np.full(c, np.nan)
    iou[present] = tp[present] / union[present]
    acc[present] = tp[present] / gt[present]
    return iou, acc, gt


def mean_present(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Mean of the non-NaN ``values`` (optionally only where ``mask``); None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values) if mask is None else (~np.isnan(values) & mask)
    return float(values[keep].mean()) if keep.any() else None


def harmonic_iou(base: float | None, novel: float | None) -> float | None:
    """hIoU = 2 B N / (B + N); 0 when both are 0, None when either is undefined."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def compute_metrics(counts: np.ndarray, class_names: Sequence[str], base: Sequence[str] | None = None,
                    novel: Sequence[str] | None = None) -> SegmentationMetrics:
    """All metrics from confusion counts (C, C + 1) over ``class_names`` (C); base and novel names (both given)
    add the split means."""
    names = list(class_names)
    iou, acc, gt = per_class_iou_acc(counts)
    if len(names) != iou.shape[0]:
        raise ValueError(f"{len(names)} class names for a confusion matrix over {iou.shape[0]} classes")
    foreground = np.array([n not in BACKGROUND_CLASSES for n in names], dtype=bool)
    metrics = SegmentationMetrics(
        iou=iou, acc=acc, gt_points=gt, miou=mean_present(iou), macc=mean_present(acc),
        fmiou=mean_present(iou, foreground), fmacc=mean_present(acc, foreground))
    if base is not None and novel is not None:
        unknown = sorted((set(base) | set(novel)) - set(names))
        if unknown:
            raise ValueError(f"base/novel classes {unknown} are not among the evaluated classes")
        metrics.base_miou = mean_present(iou, np.isin(names, list(base)))
        metrics.novel_miou = mean_present(iou, np.isin(names, list(novel)))
        metrics.hiou = harmonic_iou(metrics.base_miou, metrics.novel_miou)
    return metrics
