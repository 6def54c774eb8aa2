"""Point-level confusion matrix with an ignore label.

Protocol: ground-truth points labelled IGNORE_LABEL (-1) are skipped; predictions of IGNORE_LABEL (no label, or a
point whose voxel is missing from the map) are kept in an extra last column, so they count as false negatives of
their ground-truth class and as false positives of no class. Ids outside [-1, C) raise ValueError: a class-count
mismatch is a bug upstream, never silently folded into "ignore" (map ids by name first, see evaluate.py).
"""
from __future__ import annotations

import numpy as np

from ov3dseg_core.labels import IGNORE_LABEL


def check_label_ids(ids: np.ndarray, num_classes: int, what: str,
                    hint: str = "map ids by class name before evaluating") -> np.ndarray:
    """``ids`` as (N,) int64 after checking they are integer class ids in [-1, num_classes); ValueError otherwise."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-D array of integer class ids, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    bad = (ids < IGNORE_LABEL) | (ids >= num_classes)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} ids outside [{IGNORE_LABEL}, {num_classes}) "
                         f"(e.g. {int(ids[bad][0])}) for {num_classes} classes; {hint}")
    return ids


class ConfusionMatrix:
    """Accumulated point counts ``(C, C + 1)`` int64: row = ground-truth class, column = predicted class, and the
    last column = predicted IGNORE_LABEL (a miss)."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.counts = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add points: ``gt`` and ``pred`` (N,) int class ids in [-1, C); gt == -1 is skipped."""
        c = self.num_classes
        gt = check_label_ids(gt, c, "ground-truth labels")
        pred = check_label_ids(pred, c, "predicted labels")
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.shape[0]} points but the prediction has {pred.shape[0]}")
        keep = gt != IGNORE_LABEL
        col = np.where(pred[keep] == IGNORE_LABEL, c, pred[keep])
        flat = gt[keep] * (c + 1) + col
        self.counts += np.bincount(flat, minlength=c * (c + 1)).reshape(c, c + 1)
