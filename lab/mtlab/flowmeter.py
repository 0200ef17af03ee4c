"""A bulk TCP flow measured at the receiver in fixed time bins (``python -m mtlab.flowmeter KIND``).

- ``recv --port P [--bin-ms 100]``: accept one connection, count the bytes that arrive and print one
  line per bin, ``<monotonic start of bin> <bytes>``, until the sender closes; prints ``ready`` once
  listening and ``done`` at the end.
- ``send --host H --port P --seconds S [--cc NAME]``: connect and send as fast as the connection
  takes, for S s, with congestion control NAME (default: the host's).

CLOCK_MONOTONIC is shared by every network namespace, so bin times compare directly with the
times a test or benchmark took when it broke or repaired a link.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time


def recv(port: int, bin_s: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
        print("ready", flush=True)
        conn, _ = srv.accept()
    conn.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    buf = bytearray(1 << 18)
    start = time.monotonic()
    edge = start + bin_s
    count = 0
    open_ = True
    why = "eof"
    while open_:
        now = time.monotonic()
        while now >= edge:  # empty bins are printed too: a stall must show as zeros
            print(f"{edge - bin_s:.3f} {count}", flush=True)
            count = 0
            edge += bin_s
        if not sel.select(edge - now):
            continue
        while True:
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                why, n = f"error: {exc}", 0
            if n == 0:
                open_ = False
                break
            count += n
    print(f"{edge - bin_s:.3f} {count}", flush=True)
    print(f"done ({why})", flush=True)
    conn.close()


def send(host: str, port: int, seconds: float, cc: str = "") -> None:
    data = bytes(1 << 16)
    with socket.create_connection((host, port), timeout=10) as s:
        if cc:  # before the first byte: the whole transfer, slow start included, runs it
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        s.settimeout(5)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                s.send(data)
            except TimeoutError:
                continue  # a stalled path: keep offering data until the deadline
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        while s.recv(4096):
            pass


def parse_bins(text: str) -> list[tuple[float, int]]:
    """The receiver's log as ``[(bin start, bytes), ...]``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out.append((float(parts[0]), int(parts[1])))
            except ValueError:
                continue
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mtlab.flowmeter")
    sub = p.add_subparsers(dest="kind", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--bin-ms", type=float, default=100.0)
    s = sub.add_parser("send")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--cc", default="", help="the sender's congestion control (default: the host's)")
    a = p.parse_args(argv)
    if a.kind == "recv":
        recv(a.port, a.bin_ms / 1000)
    else:
        send(a.host, a.port, a.seconds, a.cc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
