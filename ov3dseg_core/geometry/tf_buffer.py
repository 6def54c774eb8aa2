"""A thread-safe, time-indexed transform tree (the ROS-free counterpart of tf2's buffer).

Frames form a tree: every child frame has one parent edge holding ``T_parent_child`` (4, 4) float64 samples.
Dynamic edges keep a sorted history bounded by ``cache_time_s`` and are interpolated between samples (linear
translation, SLERP rotation); static edges are valid at all times. Lookups never extrapolate: a time outside an
edge's samples raises ExtrapolationError. Time stamps are integer nanoseconds.
"""
from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from ov3dseg_core.geometry.transforms import interpolate_transform, invert_transform

LOG = logging.getLogger(__name__)

ORTHONORMAL_TOLERANCE = 1e-5
"""Largest |R R^T - I| entry accepted for the rotation block of a stored transform."""


class TransformError(Exception):
    """A transform cannot be looked up."""


class ConnectivityError(TransformError):
    """A frame is unknown, or the two frames are not connected through the tree."""


class ExtrapolationError(TransformError):
    """The requested time lies outside the samples of an edge on the path (no silent extrapolation).

    ``stamp_ns`` is the requested time; ``earliest_ns`` / ``latest_ns`` bound the time range that was available.
    """

    def __init__(self, message: str, stamp_ns: int, earliest_ns: int, latest_ns: int):
        super().__init__(message)
        self.stamp_ns = stamp_ns
        self.earliest_ns = earliest_ns
        self.latest_ns = latest_ns


@dataclass
class _Edge:
    """The samples of ``T_parent_child`` for one child frame, stamps sorted ascending (one sample if static)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    transforms: list[np.ndarray] = field(default_factory=list)


class TfBuffer:
    """Transform tree with bounded history; all methods are thread-safe.

    ``cache_time_s``: a dynamic edge drops samples older than its newest sample minus this many seconds.
    """

    def __init__(self, cache_time_s: float = 10.0):
        if not cache_time_s > 0:
            raise ValueError(f"cache_time_s must be positive, got {cache_time_s}")
        self._cache_ns = int(round(cache_time_s * 1e9))
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child, static: bool = False) -> None:
        """Add a sample of ``T_parent_child`` (4, 4) rigid, metres, at ``stamp_ns``.

        A static edge keeps only its latest value and ignores ``stamp_ns``. A sample with the same stamp as a stored
        one replaces it. When ``child`` arrives with a different parent (or switches between static and dynamic),
        the new edge replaces the old one and its history, with a logged warning. ValueError for bad frame names,
        stamps or non-rigid matrices; TransformError when the new edge would close a cycle.
        """
        _check_frame(parent)
        _check_frame(child)
        if parent == child:
            raise ValueError(f"frame {child!r} cannot be its own parent")
        stamp_ns = _check_stamp(stamp_ns)
        T = _frozen_rigid(T_parent_child)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._replace_edge(parent, child, static)
            if static:
                edge.stamps, edge.transforms = [stamp_ns], [T]
            else:
                self._insert_sample(edge, stamp_ns, T)

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        """Whether ``lookup(target, source, stamp_ns)`` would succeed."""
        try:
            self.lookup(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """``T_target_source`` (4, 4) float64 at ``stamp_ns`` (0 = the latest time all edges on the path share).

        Raises ConnectivityError for unknown or unconnected frames and ExtrapolationError when the time lies
        outside the data of an edge on the path.
        """
        stamp_ns = _check_stamp(stamp_ns)
        with self._lock:
            source_chain, target_chain = self._chains(target, source)
            if stamp_ns == 0:
                stamp_ns = self._latest_common_time(source_chain + target_chain, target, source)
            T_root_source = self._compose(source_chain, stamp_ns, target, source)
            T_root_target = self._compose(target_chain, stamp_ns, target, source)
        return invert_transform(T_root_target) @ T_root_source

    def frames(self) -> set[str]:
        """All frames that appear as parent or child of a stored edge."""
        with self._lock:
            return set(self._edges) | {edge.parent for edge in self._edges.values()}

    def clear(self) -> None:
        """Drop all dynamic edges (e.g. after a time jump); static edges stay, as in tf2 (/tf_static is latched)."""
        with self._lock:
            self._edges = {child: edge for child, edge in self._edges.items() if edge.static}

    def _replace_edge(self, parent: str, child: str, static: bool) -> _Edge:
        """Install a new, empty edge parent -> child; TransformError if ``parent`` descends from ``child``."""
        frame = parent
        while frame in self._edges:
            frame = self._edges[frame].parent
            if frame == child:
                raise TransformError(f"edge {parent!r} -> {child!r} would create a cycle: {parent!r} descends "
                                     f"from {child!r}")
        old = self._edges.get(child)
        if old is not None:
            LOG.warning("frame %r: replacing %s edge from %r by %s edge from %r (history dropped)", child,
                        _kind(old.static), old.parent, _kind(static), parent)
        edge = _Edge(parent, static)
        self._edges[child] = edge
        return edge

    def _insert_sample(self, edge: _Edge, stamp_ns: int, T: np.ndarray) -> None:
        """Insert a sample in stamp order, then drop samples older than the newest minus the cache time."""
        stamps = edge.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            edge.transforms[i] = T
            return
        stamps.insert(i, stamp_ns)
        edge.transforms.insert(i, T)
        cut = bisect.bisect_left(stamps, stamps[-1] - self._cache_ns)
        if cut:
            del stamps[:cut]
            del edge.transforms[:cut]

    def _chains(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Child frames whose edges lead from ``source`` and from ``target`` up to their lowest common ancestor."""
        known = set(self._edges) | {edge.parent for edge in self._edges.values()}
        for frame in (target, source):
            if frame not in known:
                listed = ", ".join(sorted(known)[:20]) or "none"
                raise ConnectivityError(f"unknown frame {frame!r} (known frames: {listed})")
        source_up = self._ancestors(source)
        depth = {frame: i for i, frame in enumerate(source_up)}
        target_up = self._ancestors(target)
        for j, frame in enumerate(target_up):
            if frame in depth:
                return source_up[:depth[frame]], target_up[:j]
        raise ConnectivityError(f"no transform between {target!r} and {source!r}: they lie in separate trees "
                                f"rooted at {target_up[-1]!r} and {source_up[-1]!r}")

    def _ancestors(self, frame: str) -> list[str]:
        """``frame`` followed by its parent, grandparent, ... up to the root of its tree."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _latest_common_time(self, children: list[str], target: str, source: str) -> int:
        """Newest stamp covered by every dynamic edge of ``children`` (0 if all are static)."""
        dynamic = [self._edges[child] for child in children if not self._edges[child].static]
        if not dynamic:
            return 0
        latest = min(edge.stamps[-1] for edge in dynamic)
        earliest = max(edge.stamps[0] for edge in dynamic)
        if latest < earliest:
            raise ExtrapolationError(f"cannot transform {source!r} to {target!r} at the latest common time: the "
                                     f"edges on the path share no time (latest common {_fmt(latest)} is before "
                                     f"earliest common {_fmt(earliest)})", 0, earliest, latest)
        return latest

    def _compose(self, children: list[str], stamp_ns: int, target: str, source: str) -> np.ndarray:
        """Product of the edge transforms along ``children`` (bottom-up): T_top_bottom at ``stamp_ns``."""
        T = np.eye(4)
        for child in children:
            T = self._sample(child, stamp_ns, target, source) @ T
        return T

    def _sample(self, child: str, stamp_ns: int, target: str, source: str) -> np.ndarray:
        """T_parent_child at ``stamp_ns``: static value, exact sample, or interpolation between neighbours."""
        edge = self._edges[child]
        if edge.static:
            return edge.transforms[0]
        stamps = edge.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.transforms[i]
        if i == 0 or i == len(stamps):
            direction = "before the earliest" if i == 0 else "after the latest"
            raise ExtrapolationError(
                f"cannot transform {source!r} to {target!r} at {_fmt(stamp_ns)}: edge {edge.parent!r} -> {child!r} "
                f"has data for [{_fmt(stamps[0])}, {_fmt(stamps[-1])}] only (requested time is {direction} "
                f"sample; no extrapolation)", stamp_ns, stamps[0], stamps[-1])
        alpha = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        return interpolate_transform(edge.transforms[i - 1], edge.transforms[i], alpha)


def _check_frame(frame: str) -> None:
    """ValueError unless ``frame`` is a non-empty string."""
    if not isinstance(frame, str) or not frame:
        raise ValueError(f"frame ids must be non-empty strings, got {frame!r}")


def _check_stamp(stamp_ns: int) -> int:
    """``stamp_ns`` as a Python int; ValueError unless it is a non-negative integer (nanoseconds)."""
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, Integral) or stamp_ns < 0:
        raise ValueError(f"stamp_ns must be a non-negative integer number of nanoseconds, got {stamp_ns!r}")
    return int(stamp_ns)


def _frozen_rigid(T) -> np.ndarray:
    """Read-only (4, 4) float64 copy of a rigid transform; ValueError if it is not finite and rigid."""
    T = np.array(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"transform must be a finite (4, 4) matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0]) or np.abs(R @ R.T - np.eye(3)).max() > ORTHONORMAL_TOLERANCE \
            or np.linalg.det(R) < 0:
        raise ValueError(f"transform is not rigid (orthonormal rotation, last row 0 0 0 1):\n{T}")
    T.flags.writeable = False
    return T


def _fmt(stamp_ns: int) -> str:
    """A nanosecond stamp as exact seconds, e.g. '12.000500000 s'."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d} s"


def _kind(static: bool) -> str:
    """'static' or 'dynamic'."""
    return "static" if static else "dynamic"
