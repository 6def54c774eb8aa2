"""Text queries against a voxel map: request validation, per-voxel scores, selection and grouping into objects.

Scores are cosine similarities in [-1, 1]. A query keeps the voxels scoring >= threshold, then the top_k best
(top_k = 0 keeps all), and groups them into 26-connected components of voxels ("objects").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ov3dseg_core.mapping.voxel_map import KEY_LIMIT, VoxelMap, key_offsets, pack_keys

MAX_QUERY_CHARS = 256
"""Longest accepted query text, in characters after stripping white space."""

_NEIGHBOUR_OFFSETS = key_offsets(torch.tensor([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                                                for dz in (-1, 0, 1) if (dx, dy, dz) > (0, 0, 0)])).numpy()
"""Packed-key offsets of the 13 lexicographically positive 26-neighbours (each neighbour pair is found once)."""


class QueryError(ValueError):
    """A query that cannot be answered as asked (bad text, limits, embeddings or map)."""


@dataclass
class ObjectGroup:
    """A 26-connected group of matching voxels."""

    label: str
    """The query's label (feature queries) or the voxels' label name (label queries)."""
    score: float
    """Best voxel score in the group."""
    mean_score: float
    center: np.ndarray
    """(3,) float64 centre of the group's axis-aligned voxel box, metres, map frame."""
    size: np.ndarray
    """(3,) float64 extent of that box in metres (one voxel = voxel_size)."""
    num_voxels: int


@dataclass
class QueryResult:
    """Matching voxels, best first, and their groups, best first."""

    indices: np.ndarray
    """(K,) int64 voxel indices into the map's accessor order at query time."""
    scores: np.ndarray
    """(K,) float32 cosine similarity."""
    positions: np.ndarray
    """(K, 3) float32 mean voxel positions, metres, map frame."""
    objects: list[ObjectGroup]


def validate_query(text, top_k, threshold) -> str:
    """The stripped query text, or QueryError naming the problem.

    text: str, or bytes decoded strictly as UTF-8; 1..MAX_QUERY_CHARS characters after stripping.
    top_k: integer >= 0. threshold: number in [-1, 1].
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise QueryError(f"query text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(text, str):
        raise QueryError(f"query text must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("query text is not valid UTF-8 (it holds unpaired surrogates)") from None
    text = text.strip()
    if not text:
        raise QueryError("query text is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query text has {len(text)} characters; at most {MAX_QUERY_CHARS} are allowed")
    _check_limits(top_k, threshold)
    return text


def query_features(voxel_map: VoxelMap, text_embedding, top_k: int = 0, threshold: float = 0.0, label: str = "",
                   min_voxels: int = 1) -> QueryResult:
    """Voxels whose fused feature is most similar to ``text_embedding`` (D,) (normalised here).

    Objects are labelled ``label`` (the query text); groups with fewer than ``min_voxels`` voxels are dropped.
    """
    _check_limits(top_k, threshold)
    dim = voxel_map.config.feature_dim
    if dim == 0:
        raise QueryError("the map stores no features (feature_dim=0); use query_labels")
    text = _unit_rows(text_embedding, "text embedding").reshape(-1)
    if text.size != dim:
        raise QueryError(f"text embedding has {text.size} values, the map's features have {dim}")
    with voxel_map.lock:
        scores = voxel_map.feature_similarity(text)
        chosen = select_voxels(scores, top_k, threshold)
        keys, positions = voxel_map.keys(chosen), voxel_map.positions(chosen)
    objects = group_voxels(keys, scores[chosen], voxel_map.voxel_size, default_label=label, min_voxels=min_voxels)
    return QueryResult(chosen, scores[chosen], positions, objects)


def query_labels(voxel_map: VoxelMap, text_embedding, label_embeddings, label_names: Sequence[str], top_k: int = 0,
                 threshold: float = 0.0, min_voxels: int = 1) -> QueryResult:
    """Query a label-only map: a voxel's score is cosine(text, embedding of its argmax label's name).

    label_embeddings: (L, D) embeddings of ``label_names`` (L = the map's num_labels), e.g. from the same text
    encoder as ``text_embedding`` (D,), so that "couch" finds voxels labelled "sofa". Voxels without a label never
    match. Groups connect voxels of the same label only and carry that label's name.
    """
    _check_limits(top_k, threshold)
    names = list(label_names)
    num_labels = voxel_map.config.num_labels
    if num_labels == 0:
        raise QueryError("the map stores no labels (num_labels=0)")
    text = _unit_rows(text_embedding, "text embedding").reshape(-1)
    table = _unit_rows(label_embeddings, "label embeddings")
    if len(names) != num_labels or table.shape != (num_labels, text.size):
        raise QueryError(f"need {num_labels} label names and ({num_labels}, {text.size}) label embeddings, got "
                         f"{len(names)} names and {table.shape}")
    label_scores = (table @ text).astype(np.float32)
    with voxel_map.lock:
        labels, _ = voxel_map.labels()
        scores = np.where(labels >= 0, label_scores[np.maximum(labels, 0)], -np.inf).astype(np.float32)
        chosen = select_voxels(scores, top_k, threshold)
        keys, positions = voxel_map.keys(chosen), voxel_map.positions(chosen)
    objects = group_voxels(keys, scores[chosen], voxel_map.voxel_size, labels=labels[chosen], label_names=names,
                           min_voxels=min_voxels)
    return QueryResult(chosen, scores[chosen], positions, objects)


def select_voxels(scores: np.ndarray, top_k: int, threshold: float) -> np.ndarray:
    """(K,) int64 indices of ``scores`` (M,) that are >= threshold, the top_k best of them (0 = all), best first."""
    candidates = np.flatnonzero(scores >= threshold)
    if top_k and candidates.size > top_k:
        candidates = candidates[np.argpartition(-scores[candidates], top_k - 1)[:top_k]]
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def group_voxels(keys, scores, voxel_size: float, labels=None, label_names: Sequence[str] | None = None,
                 default_label: str = "", min_voxels: int = 1) -> list[ObjectGroup]:
    """Group voxels into 26-connected components, best group (highest max score, then most voxels) first.

    keys: (K, 3) int voxel indices; scores: (K,) float. labels: optional (K,) int ids; when given only voxels with
    the same label connect, and each group is named ``label_names[id]`` (or ``str(id)``); otherwise ``default_label``.
    Groups with fewer than ``min_voxels`` voxels are dropped.
    """
    keys = np.asarray(keys)
    scores = np.asarray(scores, dtype=np.float64)
    k = len(keys)
    if keys.shape != (k, 3) or scores.shape != (k,) or (labels is not None and np.shape(labels) != (k,)):
        raise ValueError(f"group_voxels needs (K, 3) keys, (K,) scores and labels; got {keys.shape}, "
                         f"{scores.shape}, {None if labels is None else np.shape(labels)}")
    if k == 0:
        return []
    if np.abs(keys).max() > KEY_LIMIT:
        raise ValueError(f"voxel indices beyond +-{KEY_LIMIT}")
    packed = pack_keys(torch.from_numpy(keys.astype(np.int32))).numpy()
    order = np.argsort(packed)
    ordered = packed[order]
    src, dst = [], []
    for offset in _NEIGHBOUR_OFFSETS:  # one vectorised lookup of every voxel's neighbour per direction
        neighbour = ordered + offset
        at = np.minimum(np.searchsorted(ordered, neighbour), k - 1)
        hit = np.flatnonzero(ordered[at] == neighbour)
        src.append(order[hit])
        dst.append(order[at[hit]])
    src, dst = np.concatenate(src), np.concatenate(dst)
    if labels is not None:
        labels = np.asarray(labels)
        same = labels[src] == labels[dst]
        src, dst = src[same], dst[same]
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(k, k))
    _, component = connected_components(graph, directed=False)

    by_group = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(component[by_group]) != 0])
    group_keys, group_scores = keys[by_group].astype(np.int64), scores[by_group]
    key_min = np.minimum.reduceat(group_keys, starts, axis=0)
    key_max = np.maximum.reduceat(group_keys, starts, axis=0)
    best = np.maximum.reduceat(group_scores, starts)
    counts = np.diff(np.r_[starts, k])
    mean = np.add.reduceat(group_scores, starts) / counts
    first = by_group[starts]
    groups = []
    for g in np.lexsort((-counts, -best)):
        if counts[g] < min_voxels:
            continue
        if labels is None:
            name = default_label
        else:
            label_id = int(labels[first[g]])
            name = label_names[label_id] if label_names is not None else str(label_id)
        groups.append(ObjectGroup(label=name, score=float(best[g]), mean_score=float(mean[g]),
                                  center=(key_min[g] + key_max[g] + 1) * 0.5 * voxel_size,
                                  size=(key_max[g] - key_min[g] + 1) * float(voxel_size),
                                  num_voxels=int(counts[g])))
    return groups


def _check_limits(top_k, threshold) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise QueryError(f"top_k must be an integer >= 0 (0 = all above threshold), got {top_k!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not -1.0 <= float(threshold) <= 1.0:
        raise QueryError(f"threshold must be a number in [-1, 1], got {threshold!r}")


def _unit_rows(embedding, what: str) -> np.ndarray:
    """Embedding(s) as float32 with each row (or the vector) scaled to unit length; QueryError when impossible."""
    if isinstance(embedding, torch.Tensor):
        embedding = embedding.detach().cpu().numpy()
    e = np.asarray(embedding, dtype=np.float32)
    if e.ndim == 2 and e.shape[0] == 1 and what == "text embedding":
        e = e[0]
    if e.ndim not in (1, 2) or e.size == 0:
        raise QueryError(f"{what} must be a vector or a matrix of rows, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise QueryError(f"{what} must be finite and non-zero")
    return e / norms
