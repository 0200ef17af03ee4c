"""Session release is idempotent across threads (regression: a double close hit a reused fd)."""

import os
import socket
import threading

from mptcp_tunnel.config import TunnelSettings
from mptcp_tunnel.session import Session


def test_join_from_two_threads_closes_each_fd_once() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    tun_r, tun_w = os.pipe()  # stands in for the TUN fd: join() never touches it
    session = Session(server, tun_r, "t1", TunnelSettings(keepalive_s=1.0))
    session.start()
    session.close("test")
    errors: list[BaseException] = []

    def join() -> None:
        try:
            session.join()
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # The fd numbers the session freed are reused at once; a second close would hit this pipe.
    probe_r, probe_w = os.pipe()
    session.join()
    os.write(probe_w, b"still open")
    assert os.read(probe_r, 16) == b"still open"
    for fd in (probe_r, probe_w, tun_r, tun_w):
        os.close(fd)
    client.close()
    listener.close()
    assert session.reason == "test"
