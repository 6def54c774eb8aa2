"""Per-input diagnostics in the ROS convention: message rate and timestamp delay of one topic over a sliding
window, as diagnostic_updater's FrequencyStatus and TimeStampStatus report them (diagnostic_updater is not on
PyPI), with OK / WARN / ERROR by thresholds from the node's parameters, and the messages lost on the way (gaps
in each publisher's sequence numbers: history overflow in DDS, a lossy link)."""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

MAX_PUBLISHERS = 64
"""Publishers per topic whose sequence numbers are followed (the least recently heard is forgotten beyond it)."""


@dataclass(frozen=True)
class InputLimits:
    """Thresholds (the node's diag_* parameters): rates in Hz, times in seconds."""

    min_rate_hz: float
    max_rate_hz: float
    """0 = no upper limit."""
    rate_tolerance: float
    """Fraction the rate may fall below min_rate_hz (or rise above max_rate_hz) before WARN."""
    window_s: float
    delay_warn_s: float
    delay_error_s: float
    """Delay = receipt time - header stamp; stamps more than delay_warn_s in the future WARN too."""


class InputMonitor:
    """Receipts of one input topic: ``received`` and ``tick`` from its callback (thread-safe), ``status`` for
    /diagnostics. ``lost``: messages of this topic's publishers that never reached the callback."""

    def __init__(self, topic: str):
        self.topic = topic
        self.lost = 0
        self._events: deque[tuple[int, float]] = deque()  # (receipt ns, delay s)
        self._first_ns: int | None = None
        self._sequences: OrderedDict[bytes, int] = OrderedDict()  # publisher gid -> last sequence number
        self._lock = threading.Lock()

    def received(self, info: dict[str, Any] | None) -> int:
        """Count the messages lost before this one from its rclpy MessageInfo (publisher gid and sequence
        number); returns how many were lost (0 where the middleware gives no sequence numbers)."""
        sequence = (info or {}).get("publication_sequence_number")
        gid = (info or {}).get("publisher_gid")
        if not sequence or not gid:
            return 0
        key = bytes(gid["data"])
        with self._lock:
            last = self._sequences.pop(key, None)
            gap = sequence - last - 1 if last is not None and sequence > last else 0  # lower: a restarted publisher
            self._sequences[key] = sequence
            if len(self._sequences) > MAX_PUBLISHERS:
                self._sequences.popitem(last=False)
            self.lost += gap
        return gap

    def tick(self, stamp_ns: int, now_ns: int) -> None:
        with self._lock:
            self._events.append((now_ns, (now_ns - stamp_ns) / 1e9))
            if self._first_ns is None:
                self._first_ns = now_ns

    def status(self, now_ns: int, limits: InputLimits, name: str, hardware_id: str) -> DiagnosticStatus:
        """DiagnosticStatus named ``name``: worst of the rate and delay checks, their reasons, and the values."""
        window_ns = int(limits.window_s * 1e9)
        with self._lock:
            while self._events and self._events[0][0] < now_ns - window_ns:
                self._events.popleft()
            delays = [delay for _, delay in self._events]
            watched_s = limits.window_s if self._first_ns is None else min(limits.window_s,
                                                                            max((now_ns - self._first_ns) / 1e9, 1e-9))
        rate = len(delays) / watched_s
        checks = _rate_checks(rate, len(delays), limits) + _delay_checks(delays, limits)
        level = max((lvl for lvl, _ in checks), default=DiagnosticStatus.OK)
        values = {"topic": self.topic, "messages in window": len(delays), "window s": f"{limits.window_s:g}",
                  "rate Hz": f"{rate:.2f}", "min rate Hz": f"{limits.min_rate_hz:g}",
                  "max rate Hz": f"{limits.max_rate_hz:g}" if limits.max_rate_hz else "none",
                  "messages lost": self.lost}
        if delays:
            values.update({"delay min s": f"{min(delays):.3f}", "delay mean s": f"{sum(delays) / len(delays):.3f}",
                           "delay max s": f"{max(delays):.3f}"})
        return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id,
                                message="; ".join(text for _, text in checks) or "ok",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def _rate_checks(rate: float, count: int, limits: InputLimits) -> list[tuple[bytes, str]]:
    if count == 0:
        return [(DiagnosticStatus.ERROR, f"no messages for {limits.window_s:g} s")]
    if rate < limits.min_rate_hz * (1.0 - limits.rate_tolerance):
        return [(DiagnosticStatus.WARN, f"rate too low ({rate:.2f} Hz < {limits.min_rate_hz:g} Hz)")]
    if limits.max_rate_hz and rate > limits.max_rate_hz * (1.0 + limits.rate_tolerance):
        return [(DiagnosticStatus.WARN, f"rate too high ({rate:.2f} Hz > {limits.max_rate_hz:g} Hz)")]
    return []


def _delay_checks(delays: list[float], limits: InputLimits) -> list[tuple[bytes, str]]:
    if not delays:
        return []
    newest, oldest = min(delays), max(delays)
    checks = []
    if oldest > limits.delay_error_s:
        checks.append((DiagnosticStatus.ERROR, f"timestamps too far in the past ({oldest:.2f} s)"))
    elif oldest > limits.delay_warn_s:
        checks.append((DiagnosticStatus.WARN, f"timestamps late ({oldest:.2f} s)"))
    if newest < -limits.delay_warn_s:
        checks.append((DiagnosticStatus.WARN, f"timestamps in the future ({-newest:.2f} s; clocks out of sync?)"))
    return checks
