"""mptcp.restart_bbr on a real MPTCP connection over loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mptcp_tunnel.mptcp import congestion_control, mptcp_socket, restart_bbr, set_congestion_control


@pytest.fixture
def connected() -> Iterator[socket.socket]:
    server = mptcp_socket(socket.AF_INET)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = mptcp_socket(socket.AF_INET)
    try:
        client.connect(server.getsockname())
        peer, _ = server.accept()
        client.sendall(b"x" * 100_000)  # the subflow has acknowledged data, as a running session's has
        got = 0
        while got < 100_000:
            got += len(peer.recv(65536))
        yield client
        peer.close()
    finally:
        client.close()
        server.close()


def test_restart_bbr_keeps_bbr_on_the_connection(connected: socket.socket) -> None:
    set_congestion_control(connected, "bbr")
    assert restart_bbr(connected) is True
    assert congestion_control(connected) == "bbr"  # back from the detour through reno
    connected.sendall(b"still sending")


def test_restart_bbr_leaves_other_congestion_controls_alone(connected: socket.socket) -> None:
    set_congestion_control(connected, "cubic")
    assert restart_bbr(connected) is False
    assert congestion_control(connected) == "cubic"
