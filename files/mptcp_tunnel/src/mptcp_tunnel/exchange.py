"""Handshake over a socket: the I/O half of handshake.py, for both roles."""

from __future__ import annotations

import socket
import ssl
import time

from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import CpeSettings
from mptcp_tunnel.tls import TlsChannel, TlsError

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


def client_tls(
    sock: socket.socket, cpe: CpeSettings, ctx: ssl.SSLContext, offer: hs.Feature
) -> tuple[hs.Feature, TlsChannel, bytes]:
    """CPE side with TLS: CLAIM, TLS 1.3 (BGW name checked), OFFER -> ACCEPT, within one deadline.

    Returns the accepted features, the TLS channel for the session and plaintext that came after
    ACCEPT. Raises HandshakeError, TlsError, Rejected, OSError. ``sock`` is blocking; the TLS object
    never touches it (memory BIOs), so the session carries on with the same channel.
    """
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    channel = TlsChannel(ctx, server_side=False, server_hostname=cpe.bgw_name)
    sock.sendall(hs.encode_claim(cpe.id))
    first = True

    def pump() -> None:
        nonlocal first
        out = channel.take()
        if out:
            sock.sendall(out)
        left = deadline - time.monotonic()
        if left <= 0:
            raise hs.HandshakeError("timeout", "no complete handshake before the deadline")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise hs.HandshakeError("closed", "the BGW closed the connection during the handshake")
        if first and data.startswith(hs.MAGIC):  # a plaintext REJECT before TLS (unknown CPE, busy)
            reader = hs.MessageReader((hs.MsgType.REJECT,))
            got = reader.add(data[: reader.wants()])
            while got is None:
                got = reader.add(recv_exact(sock, reader.wants()))
            raise Rejected(hs.decode_reject(got[1]))
        first = False
        channel.feed(data)

    while not channel.handshake():
        pump()
    channel.write(hs.encode_features(hs.MsgType.OFFER, offer))
    reader = hs.MessageReader((hs.MsgType.ACCEPT, hs.MsgType.REJECT))
    buf = memoryview(bytearray(hs.HEADER.size + hs.MAX_BODY))
    got = None
    while got is None:
        try:
            n = channel.read_into(buf[: reader.wants()])
        except TlsError:
            raise
        if n == 0:
            raise hs.HandshakeError("closed", "the BGW ended TLS during the handshake")
        if n < 0:
            pump()
            continue
        got = reader.add(bytes(buf[:n]))
    mtype, body = got
    if mtype == hs.MsgType.REJECT:
        raise Rejected(hs.decode_reject(body))
    rest = memoryview(bytearray(262144))
    n = channel.read_into(rest)
    out = channel.take()
    if out:
        sock.sendall(out)
    return hs.decode_features(body) & offer, channel, bytes(rest[: max(n, 0)])
