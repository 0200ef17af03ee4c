"""Hostile input for a BGW (run inside a lab netns): ``python -m mtlab.abuse --host H --port P``.

1. ``garbage-tcp``: plain TCP connection, random bytes (the BGW requires MPTCP);
2. ``garbage-mptcp``: MPTCP connection, random bytes instead of the HELLO;
3. ``malformed-frame``: MPTCP connection, a correct handshake as the CPE of ``--config`` (TLS or
   the HMAC handshake, as that config says), then an IPv4 header whose total length (8) is shorter
   than the header itself.

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


def malformed_frame(host: str, port: int, config: str) -> bool:
    from mptcp_tunnel import exchange
    from mptcp_tunnel import handshake as hs
    from mptcp_tunnel.config import load_config
    from mptcp_tunnel.tls import client_context

    cfg = load_config(config)
    assert cfg.cpe is not None
    bad = bytes([0x45, 0, 0, 8]) + bytes(16)  # IPv4, total length 8 < 20-byte header
    with _connect(host, port, IPPROTO_MPTCP) as sock:
        if cfg.tls is None:
            exchange.client_handshake(sock, cfg.cpe, hs.Feature.NONE)
            sock.sendall(bad)
        else:
            ctx = client_context(cfg.tls)
            _features, channel, _rest = exchange.client_tls(sock, cfg.cpe, ctx, hs.Feature.NONE)
            channel.write(bad)
            sock.sendall(channel.take())
        return _drain(sock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab.abuse")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True, help="the CPE's agent config")
    args = parser.parse_args(argv)
    try:
        result = {
            "garbage-tcp": garbage(args.host, args.port, socket.IPPROTO_TCP),
            "garbage-mptcp": garbage(args.host, args.port, IPPROTO_MPTCP),
            "malformed-frame": malformed_frame(args.host, args.port, args.config),
        }
    except (OSError, ValueError) as exc:
        print(f"abuse: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
