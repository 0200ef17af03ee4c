"""Process-wide control: stop and reload requests (from signals) and the systemd watchdog."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from mptcp_tunnel import sdnotify

TICK_S = 1.0


class Runtime:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self._reload = threading.Event()
        self._watchdog = sdnotify.watchdog_interval()
        self._last_ping = 0.0
        self.on_reload: Callable[[], None] = lambda: None

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_reload(self) -> None:
        self._reload.set()

    def tick(self) -> None:
        """Called from the main loop at least every TICK_S: watchdog ping and pending reload."""
        now = time.monotonic()
        if self._watchdog is not None and now - self._last_ping >= self._watchdog:
            sdnotify.notify("WATCHDOG=1")
            self._last_ping = now
        if self._reload.is_set():
            self._reload.clear()
            sdnotify.notify("RELOADING=1")
            self.on_reload()
            sdnotify.notify("READY=1")

    def sleep(self, seconds: float) -> bool:
        """Sleep while ticking; False when a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.stop.wait(min(left, TICK_S))
        return False
