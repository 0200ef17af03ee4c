"""Log lines that a peer can provoke, limited so that a flood cannot flood the journal."""

from __future__ import annotations

import logging
import time


class LogLimiter:
    """At most ``burst`` lines per ``period`` s per kind; the rest are counted and summarised, so a flood of
    bad connections cannot flood the journal."""

    def __init__(self, burst: int = 20, period: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.burst, self.period = burst, period
        self.log = logger or logging.getLogger("mptcp_tunnel")
        self._window: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str) -> bool:
        now = time.monotonic()
        start, count = self._window.get(kind, (now, 0))
        if now - start >= self.period:
            if count > self.burst:
                suppressed = count - self.burst
                self.log.warning("%d more %s message(s) suppressed in %.0f s", suppressed, kind, self.period)
            start, count = now, 0
        self._window[kind] = (start, count + 1)
        return count < self.burst
