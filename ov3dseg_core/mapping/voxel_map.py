"""Sparse voxel map with a fixed world origin: geometry, colour, label distribution, float16 features and an instance
id per voxel (the instance layer's table and its update live in ``mapping.instances``).

Voxel index = floor(p / voxel_size) (float32 division) in the map frame, so indices never shift as the map grows.
Voxels live in slot arrays (torch, on ``config.device``); on CPU the arrays reserve the whole voxel budget up front
(untouched pages cost no memory), so the map grows without copying. The index is two sorted arrays of packed int64
keys with their slot numbers (lookup by ``searchsorted``): a main array and a small delta that takes new voxels in
O(delta) per frame; the O(map) merge of the two runs outside the lock (or when an accessor needs the full order).
One frame is reduced to its unique voxels first (a dense grid over the frame's bounding box, or a sort when that box
is huge), so only those voxels touch the global index. Features are stored as float16 (what fusion and files use)
plus a derived int8 copy with a per-voxel scale, which queries score (half the bytes to read).

Memory is bounded by ``max_voxels`` (the voxels farthest from the last sensor origin are evicted, or the least
recently updated ones when no sensor origin was ever given) and by ``clearing_radius`` (voxels whose centre lies
farther than that from the sensor origin are evicted, and new ones there are not created). Evictions choose their
voxels and rebuild the index outside the lock, after a frame and ahead of the budget (room for twice the new voxels
of the frame, ROOM_FACTOR); only a frame that does not fit that room evicts with the lock held.

All public methods take one internal lock; accessors return copies as NumPy arrays in one shared voxel order
(ascending packed key), which stays the same between mutations. Hold ``voxel_map.lock`` to read several accessors
from one consistent state while other threads integrate.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import sparse

from ov3dseg_core.mapping import kernels
from ov3dseg_core.mapping.instances import MATCH_IOU, InstanceTable, PassResult, instance_voxel_counts, merge_pass

KEY_BITS = 21
"""Bits per axis in a packed voxel key."""

KEY_LIMIT = (1 << (KEY_BITS - 1)) - 2
"""Largest |voxel index| per axis (about 52 km at 5 cm voxels); points beyond are dropped as invalid."""

_KEY_BIAS = 1 << (KEY_BITS - 1)
_KEY_MASK = (1 << KEY_BITS) - 1

CLEARING_STEP = 0.05
"""The clearing radius is applied again once the sensor has moved max(voxel_size, CLEARING_STEP * radius) since
the last time (an O(map) pass); new voxels beyond the radius are never created, so between passes old voxels lie
at most that distance beyond the radius."""

DENSE_GRID_CELLS_PER_POINT = 16
"""A frame is deduplicated on a dense grid over its bounding box when the box has at most this many cells per point
(plus 2**16); larger boxes (far LiDAR returns, outliers) fall back to sorting packed keys."""

FUSION_CHUNK = 8192
"""Rows per chunk when fusing features and refreshing derived values (float32 temporaries of FUSION_CHUNK x D)."""

DELTA_FRACTION = 16
"""The index delta is merged into the main array once it holds more than max(2**16, map size / DELTA_FRACTION)
keys: an O(map) merge every map size / DELTA_FRACTION new voxels."""

ROOM_FACTOR = 2
"""After each frame, evictions make room for ROOM_FACTOR times the voxels it created (the next frame's new voxels,
with a margin: one that does not fit evicts with the lock held)."""

EVICT_ATTEMPTS = 3
"""Tries at swapping an index rebuilt outside the lock (see ``VoxelMap._evict_keys``); the last holds the lock."""

RESERVE_HEADROOM = 1 << 18
"""Slots reserved beyond max_voxels (a frame's voxels arrive before the budget is enforced)."""

QUERY_CHUNK = 1 << 20
"""Dot products per chunk of int8 scoring: QUERY_CHUNK // K voxels at a time against K embeddings (the block stays
in cache; one query scores up to QUERY_CHUNK voxels in one call)."""

_NO_WEIGHTS, _NO_COLORS, _NO_LABELS = np.zeros(0, np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32)
"""Stand-ins for absent per-point inputs of ``kernels.voxel_sums`` (one compiled signature)."""

FEATURE_NORM_LIMIT = 60000.0
"""Largest accepted L2 norm of a feature vector: features are stored and scored in float16 (max 65504), and a fused
feature is a weighted mean, so its norm and its dot product with a unit vector stay below this."""


def pack_keys(keys: torch.Tensor) -> torch.Tensor:
    """(N, 3) integer voxel indices (|index| <= KEY_LIMIT) -> (N,) int64 keys ordered lexicographically by (x, y, z).

    Adding ``dx << 42 | dy << 21 | dz`` style offsets (see ``key_offsets``) to a key gives the neighbour's key.
    """
    k = keys.to(torch.int64) + _KEY_BIAS
    return (k[:, 0] << (2 * KEY_BITS)) | (k[:, 1] << KEY_BITS) | k[:, 2]


def unpack_keys(packed: torch.Tensor) -> torch.Tensor:
    """(N,) int64 packed keys -> (N, 3) int32 voxel indices."""
    xyz = torch.stack([packed >> (2 * KEY_BITS), (packed >> KEY_BITS) & _KEY_MASK, packed & _KEY_MASK], dim=1)
    return (xyz - _KEY_BIAS).to(torch.int32)


def key_offsets(offsets: torch.Tensor) -> torch.Tensor:
    """(K, 3) integer index offsets -> (K,) int64 amounts to add to packed keys."""
    o = offsets.to(torch.int64)
    return (o[:, 0] << (2 * KEY_BITS)) + (o[:, 1] << KEY_BITS) + o[:, 2]


@dataclass
class VoxelMapConfig:
    """Voxel map settings.

    voxel_size: edge length in metres. num_labels: label bins per voxel (0 = no labels). feature_dim: per-voxel
    feature length (0 = no features). max_voxels: voxel budget. clearing_radius: metres around the sensor origin
    kept in the map (0 = keep everything). device: torch device of the storage ("cpu", "cuda", ...).
    eviction_target: when max_voxels is reached, evict down to eviction_target * max_voxels voxels, so that the
    O(map) eviction pass runs once per many frames instead of every frame (1.0 = evict exactly the excess).
    """

    voxel_size: float = 0.05
    num_labels: int = 0
    feature_dim: int = 0
    max_voxels: int = 5_000_000
    clearing_radius: float = 0.0
    device: str = "cpu"
    eviction_target: float = 0.95

    def __post_init__(self) -> None:
        if not (np.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise ValueError(f"voxel_size must be a positive number of metres, got {self.voxel_size!r}")
        for name in ("num_labels", "feature_dim"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if int(self.max_voxels) != self.max_voxels or self.max_voxels < 1:
            raise ValueError(f"max_voxels must be a positive integer, got {self.max_voxels!r}")
        if not (np.isfinite(self.clearing_radius) and self.clearing_radius >= 0):
            raise ValueError(f"clearing_radius must be >= 0 metres (0 = off), got {self.clearing_radius!r}")
        if not 0 < self.eviction_target <= 1:
            raise ValueError(f"eviction_target must be in (0, 1], got {self.eviction_target!r}")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a torch device: {exc}") from None
        self.voxel_size = float(self.voxel_size)
        self.num_labels, self.feature_dim, self.max_voxels = int(self.num_labels), int(self.feature_dim), int(
            self.max_voxels)


@dataclass
class IntegrationStats:
    """What one ``integrate`` / ``integrate_features`` call did (counts)."""

    points_in: int = 0
    points_integrated: int = 0
    points_invalid: int = 0
    """Non-finite points and points beyond KEY_LIMIT voxels from the origin (dropped)."""
    points_outside_radius: int = 0
    """Points in voxels beyond clearing_radius from the sensor origin (not integrated)."""
    voxels_updated: int = 0
    """Existing voxels that received data."""
    voxels_created: int = 0
    voxels_evicted: int = 0
    """Voxels evicted during this call (clearing radius and max_voxels)."""
    num_voxels: int = 0
    """Voxels in the map after the call."""


@dataclass
class _FrameVoxels:
    """One input batch reduced to its unique voxels (U of them, ascending packed key)."""

    packed: torch.Tensor  # (U,) int64
    keys: torch.Tensor  # (U, 3) int32
    weight: torch.Tensor  # (U,) float32 summed point weights
    local_sum: torch.Tensor  # (U, 3) float32 weighted sum of (point - voxel corner), metres
    count: torch.Tensor  # (U,) int64 points per voxel
    color_sum: torch.Tensor | None  # (U, 3) float32 weighted RGB sums
    label_sum: torch.Tensor | None  # (U, L) float32 weighted label counts
    feature_sum: torch.Tensor | None  # (U, D) float32 weighted feature sums

    def select(self, mask: torch.Tensor) -> "_FrameVoxels":
        values = (getattr(self, f.name) for f in fields(self))
        return _FrameVoxels(*(None if v is None else _rows(v, mask) for v in values))


# Per-slot storage: name -> (trailing shape given (num_labels, feature_dim), dtype).
_SLOT_FIELDS = {
    "keys": (lambda L, D: (3,), torch.int32),
    "weight": (lambda L, D: (), torch.float32),
    "position": (lambda L, D: (3,), torch.float32),
    "color": (lambda L, D: (3,), torch.float32),
    "color_weight": (lambda L, D: (), torch.float32),
    "label_counts": (lambda L, D: (L,), torch.float32),
    "feature": (lambda L, D: (D,), torch.float16),
    "feature_weight": (lambda L, D: (), torch.float32),
    "stamp": (lambda L, D: (), torch.int64),
    "instance": (lambda L, D: (), torch.int32),  # id into the instance table, -1 = none (mapping.instances)
    # derived from the above, kept up to date for fast queries and accessors (not saved)
    "feature_norm": (lambda L, D: (), torch.float32),
    "feature_code": (lambda L, D: (D,), torch.int8),  # feature ~ feature_code * feature_scale
    "feature_scale": (lambda L, D: (), torch.float32),
    "label": (lambda L, D: (), torch.int32),
    "confidence": (lambda L, D: (), torch.float32),
}
STATE_FIELDS = ("keys", "weight", "position", "color", "color_weight", "label_counts", "feature", "feature_weight",
                "stamp")
"""Names of the per-voxel arrays in ``VoxelMap.state()`` (and in saved map files)."""
INSTANCE_FIELDS = ("instance", "instance_embedding", "instance_score", "instance_passes")
"""The instance layer in ``VoxelMap.state()``: per-voxel ids (M,) int32, then the InstanceTable's embeddings (I, D)
float32, scores (I,) float32 and passes (I,) int32."""


class VoxelMap:
    """Hashed sparse voxel map (see the module docstring). Thread-safe."""

    def __init__(self, config: VoxelMapConfig | None = None, label_names: Sequence[str] | None = None):
        self.config = config or VoxelMapConfig()
        self.device = torch.device(self.config.device)
        self.lock = threading.RLock()
        """Re-entrant lock held by every method; hold it to read several accessors from one state."""
        self._label_names: list[str] | None = None
        self.label_names = label_names
        self.voxels_evicted = 0
        """Voxels evicted since construction (clearing radius, evict_outside and max_voxels; not ``clear()``)."""
        self._reset_storage()

    # ------------------------------------------------------------------ properties
    @property
    def voxel_size(self) -> float:
        return self.config.voxel_size

    @property
    def label_names(self) -> list[str] | None:
        """Optional names of the label ids 0..num_labels-1."""
        return None if self._label_names is None else list(self._label_names)

    @label_names.setter
    def label_names(self, names: Sequence[str] | None) -> None:
        if names is not None:
            names = list(names)
            if len(names) != self.config.num_labels or not all(isinstance(n, str) for n in names):
                raise ValueError(f"label_names must be {self.config.num_labels} strings (num_labels), "
                                 f"got {len(names)} items")
        self._label_names = names

    def __len__(self) -> int:
        with self.lock:
            return self._num_voxels()

    # ------------------------------------------------------------------ integration
    def integrate(self, points, colors=None, labels=None, features=None, weights=None,
                  sensor_origin=None) -> IntegrationStats:
        """Fuse one batch of observations.

        points: (N, 3) float, metres, map frame (non-finite points are dropped and counted).
        colors: (N, 3) uint8 RGB. labels: (N,) int in [-1, num_labels), -1 = ignored. features: (N, D) float.
        weights: (N,) float >= 0 (default 1). sensor_origin: (3,) metres, map frame, used by clearing_radius and
        distance-based eviction. Position, colour and feature are weighted running means; labels add weighted
        counts. Returns what happened, including evictions.
        """
        pts = self._points(points)
        n = pts.shape[0]
        cols = self._colors(colors, n)
        labs = self._labels(labels, n)
        feats = self._features(features, n)
        w = self._weights(weights, n)
        origin = self._origin(sensor_origin)
        stats = IntegrationStats(points_in=n)
        frame = self._voxelise(pts, w, cols, labs, feats, stats)
        if w is not None:
            frame = frame.select(frame.weight > 0)
        if origin is not None and self.config.clearing_radius > 0:
            centers = _centers(frame.keys, self.voxel_size)
            outside = _squared_distance(centers, origin) > self.config.clearing_radius ** 2
            stats.points_outside_radius = int((frame.count * outside).sum())
            frame = frame.select(~outside)
        stats.points_integrated = int(frame.count.sum())
        clear = False
        radius = self.config.clearing_radius
        main = self._lookup_main(frame.packed)  # the O(U log M) part of the lookup, before the lock
        with self.lock:
            self._merge(frame, stats, geometry=True, main=main)
            if origin is not None:
                self._last_origin = origin
                clear = radius > 0 and (self._cleared_origin is None or float(torch.linalg.vector_norm(
                    origin - self._cleared_origin)) >= max(self.voxel_size, CLEARING_STEP * radius))
                if clear:
                    self._cleared_origin = origin
            stats.voxels_evicted += self._enforce_budget()  # a frame that outgrew the room made ahead (a stall)
        if clear:
            stats.voxels_evicted += self._evict_outside(origin, radius)
        stats.voxels_evicted += self._enforce_budget(room=ROOM_FACTOR * stats.voxels_created)
        stats.num_voxels = len(self)
        self._compact_index()
        return stats

    def integrate_features(self, points, features, weights=None) -> IntegrationStats:
        """Fuse (N, D) features observed at (N, 3) points (metres, map frame) into their voxels.

        Features are weighted running means stored as float16. Voxels that do not exist yet are created with
        geometry weight 0 (position = mean of these points, no colour, no labels); a later ``integrate`` then
        sets their geometry. Existing geometry, colour and labels are not changed.
        """
        if self.config.feature_dim == 0:
            raise ValueError("this map stores no features (feature_dim=0)")
        pts = self._points(points)
        n = pts.shape[0]
        feats = self._features(features, n)
        if feats is None:
            raise ValueError("features must not be None")
        w = self._weights(weights, n)
        stats = IntegrationStats(points_in=n)
        frame = self._voxelise(pts, w, None, None, feats, stats)
        if w is not None:
            frame = frame.select(frame.weight > 0)
        stats.points_integrated = int(frame.count.sum())
        main = self._lookup_main(frame.packed)  # the O(U log M) part of the lookup, before the lock
        with self.lock:
            self._merge(frame, stats, geometry=False, main=main)
            stats.voxels_evicted += self._enforce_budget()
        stats.voxels_evicted += self._enforce_budget(room=ROOM_FACTOR * stats.voxels_created)
        stats.num_voxels = len(self)
        self._compact_index()
        return stats

    def evict_outside(self, center, radius: float) -> int:
        """Remove voxels whose centre is farther than ``radius`` metres from ``center`` (3,); returns the count."""
        origin = self._origin(center)
        if origin is None or not (np.isfinite(radius) and radius >= 0):
            raise ValueError(f"evict_outside needs a centre and a radius >= 0 metres, got {center!r}, {radius!r}")
        return self._evict_outside(origin, float(radius))

    def clear(self) -> None:
        """Remove every voxel (keeps the configuration, label names and the eviction counter)."""
        with self.lock:
            self._reset_storage()

    # ------------------------------------------------------------------ accessors (copies, ascending key order)
    # ``indices``: optional (K,) int voxel indices (positions in this order) to copy only those voxels.
    def keys(self, indices=None) -> np.ndarray:
        """(M, 3) int32 voxel indices."""
        with self.lock:
            packed, _ = self._ordered()
            packed = packed if indices is None else packed[self._positions_of(indices)]
            return _host(unpack_keys(packed))

    def centers(self, indices=None) -> np.ndarray:
        """(M, 3) float32 voxel centres, metres, map frame."""
        return ((self.keys(indices) + np.float32(0.5)) * np.float32(self.voxel_size)).astype(np.float32)

    def positions(self, indices=None) -> np.ndarray:
        """(M, 3) float32 weighted mean point per voxel, metres, map frame."""
        return self._gather("position", indices)

    def colors(self, indices=None) -> np.ndarray:
        """(M, 3) uint8 RGB, weighted mean colour (0 where never coloured)."""
        return np.rint(self._gather("color", indices)).clip(0, 255).astype(np.uint8)

    def weights(self, indices=None) -> np.ndarray:
        """(M,) float32 summed point weight per voxel (the point count for unit weights)."""
        return self._gather("weight", indices)

    def label_distribution(self, indices=None) -> np.ndarray:
        """(M, num_labels) float32 weighted label counts."""
        return self._gather("label_counts", indices)

    def labels(self, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """(labels (M,) int32, -1 where no label was observed; confidence (M,) float32 = argmax share in [0, 1])."""
        with self.lock:
            return self._gather("label", indices), self._gather("confidence", indices)

    def features(self, indices=None) -> np.ndarray | None:
        """(M, D) float16 fused features (zeros where none observed), or None when feature_dim is 0."""
        return None if self.config.feature_dim == 0 else self._gather("feature", indices)

    def feature_weights(self, indices=None) -> np.ndarray:
        """(M,) float32 summed weight of the fused features (0 = no feature observed)."""
        return self._gather("feature_weight", indices)

    def instances(self, indices=None) -> np.ndarray:
        """(M,) int32 instance id per voxel (-1 = none): rows of ``instance_table()``."""
        return self._gather("instance", indices)

    def instance_table(self) -> InstanceTable:
        """A copy of the instance table (one embedding, score and pass count per instance id)."""
        with self.lock:
            return self._instances.copy()

    def update_instances(self, keys, masks, scores, embeddings, iou_threshold: float = MATCH_IOU) -> PassResult:
        """Fold one model pass's objects into the instance layer (``mapping.instances.merge_pass``).

        keys: (V, 3) int voxel indices of the window (voxels evicted since are skipped); masks (O, V) bool over
        them; scores (O,) in [0, 1]; embeddings (O, D) in the map's feature space (D = feature_dim).
        """
        keys = np.asarray(_host(keys))
        masks = np.asarray(_host(masks), dtype=bool)
        with self.lock:
            found, slots = self._lookup(pack_keys(torch.from_numpy(keys.astype(np.int32)).to(self.device)))
            slots = _rows(slots, found)
            instance = self._slots["instance"]
            held = torch.cat([self._index_slots, self._delta_slots])  # every voxel's slot (counts need no order)
            ids, self._instances, result = merge_pass(
                _host(instance.index_select(0, slots)), masks[:, _host(found)], _host(scores), _host(embeddings),
                self._instances, instance_voxel_counts(_host(instance.index_select(0, held)), len(self._instances)),
                iou_threshold)
            instance.index_copy_(0, slots, torch.from_numpy(ids).to(self.device))
        return result

    def feature_similarity(self, embedding, indices=None, compact: bool = False) -> np.ndarray:
        """Cosine similarity of each voxel's feature with ``embedding``: (D,) -> (M,), or (K, D) -> (M, K) float32;
        -inf where a voxel has no feature. ``indices``: optional (C,) voxel indices to score only those (M = C).

        compact=False: one float16 matrix product over the stored features (float32 accumulation; no (M, D) copy
        of the whole map), accurate to about 3e-4. compact=True: the int8 copy (D bytes read per voxel, half of
        float16; the embeddings quantised per row too), accurate to about 1e-2 (see ``Int8Scorer``).
        """
        single = np.ndim(embedding) <= 1
        e = self._unit_embeddings(embedding)
        with self.lock:
            if compact:
                cosine = self._int8_cosines(e, indices, len(e))
            else:
                slots, rows = self._scored_slots(indices)
                dots = torch.mm(self._slot_rows("feature", rows), e.to(torch.float16).t()).float()
                cosine = _cosine_(dots, self._slot_rows("feature_norm", rows)[:, None])
                if indices is None:  # scored in slot order: one reordering at the end
                    cosine = cosine.index_select(0, slots)
        return _host(cosine[:, 0] if single else cosine)

    def features_at_least(self, query, floor: float, negatives=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The voxels whose cosine with ``query`` (D,) reaches ``floor``, from the int8 store: (indices (C,) int64
        ascending, into the accessor order; cosine (C,) float32; hardest (C,) float32: the largest cosine with the
        (K, D) ``negatives``, -inf when there are none). The values are those of ``query_similarity`` (within
        the int8 store's 1e-2) without its (M,) arrays. On the CPU one compiled pass reads each voxel's D bytes
        once (``kernels.int8_cosines_at_least``) and only the C voxels are scored against the negatives; other
        devices score all voxels with torch and select."""
        e = self._query_rows(query, negatives)
        with self.lock:
            if self.device.type != "cpu":
                return self._scored_at_least(e, floor)
            store = [self._slot_rows(name, None).numpy() for name in ("feature_code", "feature_scale", "feature_norm")]
            codes, scales = kernels.quantize_query(e.numpy())
            rows, cosine = kernels.int8_cosines_at_least(*store, codes[0], scales[0], np.float32(floor))
            hardest = kernels.int8_max_cosines(*store, rows, codes[1:], scales[1:])
            keys, slots = self._ordered()
            rows = torch.from_numpy(rows)
            at = _searchsorted(keys, pack_keys(self._slots["keys"].index_select(0, rows))).clamp_(
                max=max(keys.numel() - 1, 0))
            live = slots.index_select(0, at) == rows if keys.numel() else torch.zeros_like(rows, dtype=torch.bool)
            indices, order = torch.sort(at[live])  # rows of freed slots (stale features) are not in the index
        kept = live.numpy().nonzero()[0][order.numpy()]
        return indices.numpy(), cosine[kept], hardest[kept]

    def _scored_at_least(self, rows: torch.Tensor, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``features_at_least`` with torch on any device: every voxel scored against the (1 + K, D) unit ``rows``
        (the query, then the negatives), then the voxels at or above the floor selected. Lock held."""
        cosine = self._int8_cosines(rows, None, 2, _query_and_hardest)
        indices = torch.nonzero(cosine[:, 0] >= floor).reshape(-1)
        chosen = cosine.index_select(0, indices)
        return _host(indices), _host(chosen[:, 0]), _host(chosen[:, 1])

    def query_similarity(self, query, negatives, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """Per voxel, from the int8 store: (cosine with ``query`` (D,), largest cosine with the (K, D) ``negatives``),
        two (M,) float32 arrays; -inf where a voxel has no feature, and -inf as the largest when K = 0.
        ``indices`` as in ``feature_similarity``. No (M, K) intermediate (see ``_int8_cosines``)."""
        e = self._query_rows(query, negatives)
        with self.lock:
            cosine = self._int8_cosines(e, indices, 2, _query_and_hardest)
        return _host(cosine[:, 0]), _host(cosine[:, 1])

    def _int8_cosines(self, embeddings: torch.Tensor, indices, width: int, reduce=None) -> torch.Tensor:
        """(M, width) float32: each voxel's (all, or those at ``indices``; accessor order) cosines with the (K, D)
        unit ``embeddings`` from the int8 store, -inf where a voxel has no feature, passed through ``reduce``
        ((C, K) -> (C, width); None = all K). Lock held. Scored QUERY_CHUNK // K voxels at a time in slot order:
        a chunk's dot products are scaled and reduced while in cache; one reordering at the end."""
        scorer = Int8Scorer(embeddings)
        slots, rows = self._scored_slots(indices)
        codes, scale, norm = (self._slot_rows(name, rows) for name in ("feature_code", "feature_scale", "feature_norm"))
        out = torch.empty((codes.shape[0], width), device=self.device)
        step = max(1, QUERY_CHUNK // len(embeddings))
        for start in range(0, codes.shape[0], step):
            part = slice(start, start + step)
            cosine = _cosine_(scorer(codes[part], scale[part]), norm[part, None])
            out[part] = cosine if reduce is None else reduce(cosine)
        return out.index_select(0, slots) if indices is None else out

    def _query_rows(self, query, negatives) -> torch.Tensor:
        """(1 + K, D) float32 unit rows: ``query`` (D,), then the (K, D) ``negatives`` (None: K = 0)."""
        negatives = np.asarray(_host([] if negatives is None else negatives), np.float32)
        return self._unit_embeddings(np.vstack([np.reshape(_host(query), (1, -1)),
                                                negatives.reshape(-1, np.shape(query)[-1])]))

    def _unit_embeddings(self, embedding) -> torch.Tensor:
        """(K, D) float32 unit rows on the map's device from a (D,) or (K, D) embedding; ValueError when impossible."""
        if self.config.feature_dim == 0:
            raise ValueError("this map stores no features (feature_dim=0)")
        e = np.asarray(_host(embedding), dtype=np.float32)  # a few rows: NumPy, then one copy to the device
        e = e.reshape(1, -1) if e.ndim <= 1 else e
        if e.ndim != 2 or e.shape[1] != self.config.feature_dim:
            raise ValueError(f"embedding has shape {tuple(e.shape)}, the map's features have "
                             f"{self.config.feature_dim} values")
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        if not np.isfinite(norm).all() or (norm == 0).any():
            raise ValueError("embedding must be finite and non-zero")
        return torch.from_numpy(e / norm).to(self.device)

    def _scored_slots(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(slots of the voxels to score, in accessor order; the rows to read: those slots, or None = all used
        slots in place, to be reordered by ``slots`` afterwards). Lock held."""
        _, slots = self._ordered()
        if indices is None:
            return slots, None
        slots = slots[self._positions_of(indices)]
        return slots, slots

    def memory_bytes(self) -> int:
        """Bytes of the voxel storage in use (slots handed out, including freed ones awaiting reuse) and of the
        index. Reserved but never touched slots (CPU) are not counted: the OS commits their pages on first write."""
        with self.lock:
            per_slot = sum(t[0].numel() * t.element_size() for t in self._slots.values()) if self._used else 0
            index = [self._index_keys, self._index_slots, self._delta_keys, self._delta_slots, self._free]
            return int(self._used * per_slot + sum(t.numel() * t.element_size() for t in index))

    # ------------------------------------------------------------------ state, files
    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the per-voxel arrays (STATE_FIELDS, ascending key order, CPU), the instance layer
        (INSTANCE_FIELDS) and ``tick`` (0-d int64)."""
        with self.lock:
            _, slots = self._ordered()
            out = {name: self._slots[name].index_select(0, slots).cpu() for name in (*STATE_FIELDS, "instance")}
            table = self._instances
            out.update(instance_embedding=torch.from_numpy(table.embeddings.copy()),
                       instance_score=torch.from_numpy(table.scores.copy()),
                       instance_passes=torch.from_numpy(table.passes.copy()))
            out["tick"] = torch.tensor(self._tick, dtype=torch.int64)
            return out

    @classmethod
    def from_state(cls, config: VoxelMapConfig, state: dict, label_names: Sequence[str] | None = None) -> "VoxelMap":
        """A map holding ``state`` (as returned by ``state()``; the INSTANCE_FIELDS may be absent: no instances);
        ValueError naming the first inconsistency.

        The arrays are copied into the map's (reserved) storage, so the map grows from there without copying.
        """
        vmap = cls(config, label_names)
        L, D = config.num_labels, config.feature_dim
        missing = sorted(set(STATE_FIELDS) - set(state))
        if missing:
            raise ValueError(f"state lacks {missing}")
        m = int(state["keys"].shape[0])
        for name in STATE_FIELDS:
            shape, dtype = _SLOT_FIELDS[name]
            t = state[name]
            want = (m, *shape(L, D))
            if tuple(t.shape) != want or t.dtype != dtype:
                raise ValueError(f"state[{name!r}] is {tuple(t.shape)} {t.dtype}, expected {want} {dtype}")
        keys = state["keys"]
        if m and int(keys.abs().max()) > KEY_LIMIT:
            raise ValueError(f"voxel indices beyond +-{KEY_LIMIT}")
        packed = pack_keys(keys)
        table = InstanceTable.empty(D)
        arrays = {name: state[name] for name in STATE_FIELDS}
        arrays["instance"] = torch.full((m,), -1, dtype=torch.int32)
        if "instance" in state:
            table = InstanceTable.validated(*(_host(state[n]) for n in INSTANCE_FIELDS[1:]), dim=D)
            ids = state["instance"]
            if tuple(ids.shape) != (m,) or ids.dtype != torch.int32:
                raise ValueError(f"state['instance'] is {tuple(ids.shape)} {ids.dtype}, expected ({m},) int32")
            if m and not (int(ids.min()) >= -1 and int(ids.max()) < len(table)):
                raise ValueError(f"instance ids must lie in [-1, {len(table)}) (the instance table's rows)")
            arrays["instance"] = ids
        if not bool((packed[1:] > packed[:-1]).all()):  # saved maps are sorted: no reordering copy needed
            order = torch.argsort(packed)
            packed = packed[order]
            if bool((packed[1:] == packed[:-1]).any()):
                raise ValueError("duplicate voxel keys")
            arrays = {name: t[order] for name, t in arrays.items()}
        for name in ("position", "color"):
            if not bool(torch.isfinite(arrays[name]).all()):
                raise ValueError(f"state[{name!r}] holds non-finite values")
        for name in ("weight", "color_weight", "feature_weight", "label_counts"):
            if not bool((torch.isfinite(arrays[name]) & (arrays[name] >= 0)).all()):
                raise ValueError(f"state[{name!r}] holds negative or non-finite values")
        with vmap.lock:
            everything = vmap._allocate(m)
            for name in (*STATE_FIELDS, "instance"):
                vmap._slots[name][:m] = arrays[name]
            vmap._instances = table
            vmap._refresh_derived(everything, labels=True, features=True)
            vmap._index_keys = packed.to(vmap.device)
            vmap._index_slots = everything
            vmap._tick = int(state["tick"]) if "tick" in state else (int(state["stamp"].max()) if m else 0)
        return vmap

    def save(self, path: str | Path) -> None:
        """Write the map atomically to one safetensors file (see map_file.save_map)."""
        from ov3dseg_core.mapping.map_file import save_map
        save_map(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "VoxelMap":
        """Read a map written by ``save``; MapFileError for corrupt, truncated or incompatible files."""
        from ov3dseg_core.mapping.map_file import load_map
        return load_map(path, device=device)

    def export_ply(self, path: str | Path) -> None:
        """Write the voxels as a binary PLY point cloud (see map_file.export_ply)."""
        from ov3dseg_core.mapping.map_file import export_ply
        export_ply(self, path)

    # ------------------------------------------------------------------ internals
    def _reset_storage(self) -> None:
        self._slots = {name: torch.zeros((0, *shape(self.config.num_labels, self.config.feature_dim)), dtype=dtype,
                                         device=self.device) for name, (shape, dtype) in _SLOT_FIELDS.items()}
        self._index_keys = torch.zeros(0, dtype=torch.int64, device=self.device)  # sorted packed keys (main)
        self._index_slots = torch.zeros(0, dtype=torch.int64, device=self.device)  # slot of each key
        self._delta_keys = torch.zeros(0, dtype=torch.int64, device=self.device)  # sorted keys of recent voxels
        self._delta_slots = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._free = torch.zeros(0, dtype=torch.int64, device=self.device)  # freed slots below _used (stale data)
        self._used = 0  # slots ever handed out (high-water mark)
        self._tick = 0  # integration calls so far (the "stamp" of a voxel is the tick of its last update)
        self._last_origin: torch.Tensor | None = None
        self._cleared_origin: torch.Tensor | None = None
        self._instances = InstanceTable.empty(self.config.feature_dim)

    def _gather(self, name: str, indices=None) -> np.ndarray:
        with self.lock:
            _, slots = self._ordered()
            slots = slots if indices is None else slots[self._positions_of(indices)]
            return _host(self._slots[name].index_select(0, slots))

    def _slot_rows(self, name: str, slots: torch.Tensor | None) -> torch.Tensor:
        """Rows of a slot array: of ``slots``, or all used slots (a view) when None."""
        t = self._slots[name]
        return t[:self._used] if slots is None else t.index_select(0, slots)

    def _num_voxels(self) -> int:
        return int(self._index_keys.numel() + self._delta_keys.numel())

    def _ordered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) packed keys ascending and (M,) their slots (the accessor order); merges the delta in (lock held)."""
        if self._delta_keys.numel():
            self._index_keys, self._index_slots = _merge_sorted(self._index_keys, self._index_slots,
                                                                self._delta_keys, self._delta_slots)
            self._delta_keys, self._delta_slots = self._delta_keys[:0], self._delta_slots[:0]
        return self._index_keys, self._index_slots

    def _lookup(self, packed: torch.Tensor, main=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(found (U,) bool, slots (U,) int64, undefined where not found) of ascending packed keys (lock held).
        ``main``: ``_lookup_main(packed)``, taken before the lock; when the main index is still the one it searched,
        only the delta is searched here."""
        delta = (self._delta_keys, self._delta_slots)
        if main is not None and main[0] is self._index_keys:
            found, slots = main[1:]
            parts = (delta,)
        else:
            found = torch.zeros(packed.numel(), dtype=torch.bool, device=self.device)
            slots = torch.empty(packed.numel(), dtype=torch.int64, device=self.device)
            parts = ((self._index_keys, self._index_slots), delta)
        for keys, key_slots in parts:
            found, slots = _find(keys, key_slots, packed, found, slots)
        return found, slots

    def _lookup_main(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the main index's keys, found, slots): ascending packed keys looked up in the main index without the
        lock (O(U log M); for ``_lookup``)."""
        with self.lock:
            keys, key_slots = self._index_keys, self._index_slots
        found = torch.zeros(packed.numel(), dtype=torch.bool, device=self.device)
        return (keys, *_find(keys, key_slots, packed, found, torch.empty_like(packed)))

    def _compact_index(self) -> None:
        """Merge a large delta into the main index; the O(map) merge runs without the lock (call it unlocked)."""
        with self.lock:
            if self._delta_keys.numel() <= max(1 << 16, self._index_keys.numel() // DELTA_FRACTION):
                return
            main, main_slots, delta, delta_slots = (self._index_keys, self._index_slots, self._delta_keys,
                                                    self._delta_slots)
        merged, merged_slots = _merge_sorted(main, main_slots, delta, delta_slots)
        with self.lock:
            if self._index_keys is not main:  # evicted or merged meanwhile: nothing to do
                return
            # keys inserted since the snapshot (the delta only grew: evictions replace the main array) stay
            later = ~_contains(delta, self._delta_keys)
            self._index_keys, self._index_slots = merged, merged_slots
            self._delta_keys, self._delta_slots = _rows(self._delta_keys, later), _rows(self._delta_slots, later)

    def _positions_of(self, indices) -> torch.Tensor:
        """(K,) int64 voxel indices on the map's device; IndexError when out of range."""
        idx = torch.as_tensor(indices, device=self.device).reshape(-1).to(torch.int64)
        m = self._num_voxels()
        if idx.numel() and (int(idx.min()) < -m or int(idx.max()) >= m):
            raise IndexError(f"voxel indices must be in [0, {m}), got [{int(idx.min())}, {int(idx.max())}]")
        return idx

    def _refresh_derived(self, slots: torch.Tensor, labels: bool, features: bool, chunk: int = FUSION_CHUNK) -> None:
        """Recompute the argmax label and its confidence, and the feature norm and int8 copy, of ``slots``.

        In chunks: temporaries stay small enough for the allocator to reuse (fresh large blocks cost page faults).
        """
        for start in range(0, slots.numel(), chunk):
            part = slots[start:start + chunk]
            if labels and self.config.num_labels:
                self._refresh_labels(part)
            if features and self.config.feature_dim:
                self._refresh_features(part, self._slots["feature"].index_select(0, part).float())

    def _refresh_labels(self, slots: torch.Tensor) -> None:
        s = self._slots
        counts = s["label_counts"].index_select(0, slots)
        total = counts.sum(dim=1)
        best, arg = counts.max(dim=1)
        seen = total > 0
        s["label"].index_copy_(0, slots, torch.where(seen, arg.to(torch.int32), -1))
        s["confidence"].index_copy_(0, slots, torch.where(seen, best / total.clamp_min(1e-30), 0.0))

    def _refresh_features(self, slots: torch.Tensor, features: torch.Tensor) -> None:
        """Norm and int8 copy of the (K, D) float32 ``features`` (the float16 values stored) of ``slots``."""
        s = self._slots
        s["feature_norm"].index_copy_(0, slots, torch.linalg.vector_norm(features, dim=1))
        codes, scale = quantize_rows(features)
        s["feature_code"].index_copy_(0, slots, codes)
        s["feature_scale"].index_copy_(0, slots, scale)

    def _fuse_features(self, slots: torch.Tensor, feature_sum: torch.Tensor, weight: torch.Tensor,
                       chunk: int = FUSION_CHUNK) -> None:
        """Weighted running mean of the float16 features of (U,) ``slots`` with (U, D) float32 weighted sums of
        (U,) summed ``weight``, ``chunk`` rows at a time (float32 temporaries of chunk x D, not U x D)."""
        s = self._slots
        for start in range(0, slots.numel(), chunk):
            part, w_new = slots[start:start + chunk], weight[start:start + chunk]
            fw = s["feature_weight"].index_select(0, part)
            fw_sum = fw + w_new
            fused = s["feature"].index_select(0, part).float().mul_(fw[:, None])
            fused = fused.add_(feature_sum[start:start + chunk]).div_(fw_sum[:, None]).to(torch.float16)
            s["feature"].index_copy_(0, part, fused)
            s["feature_weight"].index_copy_(0, part, fw_sum)
            self._refresh_features(part, fused.float())

    # Inputs are validated and reduced to voxels as NumPy arrays on the CPU (whatever the map's device: frames
    # arrive from NumPy decoders, and NumPy's contiguous kernels are several times faster than torch's here).
    def _points(self, points) -> np.ndarray:
        pts = _host(points)
        if pts.ndim != 2 or pts.shape[1] != 3 or pts.dtype.kind != "f":
            raise ValueError(f"points must be an (N, 3) float array, got shape {pts.shape} {pts.dtype}")
        return pts.astype(np.float32, copy=False)

    def _colors(self, colors, n: int) -> np.ndarray | None:
        if colors is None:
            return None
        c = _host(colors)
        if c.shape != (n, 3) or c.dtype != np.uint8:
            raise ValueError(f"colors must be ({n}, 3) uint8 RGB, got {c.shape} {c.dtype}")
        return c

    def _labels(self, labels, n: int) -> np.ndarray | None:
        if labels is None:
            return None
        if self.config.num_labels == 0:
            raise ValueError("labels given but this map has num_labels=0")
        lab = _host(labels)
        if lab.shape != (n,) or lab.dtype.kind not in "iu":
            raise ValueError(f"labels must be ({n},) integers, got {lab.shape} {lab.dtype}")
        if n:
            low, high = int(lab.min()), int(lab.max())
            if low < -1 or high >= self.config.num_labels:
                raise ValueError(f"labels must be in [-1, {self.config.num_labels}), got range [{low}, {high}]")
        return lab.astype(np.int32, copy=False)

    def _features(self, features, n: int) -> np.ndarray | None:
        if features is None:
            return None
        d = self.config.feature_dim
        if d == 0:
            raise ValueError("features given but this map has feature_dim=0")
        f = _host(features)
        if f.shape != (n, d) or f.dtype.kind != "f":
            raise ValueError(f"features must be ({n}, {d}) float, got {f.shape} {f.dtype}")
        f = f.astype(np.float32, copy=False)
        if n and not np.einsum("ij,ij->i", f, f).max() <= FEATURE_NORM_LIMIT ** 2:
            raise ValueError(f"features must be finite with L2 norm <= {FEATURE_NORM_LIMIT} (float16 storage)")
        return f

    def _weights(self, weights, n: int) -> np.ndarray | None:
        if weights is None:
            return None
        w = _host(weights)
        if w.shape != (n,) or w.dtype.kind != "f":
            raise ValueError(f"weights must be ({n},) float, got {w.shape} {w.dtype}")
        w = w.astype(np.float32, copy=False)
        if n and not (np.isfinite(w.sum()) and w.min() >= 0):
            raise ValueError("weights must be finite and >= 0")
        return w

    def _origin(self, origin) -> torch.Tensor | None:
        if origin is None:
            return None
        o = torch.as_tensor(origin, dtype=torch.float32, device=self.device).reshape(-1)
        if o.numel() != 3 or not bool(torch.isfinite(o).all()):
            raise ValueError(f"sensor origin must be 3 finite values (metres, map frame), got {origin!r}")
        return o

    def _voxelise(self, pts, w, cols, labs, feats, stats: IntegrationStats) -> _FrameVoxels:
        """Reduce N points ((N, 3) float32 metres and their validated extras, NumPy) to their U unique voxels with
        weighted sums, as tensors on the map's device (no map state touched).

        The per-point passes are compiled loops (``mapping.kernels``) over contiguous (3, N) rows (no copy for
        column-major points, as ``frame_points`` returns them).
        """
        vs = np.float32(self.voxel_size)
        rows = np.ascontiguousarray(pts.T)
        idx, keep, kept, lo, hi = kernels.grid_indices(rows, vs, KEY_LIMIT)
        if kept < rows.shape[1]:  # non-finite or beyond KEY_LIMIT
            rows, idx = rows[:, keep], idx[:, keep]
            w, cols, labs, feats = (None if e is None else e[keep] for e in (w, cols, labs, feats))
        stats.points_invalid = stats.points_in - kept
        if kept and np.prod(hi - lo + 1) <= DENSE_GRID_CELLS_PER_POINT * kept + (1 << 16):
            keys, inv = kernels.dense_unique(idx, lo, hi)
            packed = pack_keys(torch.from_numpy(keys)).numpy()
        else:
            packed, inv = np.unique(pack_keys(torch.from_numpy(idx.T)).numpy(), return_inverse=True)
            keys, inv = unpack_keys(torch.from_numpy(packed)).numpy(), inv.astype(np.int32)
        u = len(packed)
        weight, count, local_sum, color_sum, label_sum = kernels.voxel_sums(
            rows, idx, inv, u, vs, _NO_WEIGHTS if w is None else w,
            _NO_COLORS if cols is None else np.ascontiguousarray(cols), _NO_LABELS if labs is None else labs,
            self.config.num_labels)
        feature_sum = None if feats is None else np.asarray(_spread_matrix(inv, u, w) @ feats, dtype=np.float32)
        arrays = (packed, keys, weight, local_sum, count, None if cols is None else color_sum,
                  None if labs is None else label_sum, feature_sum)
        return _FrameVoxels(*(None if a is None else torch.from_numpy(a).to(self.device) for a in arrays))

    def _merge(self, frame: _FrameVoxels, stats: IntegrationStats, geometry: bool, main=None) -> None:
        """Add a frame's voxel sums to the map (lock held; ``main`` as in ``_lookup``)."""
        self._tick += 1
        u = frame.packed.numel()
        if u == 0:
            return
        found, slots = self._lookup(frame.packed, main)
        new = (~found).nonzero().squeeze(1)
        n_new = new.numel()
        if n_new:
            new_slots = self._allocate(n_new)
            slots.index_copy_(0, new, new_slots)
            self._slots["keys"].index_copy_(0, new_slots, frame.keys.index_select(0, new))
            self._delta_keys, self._delta_slots = _merge_sorted(self._delta_keys, self._delta_slots,
                                                                frame.packed.index_select(0, new), new_slots)
        stats.voxels_created, stats.voxels_updated = n_new, u - n_new

        s = self._slots
        corner = frame.keys.to(torch.float32) * self.voxel_size
        w_new = frame.weight
        w_old = s["weight"].index_select(0, slots)
        if geometry:
            local_old = s["position"].index_select(0, slots) - corner
            w_sum = w_old + w_new
            fused = corner + (local_old * w_old[:, None] + frame.local_sum) / w_sum[:, None]
            s["position"].index_copy_(0, slots, fused)
            s["weight"].index_copy_(0, slots, w_sum)
        else:  # feature-only observations place voxels that have no geometry yet
            bare = (w_old == 0).nonzero().squeeze(1)
            placed = (corner + frame.local_sum / w_new[:, None]).index_select(0, bare)
            s["position"].index_copy_(0, slots.index_select(0, bare), placed)
        if frame.color_sum is not None:
            cw = s["color_weight"].index_select(0, slots)
            cw_sum = cw + w_new
            fused = (s["color"].index_select(0, slots) * cw[:, None] + frame.color_sum) / cw_sum[:, None]
            s["color"].index_copy_(0, slots, fused)
            s["color_weight"].index_copy_(0, slots, cw_sum)
        if frame.label_sum is not None:
            s["label_counts"].index_add_(0, slots, frame.label_sum)
            self._refresh_derived(slots, labels=True, features=False)
        if frame.feature_sum is not None:
            self._fuse_features(slots, frame.feature_sum, w_new)
        s["stamp"].index_fill_(0, slots, self._tick)

    def _allocate(self, n: int) -> torch.Tensor:
        """n zeroed slots (label -1): freed ones first, then fresh ones (growing the storage)."""
        take = min(n, self._free.numel())
        parts = []
        if take:
            reused = self._free[self._free.numel() - take:]
            self._free = self._free[:self._free.numel() - take]
            for t in self._slots.values():
                t.index_fill_(0, reused, 0)
            parts.append(reused)
        rest = n - take
        if rest:
            self._grow(self._used + rest)
            for t in self._slots.values():
                t[self._used:self._used + rest].zero_()
            parts.append(torch.arange(self._used, self._used + rest, device=self.device))
            self._used += rest
        slots = parts[0] if len(parts) == 1 else torch.cat(parts or [self._free[:0]])
        self._slots["label"].index_fill_(0, slots, -1)
        self._slots["instance"].index_fill_(0, slots, -1)
        return slots

    def _grow(self, need: int) -> None:
        """Make room for ``need`` slots. CPU: reserve the whole budget once (pages are committed when first
        written), so growing never copies; other devices (or when that reservation fails): double the capacity."""
        capacity = self._slots["weight"].numel()
        if need <= capacity:
            return
        doubled = max(need, min(max(2 * capacity, 4096), self.config.max_voxels))
        if self.device.type == "cpu":
            try:
                self._resize(max(need, self.config.max_voxels + RESERVE_HEADROOM))
                return
            except RuntimeError:  # the OS refused the reservation (overcommit limits)
                pass
        self._resize(doubled)

    def _resize(self, capacity: int) -> None:
        """Move the used slots into uninitialised arrays of ``capacity`` slots (fresh slots are zeroed on use)."""
        grown = {name: torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
                 for name, t in self._slots.items()}
        for name, t in grown.items():
            t[:self._used] = self._slots[name][:self._used]
        self._slots = grown

    def _snapshot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M,) packed keys and (M,) slots of every voxel (main index, then the delta: not in key order) and the
        slots' stamp array, taken under the lock; the keys and slots are concatenated outside it (the index
        arrays are replaced, never changed in place)."""
        with self.lock:
            parts = self._index_keys, self._delta_keys, self._index_slots, self._delta_slots
            stamps = self._slots["stamp"]
        return torch.cat(parts[:2]), torch.cat(parts[2:]), stamps

    def _evict_keys(self, victims: torch.Tensor) -> int:
        """Drop the voxels of ascending packed keys ``victims`` (absent ones are skipped); returns the count.

        The O(map) part, rebuilding the main index without them, runs outside the lock against a snapshot and is
        swapped in if the main index is still that snapshot (else it is redone; the last of EVICT_ATTEMPTS holds
        the lock throughout). Under the lock: O(delta + victims). Freed slots are zeroed when handed out again.
        Call without holding the lock (holding it works, without the benefit)."""
        if victims.numel() == 0:
            return 0
        for attempt in range(EVICT_ATTEMPTS):
            with self.lock if attempt == EVICT_ATTEMPTS - 1 else contextlib.nullcontext():
                with self.lock:
                    main, main_slots = self._index_keys, self._index_slots
                hit = _contains(main, victims)
                at = _searchsorted(main, _rows(victims, hit)) if main.numel() else main
                keep = torch.ones(main.numel(), dtype=torch.bool, device=self.device)
                keep[at] = False
                kept, kept_slots = _rows(main, keep), _rows(main_slots, keep)
                with self.lock:
                    if self._index_keys is not main:  # evicted, merged or cleared meanwhile: redo
                        continue
                    in_delta = _contains(victims, self._delta_keys)
                    freed = torch.cat([main_slots.index_select(0, at), _rows(self._delta_slots, in_delta)])
                    self._index_keys, self._index_slots = kept, kept_slots
                    self._delta_keys, self._delta_slots = (_rows(self._delta_keys, ~in_delta),
                                                           _rows(self._delta_slots, ~in_delta))
                    self._free = torch.cat([self._free, freed])
                    self.voxels_evicted += freed.numel()
                    return freed.numel()
        raise AssertionError("unreachable: the last attempt holds the lock")

    def _evict_outside(self, origin: torch.Tensor, radius: float) -> int:
        """Evict the voxels whose centre lies beyond ``radius`` metres of ``origin`` (choice and index rebuild
        outside the lock, see ``_evict_keys``)."""
        keys = self._snapshot()[0]
        return self._evict_keys(torch.sort(_rows(keys, _center_distance2(keys, origin, self.voxel_size)
                                                 > radius ** 2)).values)

    def _enforce_budget(self, room: int = 0) -> int:
        """Evict down to eviction_target * max_voxels once more than max_voxels - ``room`` voxels are held; returns
        the count. Called unlocked after each frame with room for ROOM_FACTOR times the voxels it created (so that
        the next frame fits), the O(map) choice of victims and the index rebuild run outside the lock (see
        ``_evict_keys``); called with the lock held (room 0) it keeps max_voxels when a frame did not fit."""
        with self.lock:
            m, origin = self._num_voxels(), self._last_origin
        if m <= self.config.max_voxels - room:
            return 0
        keys, slots, stamps = self._snapshot()
        if origin is not None:  # farthest from the sensor first
            priority = _center_distance2(keys, origin, self.voxel_size)
        else:  # least recently updated first
            priority = -stamps.index_select(0, slots).to(torch.float64)
        excess = max(keys.numel() - int(self.config.max_voxels * self.config.eviction_target), 0)
        victims = torch.topk(priority, excess, largest=True, sorted=False).indices
        return self._evict_keys(torch.sort(keys.index_select(0, victims)).values)


def _spread_matrix(inverse: np.ndarray, u: int, weights: np.ndarray | None) -> sparse.csc_matrix:
    """The (U, N) matrix whose product with (N, C) per-point values gives the (U, C) per-voxel (weighted) sums
    (scipy CSC: one pass over row-major values for all C columns)."""
    n = inverse.size
    data = np.ones(n, np.float32) if weights is None else weights
    return sparse.csc_matrix((data, inverse, np.arange(n + 1, dtype=np.int32)), shape=(u, n))


def _host(values) -> np.ndarray:
    """A NumPy array of a tensor (any device; copied to the CPU) or array-like (no copy when already one)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """t[mask] for a boolean (N,) mask over the rows of t (NumPy on CPU: torch's boolean indexing is ~10x slower)."""
    if t.device.type == "cpu":
        return torch.from_numpy(t.numpy()[mask.numpy()])
    return t[mask]


def _merge_sorted(keys: torch.Tensor, values: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor):
    """Insert ascending ``new_keys`` (absent from ascending ``keys``) with their values, in O(M + n)."""
    if keys.device.type == "cpu":
        at = np.searchsorted(keys.numpy(), new_keys.numpy())
        return (torch.from_numpy(np.insert(keys.numpy(), at, new_keys.numpy())),
                torch.from_numpy(np.insert(values.numpy(), at, new_values.numpy())))
    m, n = keys.numel(), new_keys.numel()
    at = torch.searchsorted(keys, new_keys) + torch.arange(n, device=keys.device)
    old = torch.ones(m + n, dtype=torch.bool, device=keys.device)
    old[at] = False
    merged_keys, merged_values = keys.new_empty(m + n), values.new_empty(m + n)
    merged_keys[at], merged_values[at] = new_keys, new_values
    merged_keys[old], merged_values[old] = keys, values
    return merged_keys, merged_values


def _find(keys: torch.Tensor, key_slots: torch.Tensor, packed: torch.Tensor, found: torch.Tensor,
          slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending ``packed`` looked up in ascending ``keys`` (slots ``key_slots``): (found or hit, the hits' slots
    where hit, else ``slots``)."""
    if keys.numel() == 0:
        return found, slots
    pos = _searchsorted(keys, packed).clamp_(max=keys.numel() - 1)
    hit = keys.index_select(0, pos) == packed
    return found | hit, torch.where(hit, key_slots.index_select(0, pos), slots)


def _contains(sorted_keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which ``values`` occur in ascending ``sorted_keys``."""
    if sorted_keys.numel() == 0:
        return torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    pos = _searchsorted(sorted_keys, values).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys.index_select(0, pos) == values


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, D) float rows -> (codes (K, D) int8, scale (K,) float32) with rows ~ codes * scale[:, None]
    (scale = max |value| / 127 per row, so each value is off by at most scale / 2)."""
    scale = rows.abs().amax(dim=1) / 127.0 if rows.shape[1] else rows.new_zeros(rows.shape[0])
    codes = (rows / scale.clamp_min(1e-30)[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return codes, scale.to(torch.float32)


class Int8Scorer:
    """Dot products of int8 rows (codes (M, D) int8 x scale (M,)) with fixed (K, D) float embeddings.

    The embeddings are quantised per row once; the int8 x int8 products accumulate exactly in int32 (oneDNN on
    x86 CPUs, reading D bytes per row), elsewhere in float32 chunks. Error: about 1e-2 for unit vectors.
    """

    def __init__(self, embeddings: torch.Tensor):
        self.codes, self.scale = quantize_rows(embeddings.to(torch.float32))
        self.onednn = (embeddings.device.type == "cpu" and torch.backends.mkldnn.is_available()
                       and len(self.codes) > 0)
        if self.onednn:
            self.packed = torch.ops.onednn.qlinear_prepack(self.codes, [QUERY_CHUNK, self.codes.shape[1]])
            self.zero = torch.zeros(len(self.codes), dtype=torch.int64)
        self.dense = (self.codes.to(torch.float32) * self.scale[:, None]).t()  # (D, K), the portable path

    def __call__(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(M, K) float32 dot products."""
        if self.onednn and codes.shape[0]:
            dots = torch.ops.onednn.qlinear_pointwise(codes, 1.0, 0, self.packed, self.scale, self.zero, None, 1.0,
                                                      0, torch.float32, "none", [None], "")
        else:
            dots = torch.empty((codes.shape[0], len(self.codes)), device=codes.device)
            for i in range(0, codes.shape[0], FUSION_CHUNK):
                torch.mm(codes[i:i + FUSION_CHUNK].to(torch.float32), self.dense, out=dots[i:i + FUSION_CHUNK])
        return dots.mul_(scale[:, None])


def _query_and_hardest(cosine: torch.Tensor) -> torch.Tensor:
    """(C, 1 + K) cosines with a query and K negatives -> (C, 2): the query's, the largest negative's (-inf: K = 0)."""
    hardest = cosine[:, 1:].amax(dim=1) if cosine.shape[1] > 1 else torch.full_like(cosine[:, 0], -torch.inf)
    return torch.stack([cosine[:, 0], hardest], dim=1)


def _cosine_(dots: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(M, K) dot products with unit vectors -> cosines in place, given (M, 1) feature norms; -inf where a norm is 0."""
    return dots.div_(norms.clamp_min(1e-30)).clamp_(min=-1.0, max=1.0).masked_fill_(norms == 0, -torch.inf)


def _searchsorted(sorted_keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """torch.searchsorted (left); on CPU NumPy's, which is about 3x faster for int64 keys."""
    if sorted_keys.device.type == "cpu":
        return torch.from_numpy(np.searchsorted(sorted_keys.numpy(), values.numpy()))
    return torch.searchsorted(sorted_keys, values)


def _centers(keys: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(N, 3) int voxel indices -> (N, 3) float32 centres, metres."""
    return (keys.to(torch.float32) + 0.5) * voxel_size


def _center_distance2(packed: torch.Tensor, origin: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(M,) float32 squared distances (m^2) from the centres of the voxels of (M,) packed keys to ``origin`` (3,),
    one axis at a time (1-D ops: no (M, 3) temporaries)."""
    d2 = torch.zeros(packed.numel(), device=packed.device)
    for axis, shift in enumerate((2 * KEY_BITS, KEY_BITS, 0)):
        index = (packed >> shift).bitwise_and_(_KEY_MASK).sub_(_KEY_BIAS).to(torch.float32)
        offset = index.add_(0.5).mul_(voxel_size).sub_(origin[axis])
        d2.addcmul_(offset, offset)
    return d2


def _squared_distance(points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    return ((points - origin) ** 2).sum(dim=1)
