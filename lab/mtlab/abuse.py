"""Hostile input for a BGW (run inside a lab netns): ``python -m mtlab.abuse --host H --port P``.

1. ``garbage-tcp``: plain TCP connection, random bytes (the BGW requires MPTCP);
2. ``garbage-mptcp``: MPTCP connection, random bytes instead of the HELLO;
3. ``malformed-frame``: MPTCP connection, a correct handshake as CPE ``--cpe-id`` with
   ``--secret``, then an IPv4 header whose total length (8) is shorter than the header itself.

Prints one JSON object: per case, whether the BGW closed the connection afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)


def _drain(sock: socket.socket) -> bool:
    """True once the peer closed (or reset) the connection within the timeout."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _connect(host: str, port: int, proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def garbage(host: str, port: int, proto: int) -> bool:
    with _connect(host, port, proto) as sock:
        try:
            sock.sendall(os.urandom(4096))
        except (BrokenPipeError, ConnectionResetError):
            return True
        return _drain(sock)


def malformed_frame(host: str, port: int, cpe_id: str, secret: bytes) -> bool:
    from mptcp_tunnel import handshake as hs
    from mptcp_tunnel.exchange import read_message

    with _connect(host, port, IPPROTO_MPTCP) as sock:
        mtype, body = read_message(sock)
        if mtype != hs.MsgType.CHALLENGE:
            raise ValueError(f"expected CHALLENGE, got {mtype.name}")
        server_nonce = hs.decode_challenge(body)
        client_nonce = hs.new_nonce()
        sock.sendall(hs.encode_hello(cpe_id, secret, server_nonce, client_nonce, hs.Feature.NONE))
        mtype, body = read_message(sock)
        if mtype != hs.MsgType.WELCOME:
            raise ValueError(f"BGW answered {mtype.name}: {body[:200]!r}")
        bad = bytes([0x45, 0, 0, 8]) + bytes(16)  # IPv4, total length 8 < 20-byte header
        sock.sendall(bad)
        return _drain(sock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab.abuse")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpe-id", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args(argv)
    try:
        result = {
            "garbage-tcp": garbage(args.host, args.port, socket.IPPROTO_TCP),
            "garbage-mptcp": garbage(args.host, args.port, IPPROTO_MPTCP),
            "malformed-frame": malformed_frame(
                args.host, args.port, args.cpe_id, args.secret.encode()
            ),
        }
    except (OSError, ValueError) as exc:
        print(f"abuse: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
