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


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
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
