"""Approximate-time matching of several message streams (message_filters is not available from PyPI).

Unlike message_filters' Python synchronisers, ``add`` does no user work while holding its lock: it only files
the message and returns the matched set, which the caller queues for the worker.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any


class StampSynchronizer:
    """Groups one message per stream whose stamps lie within ``tolerance_ns`` of the newest message's stamp.

    Each stream keeps at most ``depth`` unmatched messages (the oldest is discarded beyond it). When a set
    matches, older unmatched messages of every stream can no longer match and are discarded too; ``discarded``
    counts all of them.
    """

    def __init__(self, streams: tuple[str, ...], tolerance_ns: int, depth: int = 10):
        if not streams:
            raise ValueError("StampSynchronizer needs at least one stream")
        self.streams = tuple(streams)
        self.tolerance_ns = tolerance_ns
        self.discarded = 0
        self._pending: dict[str, deque[tuple[int, Any]]] = {s: deque() for s in self.streams}
        self._depth = depth
        self._lock = threading.Lock()

    def add(self, stream: str, stamp_ns: int, message: Any) -> tuple[int, dict[str, Any]] | None:
        """File ``message``; returns (stamp_ns of the set, {stream: message}) when a full set matched, else None."""
        with self._lock:
            queue = self._pending[stream]
            queue.append((stamp_ns, message))
            if len(queue) > self._depth:
                queue.popleft()
                self.discarded += 1
            picks = {stream: len(queue) - 1}
            for other in self.streams:
                if other == stream:
                    continue
                best = self._closest(self._pending[other], stamp_ns)
                if best is None:
                    return None
                picks[other] = best
            matched = {}
            for name, index in picks.items():
                pending = self._pending[name]
                self.discarded += index  # older messages of this stream can no longer match
                for _ in range(index):
                    pending.popleft()
                matched[name] = pending.popleft()[1]
            return stamp_ns, matched

    def _closest(self, queue: deque[tuple[int, Any]], stamp_ns: int) -> int | None:
        """Index of the message closest in time to ``stamp_ns`` within the tolerance, or None."""
        best, best_gap = None, self.tolerance_ns
        for i, (stamp, _) in enumerate(queue):
            gap = abs(stamp - stamp_ns)
            if gap <= best_gap:
                best, best_gap = i, gap
        return best
