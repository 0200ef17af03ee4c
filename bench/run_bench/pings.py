"""Pings client -> server while a transfer runs: the one latency method of every figure that has one
(``latency``, ``fig9_varying``, ``queue_ab``)."""

from __future__ import annotations

import threading
import time

from mtlab import Lab, LabError
from mtlab.measure import ping_rtts

from run_bench.contenders import SERVER

PING_INTERVAL_S = 0.05  # 20 pings/s in every latency figure


class PingsDuring:
    """``count`` pings every ``interval`` s, from ``after_s`` after construction, in a thread: start
    it, run the transfer in this thread, then read ``rtts()``."""

    def __init__(
        self, lab: Lab, after_s: float, count: int, interval: float = PING_INTERVAL_S
    ) -> None:
        self._lab, self._after_s, self._count, self._interval = lab, after_s, count, interval
        self._rtts: list[float] = []
        self._error: LabError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self._after_s)
        try:
            self._rtts = ping_rtts(
                self._lab, "client", SERVER, count=self._count, interval=self._interval
            )
        except LabError as exc:
            self._error = exc

    def rtts(self) -> list[float]:
        """The round trips (ms); the pings' own failure raises here."""
        self._thread.join(self._after_s + self._count * self._interval + 60)
        if self._error is not None:
            raise self._error
        return self._rtts
