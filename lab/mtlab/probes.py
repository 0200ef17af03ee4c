"""Tiny probe programs run inside lab namespaces (``python -m mtlab.probes KIND ...``).

- ``tcp-server --family 4|6 --port P``: for each connection, reply with the peer address the
  server sees (JSON) and close.
- ``tcp-client --host H --port P``: connect, print JSON ``{"local": [addr, port], "seen": [...]}``.
- ``udp-server --family 4|6 --port P``: for each datagram, reply with the sender address and the
  TTL / hop limit the datagram arrived with (IP_RECVTTL / IPV6_RECVHOPLIMIT).
- ``udp-client --host H --port P``: send one datagram, print JSON ``{"local": ..., "reply": ...}``.

- ``capture --port P --count N``: an AF_PACKET capture on ``eth0`` (both directions) of the first N
  IP packets to UDP port P; prints them as hex, one per line, then exits.
- ``udp-tos --host H --port P --tos T``: send 4 datagrams with TOS / traffic class T (DSCP and ECN).

Servers and captures print ``ready`` once bound and run until killed (or done).
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


ETH_P_ALL = 0x0003
ETH_HEADER = 14


def capture(port: int, count: int) -> None:
    """Whole IP packets to UDP ``port`` as seen on eth0, headers byte for byte; then one line
    ``received N``: datagrams a UDP socket on ``port`` accepted (their checksums were right)."""
    with (
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink,
    ):
        s.bind(("eth0", 0))
        s.settimeout(20)
        sink.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sink.bind(("::", port))
        sink.setblocking(False)
        print("ready", flush=True)
        seen = 0
        while seen < count:
            frame = s.recv(65535)
            ip = frame[ETH_HEADER:]
            if not ip:
                continue
            if ip[0] >> 4 == 4 and ip[9] == 17:
                udp = ip[(ip[0] & 0x0F) * 4 :]
            elif ip[0] >> 4 == 6 and ip[6] == 17:
                udp = ip[40:]
            else:
                continue
            if len(udp) >= 4 and struct.unpack("!H", udp[2:4])[0] == port:
                print(ip.hex(), flush=True)
                seen += 1
        received = 0
        sink.settimeout(1)
        try:
            while received < count:
                sink.recv(2048)
                received += 1
        except TimeoutError:
            pass
        print(f"received {received}", flush=True)


def udp_tos(host: str, port: int, tos: int) -> None:
    fam = _family(host)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        for i in range(4):
            s.sendto(b"header-probe-%d" % i, (host, port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab.probes")
    parser.add_argument(
        "kind",
        choices=["tcp-server", "tcp-client", "udp-server", "udp-client", "capture", "udp-tos"],
    )
    parser.add_argument("--family", default="4")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--tos", type=lambda v: int(v, 0), default=0)
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
        elif args.kind == "capture":
            capture(args.port, args.count)
        elif args.kind == "udp-tos":
            udp_tos(args.host, args.port, args.tos)
        else:
            udp_client(args.host, args.port)
    except (OSError, ValueError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
