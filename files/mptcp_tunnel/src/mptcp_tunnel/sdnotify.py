"""systemd readiness and watchdog notifications (sd_notify protocol: one datagram per state).

Written out because it is six lines; python-systemd would add a C build to every CPE.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send e.g. "READY=1" to $NOTIFY_SOCKET; False when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), addr)
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2e6


_last_keepalive = 0.0


def keepalive(status: str) -> None:
    """During long work: tell systemd we are alive (watchdog) and need more time to start or stop."""
    global _last_keepalive
    now = time.monotonic()
    if now - _last_keepalive < 1.0:
        return
    _last_keepalive = now
    notify(f"WATCHDOG=1\nEXTEND_TIMEOUT_USEC=30000000\nSTATUS={status}")
