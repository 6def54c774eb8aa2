"""Per-stage wall-clock timing of the mapping worker (what nvblox's fuser prints after a bag)."""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

import numpy as np


class StageTimings:
    """Thread-safe durations per named stage: exact count and total, percentiles over the last ``window`` calls."""

    def __init__(self, window: int = 2000):
        self._window = window
        self._recent: dict[str, deque[float]] = {}
        self._count: dict[str, int] = {}
        self._total: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Time the body of a ``with`` block as one call of ``stage`` (recorded only if it does not raise)."""
        start = time.perf_counter()
        yield
        self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            if stage not in self._recent:
                self._recent[stage] = deque(maxlen=self._window)
                self._count[stage], self._total[stage] = 0, 0.0
            self._recent[stage].append(seconds)
            self._count[stage] += 1
            self._total[stage] += seconds

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {count, total_s, mean_ms, p50_ms, p95_ms, max_ms}} (percentiles and max over the window)."""
        with self._lock:
            out = {}
            for stage, recent in self._recent.items():
                ms = np.asarray(recent) * 1e3
                out[stage] = {"count": self._count[stage], "total_s": self._total[stage],
                              "mean_ms": self._total[stage] * 1e3 / self._count[stage],
                              "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                              "max_ms": float(ms.max())}
            return out

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self._count.clear()
            self._total.clear()


def format_timings(summary: dict[str, dict[str, float]], wall_s: float | None = None) -> str:
    """A fixed-width table of ``StageTimings.summary()``; with ``wall_s`` also each stage's rate over that time."""
    header = f"{'stage':<22}{'calls':>8}{'total s':>10}{'mean ms':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
    if wall_s:
        header += f"{'rate Hz':>10}"
    lines = [header, "-" * len(header)]
    for stage, s in summary.items():
        line = (f"{stage:<22}{s['count']:>8d}{s['total_s']:>10.3f}{s['mean_ms']:>10.2f}{s['p50_ms']:>9.2f}"
                f"{s['p95_ms']:>9.2f}{s['max_ms']:>9.2f}")
        if wall_s:
            line += f"{s['count'] / wall_s:>10.1f}"
        lines.append(line)
    return "\n".join(lines)
