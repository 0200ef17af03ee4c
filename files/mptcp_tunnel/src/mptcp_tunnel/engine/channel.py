"""Control <-> worker messages: one JSON object per datagram on a SOCK_SEQPACKET pair, fds by SCM_RIGHTS.

Sequenced packets keep message boundaries and order, so "attach cpe1 (gen 7)" is always handled before
a later "detach cpe1": ownership decisions made by the control process reach the worker in order.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 4


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


SEND_WAIT_S = 2.0  # a full channel means a lagging peer: wait this long rather than lose a message


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one message; never drops it silently (waits up to SEND_WAIT_S, then raises OSError)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    try:
        _send(sock, data, fds)
    except BlockingIOError:
        timeout = sock.gettimeout()
        sock.settimeout(SEND_WAIT_S)
        try:
            _send(sock, data, fds)
        finally:
            sock.settimeout(timeout)


def _send(sock: socket.socket, data: bytes, fds: list[int] | None) -> None:
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds that came with it; None when the other end is gone.

    Raises BlockingIOError when nothing is waiting on a non-blocking channel.
    """
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            socket.close(fd)
        return None
    return json.loads(data), list(fds)
