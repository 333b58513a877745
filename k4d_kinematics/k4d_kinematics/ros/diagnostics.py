"""Rate / latency / error diagnostics for k4d nodes, published on /diagnostics.

The statistics (``RateLatencyStats``) are plain Python; ``DiagnosticsPublisher`` only turns them into
diagnostic_msgs/DiagnosticArray once per period.
"""
from __future__ import annotations

import collections
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class RateLatencyStats:
    """Sliding-window output rate (Hz) and processing latency (s), plus error counters."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = float(window_s)
        self._events: collections.deque[tuple[float, float]] = collections.deque()
        self.count = 0
        self.errors = 0
        self.dropped = 0
        self.last_error: str = ""
        self.last_error_time: Optional[float] = None

    def record(self, latency_s: float, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, float(latency_s)))
        self.count += 1
        self._trim(now)

    def error(self, message: str, now: Optional[float] = None) -> None:
        self.errors += 1
        self.last_error = message
        self.last_error_time = time.monotonic() if now is None else now

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def rate_hz(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._events) < 2:
            return 0.0
        span = self._events[-1][0] - self._events[0][0]
        return (len(self._events) - 1) / span if span > 0 else 0.0

    def latency_ms(self) -> tuple[float, float]:
        """(median, max) processing latency over the window, milliseconds (NaN when empty)."""
        if not self._events:
            return float("nan"), float("nan")
        lat = sorted(e[1] for e in self._events)
        return 1e3 * lat[len(lat) // 2], 1e3 * lat[-1]


class DiagnosticsPublisher:
    """Publishes one DiagnosticStatus per registered stats object at ``period_s``."""

    def __init__(self, node, period_s: float = 1.0, error_hold_s: float = 5.0):
        self._node = node
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._items: list[tuple[str, RateLatencyStats, Optional[float]]] = []
        self.error_hold_s = error_hold_s
        self.extra: dict[str, str] = {}
        node.create_timer(period_s, self.publish)

    def add(self, name: str, stats: RateLatencyStats, min_rate_hz: Optional[float] = None) -> None:
        self._items.append((name, stats, min_rate_hz))

    def status(self, name: str, stats: RateLatencyStats, min_rate_hz: Optional[float]) -> DiagnosticStatus:
        now = time.monotonic()
        rate = stats.rate_hz(now)
        med, mx = stats.latency_ms()
        st = DiagnosticStatus(name=f"{self._node.get_name()}: {name}", hardware_id="k4d")
        st.level, st.message = DiagnosticStatus.OK, "ok"
        if stats.last_error_time is not None and now - stats.last_error_time < self.error_hold_s:
            st.level, st.message = DiagnosticStatus.ERROR, stats.last_error[:200]
        elif min_rate_hz is not None and stats.count > 0 and rate < min_rate_hz:
            st.level, st.message = DiagnosticStatus.WARN, f"rate {rate:.1f} Hz below {min_rate_hz:.1f} Hz"
        elif stats.count == 0:
            st.level, st.message = DiagnosticStatus.OK, "idle (no input yet)"
        values = {"rate_hz": f"{rate:.2f}", "latency_median_ms": f"{med:.2f}", "latency_max_ms": f"{mx:.2f}",
                  "processed": str(stats.count), "errors": str(stats.errors), "dropped": str(stats.dropped),
                  "last_error": stats.last_error}
        values.update(self.extra)
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return st

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status(n, s, r) for n, s, r in self._items]
        self._pub.publish(msg)
