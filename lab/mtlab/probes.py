"""Tiny probe programs run inside lab namespaces (``python -m mtlab.probes KIND ...``).

- ``tcp-server --family 4|6 --port P``: for each connection, reply with the peer address the
  server sees (JSON) and close.
- ``tcp-client --host H --port P``: connect, print JSON ``{"local": [addr, port], "seen": [...]}``.
- ``udp-server --family 4|6 --port P``: for each datagram, reply with the sender address and the
  TTL / hop limit the datagram arrived with (IP_RECVTTL / IPV6_RECVHOPLIMIT).
- ``udp-client --host H --port P``: send one datagram, print JSON ``{"local": ..., "reply": ...}``.

Servers print ``ready`` once bound and run until killed.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_TTL = getattr(socket, "IP_TTL", 2)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


def _family(host_or_family: str) -> socket.AddressFamily:
    if host_or_family in ("4", "6"):
        return socket.AF_INET if host_or_family == "4" else socket.AF_INET6
    return socket.AF_INET6 if ":" in host_or_family else socket.AF_INET


def _addr(a: tuple[object, ...]) -> list[object]:
    return [a[0], a[1]]


def tcp_server(family: str, port: int) -> None:
    fam = _family(family)
    with socket.socket(fam, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        srv.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
        srv.listen(8)
        print("ready", flush=True)
        while True:
            conn, peer = srv.accept()
            with conn:
                conn.sendall(json.dumps({"peer": _addr(peer)}).encode())


def tcp_client(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=10) as s:
        local = s.getsockname()
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    print(json.dumps({"local": _addr(local), "seen": json.loads(data)["peer"]}))


def udp_server(family: str, port: int) -> None:
    fam = _family(family)
    with socket.socket(fam, socket.SOCK_DGRAM) as srv:
        if fam == socket.AF_INET6:
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            srv.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            srv.bind(("::", port))
        else:
            srv.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            srv.bind(("0.0.0.0", port))
        print("ready", flush=True)
        while True:
            _data, anc, _flags, peer = srv.recvmsg(2048, socket.CMSG_SPACE(4))
            ttl = None
            for level, kind, value in anc:
                if (level, kind) in (
                    (socket.IPPROTO_IP, IP_TTL),
                    (socket.IPPROTO_IPV6, IPV6_HOPLIMIT),
                ):
                    ttl = struct.unpack("i", value[:4])[0] if len(value) >= 4 else value[0]
            srv.sendto(json.dumps({"peer": _addr(peer), "ttl": ttl}).encode(), peer)


def udp_client(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        s.send(b"probe")
        reply = json.loads(s.recv(2048))
        print(json.dumps({"local": _addr(s.getsockname()), "reply": reply}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab.probes")
    parser.add_argument("kind", choices=["tcp-server", "tcp-client", "udp-server", "udp-client"])
    parser.add_argument("--family", default="4")
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        if args.kind == "tcp-server":
            tcp_server(args.family, args.port)
        elif args.kind == "tcp-client":
            tcp_client(args.host, args.port)
        elif args.kind == "udp-server":
            udp_server(args.family, args.port)
        else:
            udp_client(args.host, args.port)
    except (OSError, ValueError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
