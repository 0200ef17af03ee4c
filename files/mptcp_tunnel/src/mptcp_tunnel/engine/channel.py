"""Control <-> worker messages: one JSON object per datagram on a SOCK_SEQPACKET pair, fds by SCM_RIGHTS.

Sequenced packets keep message boundaries and order, so "attach cpe1 (gen 7)" is always handled before
a later "detach cpe1": ownership decisions made by the control process reach the worker in order.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 4


BUFFER_BYTES = 8 << 20  # a storm of 10 000 "ended" messages must not fill it (~100 bytes each)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (a, b):
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:  # beyond net.core.*mem_max needs CAP_NET_ADMIN, which the agent has
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
    return a, b


class Outbox:
    """Messages waiting for room on a non-blocking channel, sent in order, never dropped.

    ``push`` sends at once when it can; otherwise the caller registers for writability and calls
    ``flush`` when the channel has room again.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queue: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, message: dict[str, Any]) -> bool:
        """Queue ``message``; True when everything queued has been sent."""
        self._queue.append(json.dumps(message, separators=(",", ":")).encode())
        return self.flush()

    def flush(self) -> bool:
        queue = self._queue
        while queue:
            try:
                self.sock.send(queue[0])
            except BlockingIOError:
                return False
            queue.popleft()
        return True


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
