"""HYA datapath over real UDP sockets on loopback (no root: datagram socketpairs stand in for TUN)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mptcp_tunnel.hya_core import HyaLink, HyaSettings
from mptcp_tunnel.hya_io import HyaDatapath, _link_socket


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, HyaDatapath, HyaDatapath]]:
    port = _free_port()
    # two "links": 127.0.0.1 <-> 127.0.0.2 and 127.0.0.3 <-> 127.0.0.4
    a_links = [HyaLink("127.0.0.1", "127.0.0.2"), HyaLink("127.0.0.3", "127.0.0.4")]
    b_links = [HyaLink(k.remote, k.local) for k in a_links]
    settings_a = HyaSettings(ratio_fixed=2, ratio_cellular=1, port=port, links=tuple(a_links))
    settings_b = HyaSettings(ratio_fixed=2, ratio_cellular=1, port=port, links=tuple(b_links))
    app_a, tun_a = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    app_b, tun_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (tun_a, tun_b):
        s.setblocking(False)
    socks_a = [_link_socket(k.local, k.remote, port) for k in a_links]
    socks_b = [_link_socket(k.local, k.remote, port) for k in b_links]
    dp_a = HyaDatapath(tun_a.fileno(), socks_a, settings_a)
    dp_b = HyaDatapath(tun_b.fileno(), socks_b, settings_b)
    stop = threading.Event()
    threads = [threading.Thread(target=dp.run, args=(stop,)) for dp in (dp_a, dp_b)]
    for t in threads:
        t.start()
    try:
        yield app_a, app_b, dp_a, dp_b
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in (app_a, app_b, tun_a, tun_b, *socks_a, *socks_b):
            s.close()


def test_packets_cross_both_links_in_order(
    pair: tuple[socket.socket, socket.socket, HyaDatapath, HyaDatapath],
) -> None:
    app_a, app_b, dp_a, dp_b = pair
    app_b.settimeout(2.0)
    n = 300
    got: list[int] = []

    def reader() -> None:  # a datagram socketpair queues only a few packets: read as they come
        for _ in range(n):
            got.append(int.from_bytes(app_b.recv(2048)[1:5], "big"))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(n):
        app_a.send(b"\x45" + i.to_bytes(4, "big") + bytes(500))
        if i % 10 == 9:
            time.sleep(0.002)
    thread.join(10)
    assert got == list(range(n))
    assert dp_b.rx_drops == 0
    assert dp_a.per_link_tx[0] == 2 * dp_a.per_link_tx[1]  # 2:1 with equal sizes
    # and back the other way
    app_b.send(b"\x60reply")
    app_a.settimeout(2.0)
    assert app_a.recv(2048) == b"\x60reply"
    assert dp_b.receiver.buffer.stats.lost == 0
