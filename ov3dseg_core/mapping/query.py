"""Text queries against a voxel map that decide: is the thing here, where, and how sure.

The decision rule (``decide``) is the same for maps with per-voxel features and for label-only maps, whose voxels
are represented by the embedding of their label's name:

1. **Negatives** (``negative_names``): the canonical phrases ``CANONICAL_NEGATIVES`` plus the map's vocabulary (the
   model's classes, or the label names), without the query text itself and, when the query is not itself a
   vocabulary name, without the near-synonyms of the query (bare-name text cosine >= ``SYNONYM_COSINE``), so that
   "couch" is not penalised by "sofa" while "curtain" still competes with "shower curtain".
2. **Relevancy** (LERF): ``min_i softmax(tau [cos(f, q), cos(f, n_i)])_0 = sigmoid(tau (cos(f, q) - max_i cos(f,
   n_i)))`` with ``tau = RELEVANCY_TEMPERATURE``; 0.5 means the query ties its hardest negative.
3. A voxel **matches** when its raw cosine cos(f, q) >= ``floor`` (the absolute floor: relevancy alone always finds
   *something*; below it a voxel's relevancy counts as 0) and its relevancy >= ``threshold``. Both come from a
   ``QueryCalibration`` per model / text encoder (stored in the model checkpoint); a request may override the
   threshold.
4. **Objects**: matching voxels connected with gaps of up to ``MERGE_GAP_VOXELS`` voxels (so the parts of one thing
   merge; on label-only maps only voxels of the same label connect), with at least ``min_voxels`` voxels, ranked by
   ``confidence = mean relevancy x (1 - exp(-voxels / SUPPORT_VOXELS))``. **found** = at least one object.

On a feature map with an instance layer (``mapping.instances``: a model with an instance decoder ran on it),
``query_features`` answers at object level: the same rule scores each instance's embedding instead of each
voxel's feature (relevancy against the same negatives, the same floor and threshold), and the objects are the
matching instances (their voxels, at least ``min_voxels``), each voxel carrying its instance's relevancy.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ov3dseg_core.mapping.voxel_map import KEY_LIMIT, VoxelMap, key_offsets, pack_keys

MAX_QUERY_CHARS = 256
"""Longest accepted query text, in characters after stripping white space."""
CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
"""LERF's canonical phrases: every query must beat them as well as the map's vocabulary."""
RELEVANCY_TEMPERATURE = 10.0
"""tau of the relevancy softmax (LERF's value); it sets how fast relevancy saturates, not where 0.5 lies."""
SYNONYM_COSINE = 0.7
"""Bare-name text cosine (MiniLM) at and above which a vocabulary name counts as a synonym of a query that is not
itself in the vocabulary. Measured: couch/sofa 0.86, fridge/refrigerator 0.96, tub/bathtub 0.88, seat/chair 0.77;
distinct ScanNet-20 classes 0.14-0.67 (median 0.34), except curtain/shower curtain 0.85, hence the vocabulary rule."""
DEFAULT_MIN_VOXELS = 10
"""Smallest object, in voxels (the node's ``query_min_voxels`` default; 10 voxels of 5 cm = a 25 cm^2 patch)."""
MAX_OBJECTS = 1000
"""Most objects a query result holds (the best by confidence); a query matching everything on a large map would
otherwise build hundreds of thousands of them."""
MERGE_GAP_VOXELS = 1
"""Matching voxels up to this many empty voxels apart belong to one object (a chair's legs and seat)."""
SUPPORT_VOXELS = 100.0
"""Voxels at which an object's support term 1 - exp(-n / SUPPORT_VOXELS) reaches 0.63 (100 voxels of 5 cm: a
0.25 m^2 patch). Chosen on the validation scenes: ranking by support more than by relevancy raised top-1."""


class QueryError(ValueError):
    """A query that cannot be answered as asked (bad text, limits, embeddings or map)."""


@dataclass(frozen=True)
class QueryCalibration:
    """The two numbers of the decision rule for one model / text encoder."""

    threshold: float
    """Default relevancy threshold in (0, 1] (used when a request sends 0)."""
    floor: float
    """Absolute floor on the raw cosine cos(f, q) in [-1, 1]."""
    source: str = ""
    """Where the numbers come from (e.g. "calibrated on sim seeds 50000-50007", "built-in default")."""

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0):
            raise ValueError(f"query calibration threshold must be in (0, 1], got {self.threshold!r}")
        if not (isinstance(self.floor, (int, float)) and -1.0 <= self.floor <= 1.0):
            raise ValueError(f"query calibration floor must be in [-1, 1], got {self.floor!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "QueryCalibration":
        """From a checkpoint's ``extra["query"]`` (keys threshold, floor, optional calibrated_on); ValueError."""
        try:
            return cls(float(data["threshold"]), float(data["floor"]), str(data.get("calibrated_on", source)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"query calibration needs numbers 'threshold' and 'floor', got {data!r}") from None

    def threshold_for(self, requested: float) -> float:
        """The relevancy threshold of a request: its own, or this default when it sends 0."""
        return float(requested or self.threshold)


FEATURE_CALIBRATION = QueryCalibration(0.5, -1.0, "built-in default: the query must beat its hardest negative")
"""Used for feature maps whose model checkpoint carries no calibration (``ov3dseg calibrate`` adds one)."""
LABEL_CALIBRATIONS = {"minilm": QueryCalibration(0.5, 0.5, "built-in for MiniLM label names")}
"""Label-only maps, per text encoder type. MiniLM floor 0.5: distinct ScanNet-20 class names score 0.14-0.67
(95 % below 0.52) against each other, synonyms 0.7-0.96; other encoders: FEATURE_CALIBRATION."""


@dataclass
class ObjectGroup:
    """Matching voxels that form one object."""

    label: str
    """The query text (feature maps) or the voxels' label name (label-only maps)."""
    score: float
    """Best voxel relevancy in the group, in [0, 1]."""
    mean_score: float
    """Mean voxel relevancy."""
    confidence: float
    """mean_score x (1 - exp(-num_voxels / SUPPORT_VOXELS)), in [0, 1]; objects are ranked by it."""
    center: np.ndarray
    """(3,) float64 a point on the object, metres, map frame: centre of its voxel nearest to the voxels' mean."""
    box_center: np.ndarray
    """(3,) float64 centre of the group's axis-aligned voxel box, metres."""
    size: np.ndarray
    """(3,) float64 extent of that box in metres (one voxel = voxel_size)."""
    num_voxels: int
    instance: int = -1
    """The map's instance id of an object answered from the instance layer; -1 for a group of matching voxels."""


@dataclass
class QueryResult:
    """The answer: matching voxels of the objects (best first, at most top_k) and the objects (best first)."""

    indices: np.ndarray
    """(K,) int64 voxel indices into the map's accessor order at query time."""
    scores: np.ndarray
    """(K,) float32 relevancy."""
    positions: np.ndarray
    """(K, 3) float32 mean voxel positions, metres, map frame."""
    objects: list[ObjectGroup]
    threshold: float
    """The relevancy threshold used."""
    max_score: float
    """Highest relevancy of any voxel in the map, matching or not (0 when no voxel reaches the floor)."""

    @property
    def found(self) -> bool:
        return bool(self.objects)


def validate_query(text, top_k, threshold) -> str:
    """The stripped query text, or QueryError naming the problem.

    text: str, or bytes decoded strictly as UTF-8; 1..MAX_QUERY_CHARS characters after stripping.
    top_k: integer >= 0. threshold: relevancy in [0, 1] (0 = the calibrated default).
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


def negative_names(query: str, vocabulary: Sequence[str], encode: Callable[[list[str]], Any]) -> list[str]:
    """The names ``query`` must beat: CANONICAL_NEGATIVES + ``vocabulary`` without duplicates and without the query
    (case-insensitive); when the query is not a vocabulary name, also without its near-synonyms.

    encode: texts -> (N, D) embeddings of the bare names (no prompt template), e.g. ``TextEncoder.encode``.
    """
    key = query.strip().lower()
    names = list(dict.fromkeys(n for n in (*CANONICAL_NEGATIVES, *vocabulary) if n.strip().lower() != key))
    if not names or key in {v.strip().lower() for v in vocabulary}:
        return names
    embedded = _unit_rows(encode([query, *names]), "name embeddings")
    return [n for n, cosine in zip(names, embedded[1:] @ embedded[0]) if cosine < SYNONYM_COSINE]


def query_embeddings(text: str, vocabulary: Sequence[str], embed: Callable[[list[str]], Any],
                     encode: Callable[[list[str]], Any]) -> tuple[np.ndarray, np.ndarray]:
    """(query (D,), negatives (K, D)) float32 embeddings of ``text`` and of its ``negative_names``.

    embed: texts -> (N, D) embeddings in the space the map is scored in (with the prompt template); encode: the
    bare-name encoder for the synonym test.
    """
    table = _array(embed([text, *negative_names(text, vocabulary, encode)]))
    return table[0], table[1:]


def relevancy(query_cosine: np.ndarray, hardest_negative: np.ndarray) -> np.ndarray:
    """(M,) LERF relevancy sigmoid(tau (cos(f, q) - max_i cos(f, n_i))) from (M,) query and hardest-negative
    cosines; 0 where the query cosine is -inf (no feature / no label) or the hardest negative +inf (not scored),
    1 when there are no negatives (-inf)."""
    q = np.asarray(query_cosine, dtype=np.float64)
    margin = np.full(q.shape, -np.inf)
    np.subtract(q, np.asarray(hardest_negative, dtype=np.float64), out=margin, where=np.isfinite(q))
    return (0.5 * (1.0 + np.tanh(0.5 * RELEVANCY_TEMPERATURE * margin))).astype(np.float32)


def decide(query_cosine: np.ndarray, hardest_negative: np.ndarray, calibration: QueryCalibration,
           threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The per-voxel decision: (relevancy (M,) float32, 0 where cos(f, q) < floor; matches (M,) bool = relevancy
    >= threshold). threshold 0 = ``calibration.threshold`` (always > 0)."""
    query_cosine = np.asarray(query_cosine)
    score = np.zeros(query_cosine.shape, np.float32)
    above = np.flatnonzero(query_cosine >= calibration.floor)
    score[above] = relevancy(query_cosine[above], np.asarray(hardest_negative)[above])
    return score, score >= calibration.threshold_for(threshold)


def query_features(voxel_map: VoxelMap, query_embedding, negative_embeddings, calibration: QueryCalibration,
                   threshold: float = 0.0, top_k: int = 0, min_voxels: int = DEFAULT_MIN_VOXELS,
                   label: str = "") -> QueryResult:
    """Answer a query from per-voxel features: query_embedding (D,) and negative_embeddings (K, D) (the
    embeddings of ``negative_names``, with the model's prompt template; normalised here). Objects are labelled
    ``label`` (the query text). threshold 0 = the calibrated default; top_k limits the returned voxels (0 = all).
    A map with instances is answered from them (``instance_scores``; grouped by instance id).

    Cosines come from the map's int8 feature copy (about 1e-2 off the float16 values, half the bytes to read):
    with a floor above -1 one pass selects the voxels at or above the floor (``features_at_least``; the others
    cannot match) and the negatives are scored for those only; with floor -1 all in one pass over the features
    (``query_similarity``)."""
    _check_limits(top_k, threshold)
    dim = voxel_map.config.feature_dim
    if dim == 0:
        raise QueryError("the map stores no features (feature_dim=0); use query_labels")
    table = _query_table(query_embedding, negative_embeddings, dim)
    groups = None
    with voxel_map.lock:  # only the snapshot holds the lock, as in query_labels
        instances = voxel_map.instance_table()
        ids = voxel_map.instances() if len(instances) else None  # no table: no (M,) copy
        if ids is not None and (ids >= 0).any():
            chosen = _MatchedVoxels.where(voxel_map, *instance_scores(ids, instances.embeddings, table, calibration,
                                                                      threshold))
            groups = ids[chosen.indices]
        elif calibration.floor <= -1.0:
            chosen = _MatchedVoxels.where(voxel_map, *decide(*voxel_map.query_similarity(table[0], table[1:]),
                                                             calibration, threshold))
        else:
            candidates, query_cosine, hardest = voxel_map.features_at_least(table[0], calibration.floor, table[1:])
            chosen = _MatchedVoxels.where(voxel_map, *decide(query_cosine, hardest, calibration, threshold),
                                          candidates)
    return chosen.result(calibration.threshold_for(threshold), top_k, min_voxels, default_label=label, groups=groups)


def instance_scores(ids: np.ndarray, embeddings: np.ndarray, table: np.ndarray, calibration: QueryCalibration,
                    threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The object-level decision of ``query_features``: ids (M,) the map's instance id per voxel (-1 none),
    embeddings (I, D) the instances' unit embeddings, table (1 + K, D) unit query and negative embeddings. Each
    instance is scored by ``decide`` on its embedding; returns each voxel's (score (M,) float32: its instance's
    relevancy, 0 without one; matches (M,) bool: its instance matches)."""
    cosine = embeddings @ table.T  # (I, 1 + K)
    relevance, matches = decide(cosine[:, 0], _hardest(cosine[:, 1:]), calibration, threshold)
    has, row = ids >= 0, np.maximum(ids, 0)
    return np.where(has, relevance[row], 0.0).astype(np.float32), has & matches[row]


def query_labels(voxel_map: VoxelMap, query_embedding, negative_embeddings, label_embeddings,
                 label_names: Sequence[str], calibration: QueryCalibration, threshold: float = 0.0, top_k: int = 0,
                 min_voxels: int = DEFAULT_MIN_VOXELS) -> QueryResult:
    """Answer a query on a label-only map: each voxel is represented by the embedding of its argmax label's name.

    label_embeddings: (L, D) embeddings of ``label_names`` (L = the map's num_labels) in the space of
    query_embedding (D,) and negative_embeddings (K, D). Unlabelled voxels never match. Objects connect voxels of
    one label and carry its name ("couch" -> objects named "sofa").
    """
    _check_limits(top_k, threshold)
    names = list(label_names)
    num_labels = voxel_map.config.num_labels
    if num_labels == 0:
        raise QueryError("the map stores no labels (num_labels=0)")
    labels_table = _unit_rows(label_embeddings, "label embeddings")
    table = _query_table(query_embedding, negative_embeddings, labels_table.shape[1])
    if len(names) != num_labels or labels_table.shape[0] != num_labels:
        raise QueryError(f"need {num_labels} label names and label embeddings, got {len(names)} names and "
                         f"{labels_table.shape[0]} embeddings")
    per_label = labels_table @ table.T  # (L, 1 + K)
    label_query = np.append(per_label[:, 0], -np.inf)  # index -1 (unlabelled) -> -inf
    label_hardest = np.append(_hardest(per_label[:, 1:]), -np.inf)
    with voxel_map.lock:  # only the snapshot holds the lock: grouping runs while the map integrates
        labels, _ = voxel_map.labels()
        chosen = _MatchedVoxels.where(voxel_map, *decide(label_query[labels], label_hardest[labels], calibration,
                                                         threshold))
    return chosen.result(calibration.threshold_for(threshold), top_k, min_voxels, labels[chosen.indices], names)


@dataclass
class _MatchedVoxels:
    """The matching voxels of one map state: indices (C,) into its accessor order, their relevancy scores (C,)
    float32, keys (C, 3), positions (C, 3); and the best relevancy of any voxel in the map, matching or not."""

    indices: np.ndarray
    scores: np.ndarray
    keys: np.ndarray
    positions: np.ndarray
    voxel_size: float
    max_score: float

    @classmethod
    def where(cls, voxel_map: VoxelMap, score: np.ndarray, matches: np.ndarray,
              voxels: np.ndarray | None = None) -> "_MatchedVoxels":
        """Copy the voxels where ``matches`` holds, with ``decide``'s ``score``: over the whole map ((M,) arrays),
        or over the voxels at ``voxels`` (C,) (the others scoring 0); call with the map's lock held."""
        chosen = np.flatnonzero(matches)
        indices = chosen if voxels is None else voxels[chosen]
        return cls(indices, score[chosen], voxel_map.keys(indices), voxel_map.positions(indices),
                   voxel_map.voxel_size, float(score.max(initial=0.0)))

    def result(self, threshold: float, top_k: int, min_voxels: int, labels: np.ndarray | None = None,
               label_names: Sequence[str] | None = None, default_label: str = "",
               groups: np.ndarray | None = None) -> QueryResult:
        """The QueryResult: these voxels grouped into objects (at most MAX_OBJECTS), the objects' voxels best
        relevancy first (at most top_k; 0 = all); labels and groups (instance ids): (C,), these voxels'."""
        objects, rank = group_voxels(self.keys, self.scores, self.voxel_size, labels, label_names, default_label,
                                     min_voxels, MAX_OBJECTS, groups)
        kept = np.flatnonzero(rank >= 0)  # the kept objects' voxels, best relevancy first
        kept = kept[np.argsort(-self.scores[kept], kind="stable")][:top_k or None]
        return QueryResult(self.indices[kept], self.scores[kept], self.positions[kept], objects, threshold,
                           self.max_score)


def group_voxels(keys, scores, voxel_size: float, labels=None, label_names: Sequence[str] | None = None,
                 default_label: str = "", min_voxels: int = 1, max_groups: int = 0, groups=None,
                 ) -> tuple[list[ObjectGroup], np.ndarray]:
    """Group voxels into objects: voxels at most MERGE_GAP_VOXELS + 1 apart along every axis connect (with
    ``labels``, only voxels of one label), or given ``groups`` (K,) int ids (the map's instance ids, kept as
    ``ObjectGroup.instance``); groups of fewer than ``min_voxels`` are dropped, and only the best ``max_groups``
    are kept (0 = all).

    keys: (K, 3) int voxel indices; scores: (K,) relevancy in [0, 1]; labels: optional (K,) int ids naming each
    group ``label_names[id]`` (or ``str(id)``), else ``default_label``. Returns the groups ranked by confidence
    (then max score, then size) and (K,) int64 the rank of each voxel's group (-1 = dropped).
    """
    keys = np.asarray(keys)
    scores = np.asarray(scores, dtype=np.float64)
    k = len(keys)
    if keys.shape != (k, 3) or scores.shape != (k,) or (labels is not None and np.shape(labels) != (k,)):
        raise ValueError(f"group_voxels needs (K, 3) keys, (K,) scores and labels; got {keys.shape}, "
                         f"{scores.shape}, {None if labels is None else np.shape(labels)}")
    if k == 0:
        return [], np.zeros(0, np.int64)
    if np.abs(keys).max() > KEY_LIMIT:
        raise ValueError(f"voxel indices beyond +-{KEY_LIMIT}")
    if groups is None:
        component = _components(keys, None if labels is None else np.asarray(labels))
    else:
        component = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)

    by_group = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(component[by_group]) != 0])
    group_keys, group_scores = keys[by_group].astype(np.int64), scores[by_group]
    counts = np.diff(np.r_[starts, k])
    key_min = np.minimum.reduceat(group_keys, starts, axis=0)
    key_max = np.maximum.reduceat(group_keys, starts, axis=0)
    best = np.maximum.reduceat(group_scores, starts)
    mean = np.add.reduceat(group_scores, starts) / counts
    confidence = mean * (1.0 - np.exp(-counts / SUPPORT_VOXELS))
    on_object = group_keys[_nearest_to_mean(group_keys, starts, counts)]
    first = by_group[starts]

    ranked = np.lexsort((-counts, -best, -confidence))
    ranked = ranked[counts[ranked] >= min_voxels][:max_groups or None]
    rank = np.full(len(starts), -1, np.int64)
    rank[ranked] = np.arange(len(ranked))
    centers = (on_object[ranked] + 0.5) * voxel_size
    box_centers = (key_min[ranked] + key_max[ranked] + 1) * 0.5 * voxel_size
    sizes = (key_max[ranked] - key_min[ranked] + 1) * float(voxel_size)
    if labels is None:
        names = [default_label] * len(ranked)
    else:
        ids = np.asarray(labels)[first[ranked]].tolist()
        names = [label_names[i] for i in ids] if label_names is not None else [str(i) for i in ids]
    instance = [-1] * len(ranked) if groups is None else np.asarray(groups)[first[ranked]].tolist()
    objects = [ObjectGroup(label=name, score=b, mean_score=m, confidence=c, center=center, box_center=box,
                           size=size, num_voxels=n, instance=i)
               for name, b, m, c, center, box, size, n, i in zip(
                   names, best[ranked].tolist(), mean[ranked].tolist(), confidence[ranked].tolist(), centers,
                   box_centers, sizes, counts[ranked].tolist(), instance)]
    voxel_rank = np.empty(k, np.int64)
    voxel_rank[by_group] = np.repeat(rank, counts)
    return objects, voxel_rank


_REACH = MERGE_GAP_VOXELS + 1
_NEIGHBOUR_OFFSETS = key_offsets(torch.tensor([(dx, dy, dz) for dx in range(-_REACH, _REACH + 1)
                                                for dy in range(-_REACH, _REACH + 1)
                                                for dz in range(-_REACH, _REACH + 1)
                                                if (dx, dy, dz) > (0, 0, 0)])).numpy()
"""Packed-key offsets of the lexicographically positive neighbours within _REACH voxels along every axis (each
neighbour pair is found once)."""


DENSE_CELLS_PER_VOXEL = 32
"""Voxels are grouped on a dense grid over their bounding box when it has at most this many cells per voxel (plus
2**20); sparser sets (far-apart voxels) use the neighbour search."""


def _components(keys: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """(K,) component id of each voxel: voxels within _REACH along every axis (and of equal label) connect."""
    groups = [np.arange(len(keys))] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    component = np.empty(len(keys), np.int64)
    first = 0
    for members in groups:  # one pass per label (label-only maps connect voxels of one label only)
        ids = _dense_components(keys[members])
        if ids is None:
            ids = _sparse_components(keys[members])
        component[members] = ids + first
        first += int(ids.max(initial=-1)) + 1
    return component


def _dense_components(keys: np.ndarray) -> np.ndarray | None:
    """Component ids (0..n-1) of ``keys`` (K, 3) by labelling a dense grid of their bounding box, or None when the
    box is too sparse. Each voxel is drawn as a cube of _REACH cells, so two cubes touch (26-connected) exactly
    when their voxels lie within _REACH of each other along every axis."""
    origin = keys.min(axis=0)
    shape = keys.max(axis=0) - origin + _REACH
    if np.prod(shape.astype(np.float64)) > DENSE_CELLS_PER_VOXEL * len(keys) + 2**20:
        return None
    cells = (keys - origin).astype(np.intp)
    grid = np.zeros(shape, bool)
    for d in itertools.product(range(_REACH), repeat=3):
        grid[cells[:, 0] + d[0], cells[:, 1] + d[1], cells[:, 2] + d[2]] = True
    labelled, _ = ndimage.label(grid, structure=np.ones((3, 3, 3), bool))
    return labelled[cells[:, 0], cells[:, 1], cells[:, 2]].astype(np.int64) - 1


def _sparse_components(keys: np.ndarray) -> np.ndarray:
    """Component ids of ``keys`` (K, 3) by a sorted-key search of every voxel's neighbours within _REACH."""
    k = len(keys)
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
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(k, k))
    return connected_components(graph, directed=False)[1]


def _nearest_to_mean(group_keys: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per group (rows grouped contiguously from ``starts``), the row index of the key nearest to the group mean."""
    group = np.repeat(np.arange(len(starts)), counts)
    mean = np.add.reduceat(group_keys, starts, axis=0) / counts[:, None]
    distance = ((group_keys - mean[group]) ** 2).sum(axis=1)
    order = np.lexsort((distance, group))
    return order[starts]


def _hardest(negative_cosine: np.ndarray) -> np.ndarray:
    """(M,) max over the columns of (M, K) negative cosines; -inf when K = 0."""
    return np.max(negative_cosine, axis=1, initial=-np.inf)


def _query_table(query_embedding, negative_embeddings, dim: int) -> np.ndarray:
    """(1 + K, dim) unit rows: the query, then the negatives; QueryError for wrong sizes."""
    query = _unit_rows(query_embedding, "query embedding").reshape(1, -1)
    negatives = _array(negative_embeddings).reshape(-1, query.shape[1])
    table = np.vstack([query, _unit_rows(negatives, "negative embeddings")]) if len(negatives) else query
    if table.shape[1] != dim:
        raise QueryError(f"text embeddings have {table.shape[1]} values, the map's embeddings have {dim}")
    return table


def _check_limits(top_k, threshold) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise QueryError(f"top_k must be an integer >= 0 (0 = all matching voxels), got {top_k!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(threshold) <= 1.0:
        raise QueryError(f"threshold must be a relevancy in [0, 1] (0 = the calibrated default), got {threshold!r}")


def _unit_rows(embedding, what: str) -> np.ndarray:
    """Embedding(s) as float32 with each row (or the vector) scaled to unit length; QueryError when impossible."""
    e = _array(embedding)
    if e.ndim == 2 and e.shape[0] == 1 and what == "query embedding":
        e = e[0]
    if e.ndim not in (1, 2) or e.size == 0:
        raise QueryError(f"{what} must be a vector or a matrix of rows, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise QueryError(f"{what} must be finite and non-zero")
    return e / norms


def _array(values) -> np.ndarray:
    """float32 NumPy array of a tensor (any device) or array-like."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float32)
