"""A small level-triggered epoll loop with timers (one per process; never ``select.select``).

Handlers do a bounded amount of work per call. Level triggering means work left over is reported again
on the next turn, so every ready fd gets its turn before any fd gets a second one: one busy session
cannot starve the others.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import signal
import time
from collections.abc import Callable

log = logging.getLogger("mptcp_tunnel.loop")

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS = 1024

Handler = Callable[[int], None]


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._wakeup_r = self._wakeup_w = -1
        self.stopping = False

    # --- fds ---------------------------------------------------------------------------------------
    def register(self, fd: int, events: int, handler: Handler) -> None:
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def registered(self, fd: int) -> bool:
        return fd in self._handlers

    # --- timers ------------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], None]) -> None:
        def tick() -> None:
            self.call_later(interval, tick)
            callback()

        self.call_later(interval, tick)

    # --- signals -----------------------------------------------------------------------------------
    def wake_on_signals(self) -> None:
        """Make signal delivery end the current poll at once (handlers run right after it)."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.register(r, IN, self._drain_wakeup)

    def _drain_wakeup(self, _events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    # --- running -----------------------------------------------------------------------------------
    def run_once(self, max_wait: float = 1.0) -> None:
        timeout = max_wait
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        try:
            events = self._epoll.poll(timeout, MAX_EVENTS)
        except InterruptedError:
            events = []
        handlers = self._handlers
        for fd, mask in events:
            handler = handlers.get(fd)  # an earlier handler of this turn may have removed it
            if handler is not None:
                handler(mask)
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.callback()

    def run(self, until: Callable[[], bool]) -> None:
        while not self.stopping and not until():
            self.run_once()

    def close(self) -> None:
        if self._wakeup_r >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        self._epoll.close()
