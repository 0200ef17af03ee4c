"""mptcp.restart_bbr and pin_send_buffer on a real MPTCP connection over loopback."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator

import pytest

from mptcp_tunnel.mptcp import (
    congestion_control,
    mptcp_socket,
    pin_send_buffer,
    restart_bbr,
    set_congestion_control,
    wmem_max,
)


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


def _subflow_send_buffers(sock: socket.socket) -> list[int]:
    """The kernel's send buffer (``skmem`` tb) of each TCP subflow of ``sock``, from ``ss``."""
    port = sock.getsockname()[1]
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", "sport", "=", f":{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(m) for m in re.findall(r"skmem:\(\S*?tb(\d+)", out)]


def test_pin_send_buffer_reaches_the_subflows(connected: socket.socket) -> None:
    before = _subflow_send_buffers(connected)  # autotuned by the blocking sendall
    assert before and (1 << 20) not in before
    assert pin_send_buffer(connected, 1 << 20) == 1 << 20
    assert _subflow_send_buffers(connected) == [1 << 20] * len(before)


def test_wmem_max_is_this_namespaces_autotuning_ceiling() -> None:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        assert wmem_max() == int(f.read().split()[2])
