"""The instance layer of the voxel map: objects, not voxels.

Each voxel holds an instance id (-1 = none; stored in ``VoxelMap``'s slots, so it follows eviction and reuse) and
the map holds an ``InstanceTable``: per instance one unit embedding in the model's text space, a score in [0, 1]
and the number of model passes that observed it. Ids are rows of the table and stay with an object across passes.

One model pass over a window gives objects (masks over the window's voxels, scores, embeddings; e.g. Mosaic3D's
decoder thresholded by objectness). ``merge_pass`` folds them into the map:

1. each window voxel is owned by the best-scoring object whose mask holds it (objects that own no voxel are
   dropped);
2. the objects are matched one-to-one to the instances already in the window by voxel IoU within the window
   (Hungarian assignment, IoU >= ``iou_threshold``): a matched object keeps the instance's id (the same chair keeps
   its id), its embedding and score become running means over the passes; an unmatched object becomes a new
   instance (taking the id of an instance that no longer owns any voxel, else a new row);
3. inside the window the newest pass wins: voxels owned by an object take its id, the others become -1.

Everything is vectorised over voxels (bincounts); only the O x I assignment is solved per pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCH_IOU = 0.25
"""Smallest voxel IoU (within the window) at which a new object continues an existing instance."""


@dataclass
class InstanceTable:
    """Per instance: embeddings (I, D) float32 unit rows, scores (I,) float32 in [0, 1], passes (I,) int32."""

    embeddings: np.ndarray
    scores: np.ndarray
    passes: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "InstanceTable":
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def validated(cls, embeddings, scores, passes, dim: int) -> "InstanceTable":
        """A table from arrays (e.g. a map file's); ValueError naming the first inconsistency."""
        embeddings, scores, passes = (np.asarray(a) for a in (embeddings, scores, passes))
        n = len(scores)
        for name, array, shape, kind in (("instance_embedding", embeddings, (n, dim), "f"),
                                         ("instance_score", scores, (n,), "f"), ("instance_passes", passes, (n,), "i")):
            if array.shape != shape or array.dtype.kind != kind:
                raise ValueError(f"{name} is {array.shape} {array.dtype}, expected {shape} ({kind})")
        if not (np.isfinite(embeddings).all() and np.isfinite(scores).all()):
            raise ValueError("instance embeddings and scores must be finite")
        if n and (scores.min() < 0 or scores.max() > 1 or passes.min() < 1):
            raise ValueError("instance scores must lie in [0, 1] and passes be >= 1")
        return cls(embeddings.astype(np.float32), scores.astype(np.float32), passes.astype(np.int32))

    def __len__(self) -> int:
        return len(self.scores)

    def copy(self) -> "InstanceTable":
        return InstanceTable(self.embeddings.copy(), self.scores.copy(), self.passes.copy())


@dataclass
class PassResult:
    """What one ``merge_pass`` did: objects kept, of which matched to existing instances and new (counts)."""

    objects: int = 0
    matched: int = 0
    created: int = 0


def merge_pass(current: np.ndarray, masks: np.ndarray, scores: np.ndarray, embeddings: np.ndarray,
               table: InstanceTable, voxel_counts: np.ndarray, iou_threshold: float = MATCH_IOU,
               ) -> tuple[np.ndarray, InstanceTable, PassResult]:
    """Fold one pass's objects into the instances (see the module docstring).

    current: (V,) int instance ids of the window's voxels (-1 none); masks (O, V) bool over the same voxels;
    scores (O,) in [0, 1]; embeddings (O, D); table: the instances (not modified); voxel_counts: (len(table),)
    voxels each instance owns in the whole map before the pass (0 = its id is free). Returns the window's new ids
    (V,) int32, the updated table and counts.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float32)
    o, v = masks.shape
    current = np.asarray(current, dtype=np.int64)
    if current.shape != (v,) or scores.shape != (o,) or np.shape(embeddings) != (o, table.embeddings.shape[1]):
        raise ValueError(f"merge_pass needs (V,) ids, (O, V) masks, (O,) scores and (O, "
                         f"{table.embeddings.shape[1]}) embeddings; got {current.shape}, {masks.shape}, "
                         f"{scores.shape}, {np.shape(embeddings)}")
    owner = _owners(masks, scores)
    kept = np.flatnonzero(np.bincount(owner[owner >= 0], minlength=o))  # objects that own a voxel
    local = np.full(o, -1, np.int64)
    local[kept] = np.arange(len(kept))
    owned = owner >= 0
    owner[owned] = local[owner[owned]]
    k = len(kept)

    present, old = np.unique(current, return_inverse=True)  # instances in the window (and -1)
    old = old.reshape(-1) - int(present[0] < 0 if len(present) else 0)
    present = present[present >= 0]
    both = owned & (old >= 0)
    inter = np.bincount(owner[both] * len(present) + old[both], minlength=k * len(present)).reshape(k, len(present))
    sizes, old_sizes = np.bincount(owner[owned], minlength=k), np.bincount(old[old >= 0], minlength=len(present))
    iou = inter / np.maximum(sizes[:, None] + old_sizes[None] - inter, 1)  # (k, instances in the window)
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    good = iou[rows, cols] >= iou_threshold
    ids = np.full(k, -1, np.int64)
    ids[rows[good]] = present[cols[good]]

    table = table.copy()
    emb = _unit(np.asarray(embeddings, dtype=np.float32)[kept])
    obj_scores = scores[kept]
    matched = np.flatnonzero(ids >= 0)
    target = ids[matched]
    n = table.passes[target].astype(np.float32)
    table.embeddings[target] = _unit(table.embeddings[target] * n[:, None] + emb[matched])
    table.scores[target] = (table.scores[target] * n + obj_scores[matched]) / (n + 1)
    table.passes[target] += 1
    new = np.flatnonzero(ids < 0)
    free = np.setdiff1d(np.flatnonzero(np.asarray(voxel_counts) == 0), present)[:len(new)]
    fresh = np.arange(len(table), len(table) + len(new) - len(free))
    ids[new] = np.concatenate([free, fresh])
    table.embeddings = np.concatenate([table.embeddings, np.zeros((len(fresh), emb.shape[1]), np.float32)])
    table.scores = np.concatenate([table.scores, np.zeros(len(fresh), np.float32)])
    table.passes = np.concatenate([table.passes, np.zeros(len(fresh), np.int32)])
    table.embeddings[ids[new]] = emb[new]
    table.scores[ids[new]] = obj_scores[new]
    table.passes[ids[new]] = 1
    window_ids = np.full(v, -1, np.int32)
    window_ids[owned] = ids[owner[owned]]
    return window_ids, table, PassResult(k, len(matched), len(new))


def instance_voxel_counts(ids: np.ndarray, num_instances: int) -> np.ndarray:
    """(num_instances,) int64 voxels per instance of per-voxel ids (-1 = none)."""
    ids = np.asarray(ids)
    return np.bincount(ids[ids >= 0], minlength=num_instances)[:num_instances]


def _owners(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(V,) int64: per voxel the best-scoring object whose mask holds it, -1 where none does."""
    if masks.shape[0] == 0:
        return np.full(masks.shape[1], -1, np.int64)
    order = np.argsort(-scores, kind="stable")
    first = masks[order].argmax(axis=0)  # the first (best) mask holding each voxel
    return np.where(masks.any(axis=0), order[first], -1)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
