"""Bounded, TF-gated queue of sensor frames between the subscription callbacks and the mapping worker.

Callbacks ``push`` and return at once; the worker ``pop_ready`` the oldest frame whose transform (and whatever
else ``is_ready`` checks) is available. A frame that waits longer than the timeout is handed back as expired;
when the queue is full the oldest frame is dropped, so the newest data wins.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class PendingFrame:
    """One sensor frame waiting for integration.

    kind: "rgbd" or "cloud"; source: camera namespace or LiDAR topic; frame_id: sensor frame of the data;
    stamp_ns: source time; arrival_ns: node clock (ROS time) when it was queued; messages: the raw messages by
    stream ("color", "depth", "semantic" or "cloud"), decoded only by the worker.
    """

    kind: str
    source: str
    frame_id: str
    stamp_ns: int
    arrival_ns: int
    messages: dict[str, Any] = field(default_factory=dict)


class FrameQueue:
    """Thread-safe FIFO of PendingFrame with a size bound and a wait timeout (ns of the node clock)."""

    def __init__(self, maxsize: int, timeout_ns: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.timeout_ns = timeout_ns
        self._items: deque[PendingFrame] = deque()
        self._changed = threading.Condition()
        self._version = 0

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def push(self, frame: PendingFrame) -> list[PendingFrame]:
        """Queue ``frame``; returns the frames dropped to stay within ``maxsize`` (the oldest)."""
        with self._changed:
            self._items.append(frame)
            dropped = [self._items.popleft() for _ in range(len(self._items) - self.maxsize)]
            self._version += 1
            self._changed.notify_all()
        return dropped

    def notify(self) -> None:
        """Wake a waiting worker because something it checks (a transform, a camera_info) may have arrived."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, seen_version: int, timeout_s: float) -> int:
        """Block until the queue or its inputs changed after ``seen_version`` (or the timeout); the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout=timeout_s)
            return self._version

    def pop_ready(self, now_ns: int, is_ready: Callable[[PendingFrame], bool],
                  ) -> tuple[PendingFrame | None, list[PendingFrame]]:
        """The oldest frame for which ``is_ready(frame)`` holds (removed), and the frames that expired.

        A frame expires when it is not ready and ``now_ns - arrival_ns >= timeout_ns``. ``is_ready`` must be
        cheap and must not use this queue.
        """
        expired = []
        with self._changed:
            for frame in list(self._items):
                if is_ready(frame):
                    self._items.remove(frame)
                    return frame, expired
                if now_ns - frame.arrival_ns >= self.timeout_ns:
                    self._items.remove(frame)
                    expired.append(frame)
        return None, expired

    def remove(self, condition: Callable[[PendingFrame], bool]) -> list[PendingFrame]:
        """Remove and return the queued frames for which ``condition(frame)`` holds (cheap; must not use this
        queue)."""
        with self._changed:
            kept, removed = deque(), []
            for frame in self._items:
                (removed if condition(frame) else kept).append(frame)
            self._items = kept
            self._version += 1
            self._changed.notify_all()
        return removed
