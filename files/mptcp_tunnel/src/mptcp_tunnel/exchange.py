"""Handshake over a socket: the I/O half of handshake.py, for both roles."""

from __future__ import annotations

import socket

from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import CpeSettings

HANDSHAKE_TIMEOUT_S = 10.0


class Rejected(Exception):
    """The BGW refused us; its reason is the message."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise hs.HandshakeError("closed", "peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


def read_message(sock: socket.socket) -> tuple[hs.MsgType, bytes]:
    mtype, length = hs.parse_header(recv_exact(sock, hs.HEADER.size))
    return mtype, recv_exact(sock, length)


def client_handshake(sock: socket.socket, cpe: CpeSettings, offer: hs.Feature) -> hs.Feature:
    """CPE side; returns the features the BGW accepted. Raises HandshakeError, Rejected, OSError."""
    mtype, body = read_message(sock)
    if mtype != hs.MsgType.CHALLENGE:
        raise hs.HandshakeError("bad_message", f"expected CHALLENGE, got {mtype.name}")
    server_nonce = hs.decode_challenge(body)
    client_nonce = hs.new_nonce()
    sock.sendall(hs.encode_hello(cpe.id, cpe.secret, server_nonce, client_nonce, offer))
    mtype, body = read_message(sock)
    if mtype == hs.MsgType.REJECT:
        raise Rejected(hs.decode_reject(body))
    if mtype != hs.MsgType.WELCOME:
        raise hs.HandshakeError("bad_message", f"expected WELCOME, got {mtype.name}")
    welcome = hs.decode_welcome(body, cpe.id, cpe.secret, server_nonce, client_nonce)
    return welcome.features & offer
