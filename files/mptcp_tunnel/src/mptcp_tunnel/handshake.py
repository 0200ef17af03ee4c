"""Handshake messages before the first data byte (sans-I/O).

    BGW -> CPE  CHALLENGE  server nonce
    CPE -> BGW  HELLO      cpe id, client nonce, features, HMAC(secret, "hello" | both nonces | id | features)
    BGW -> CPE  WELCOME    accepted features, HMAC(secret, "welcome" | both nonces | id | features)
                or REJECT  reason text

Challenge-response with nonces from both sides: no clock needed on the CPE, nothing to replay, and the
CPE authenticates the BGW too. The secret never crosses the wire. Every message is

    magic "\\x0fMTN" | version (1) | type (1) | body length (2, BE) | body

The magic's first nibble is 0, so a stray handshake message can never be taken for an IP packet.

With ``tunnel.encryption: tls`` (the default) the exchange is instead:

    CPE -> BGW  CLAIM      cpe id (plaintext, bounded): lets the BGW route the connection to the
                           CPE's worker before any crypto; a forged claim only reaches TLS, and fails
    TLS 1.3 handshake, mutual; then inside TLS:
    CPE -> BGW  OFFER      features
    BGW -> CPE  ACCEPT     accepted features (or REJECT)

Feature bits this version does not know are ignored, never an error: newer peers can add options.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

MAGIC = b"\x0fMTN"
VERSION = 1
HEADER = struct.Struct("!4sBBH")
MAX_BODY = 1024
NONCE_LEN = 16
MAC_LEN = 32


class Feature(enum.IntFlag):
    """Negotiated options; a feature is on only if both sides offer it."""

    NONE = 0
    VNET_HDR = 1  # each frame carries a virtio-net header (TUN offload mode)
    # The BGW sends no keepalives: the CPE knows the BGW is alive when the BGW's kernel data-ACKs the
    # CPE's own keepalives (MPTCP_INFO snd_una). Saves the BGW its keepalive sends (~10 % of its
    # idle CPU at 10 000 CPEs, measured) and halves the keepalive bytes on the CPE's links.
    QUIET_BGW = 2


KNOWN_FEATURES = Feature.VNET_HDR | Feature.QUIET_BGW


def bgw_offer(offload: bool) -> Feature:
    """What a BGW accepts: offload where its TUN driver has it, and always the quiet keepalives."""
    return (Feature.VNET_HDR if offload else Feature.NONE) | Feature.QUIET_BGW


class MsgType(enum.IntEnum):
    CHALLENGE = 1
    HELLO = 2
    WELCOME = 3
    REJECT = 4
    CLAIM = 5
    OFFER = 6
    ACCEPT = 7


MAX_CLAIM_BODY = 64  # a CPE id is at most 12 characters; the BGW reads no more before TLS


class HandshakeError(Exception):
    """The peer is not speaking our protocol, or failed authentication."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Hello:
    cpe_id: str
    nonce: bytes
    features: Feature  # the known bits (what can be negotiated)
    mac: bytes
    raw_features: int = 0  # every bit the CPE signed, unknown ones included


@dataclass(frozen=True)
class Welcome:
    features: Feature
    mac: bytes


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_LEN)


def _frame(mtype: MsgType, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, len(body)) + body


def parse_header(data: bytes) -> tuple[MsgType, int]:
    """Validate the fixed header (HEADER.size bytes); return message type and body length."""
    magic, version, mtype, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise HandshakeError("bad_magic", "peer does not speak the mptcp-tunnel protocol")
    if version != VERSION:
        raise HandshakeError("bad_version", f"protocol version {version}, expected {VERSION}")
    if mtype not in MsgType._value2member_map_:
        raise HandshakeError("bad_message", f"unknown message type {mtype}")
    if length > MAX_BODY:
        raise HandshakeError("bad_message", f"body of {length} bytes > {MAX_BODY}")
    return MsgType(mtype), length


def _mac(
    secret: bytes,
    label: bytes,
    server_nonce: bytes,
    client_nonce: bytes,
    cpe_id: str,
    features: int,
) -> bytes:
    msg = label + server_nonce + client_nonce + cpe_id.encode() + struct.pack("!I", features)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def encode_challenge(server_nonce: bytes) -> bytes:
    return _frame(MsgType.CHALLENGE, server_nonce)


def decode_challenge(body: bytes) -> bytes:
    if len(body) != NONCE_LEN:
        raise HandshakeError("bad_message", f"challenge of {len(body)} bytes")
    return body


def encode_hello(
    cpe_id: str, secret: bytes, server_nonce: bytes, client_nonce: bytes, features: Feature
) -> bytes:
    ident = cpe_id.encode()
    mac = _mac(secret, b"hello", server_nonce, client_nonce, cpe_id, features)
    body = struct.pack("!I16sB", features, client_nonce, len(ident)) + ident + mac
    return _frame(MsgType.HELLO, body)


def decode_hello(body: bytes) -> Hello:
    fixed = struct.calcsize("!I16sB")
    if len(body) < fixed + MAC_LEN:
        raise HandshakeError("bad_message", "hello too short")
    features, nonce, id_len = struct.unpack_from("!I16sB", body)
    if len(body) != fixed + id_len + MAC_LEN:
        raise HandshakeError("bad_message", "hello length does not match its id length")
    try:
        cpe_id = body[fixed : fixed + id_len].decode("ascii")
    except UnicodeDecodeError:
        raise HandshakeError("bad_message", "CPE id is not ASCII") from None
    return Hello(cpe_id, nonce, Feature(features & KNOWN_FEATURES), body[fixed + id_len :], features)


def verify_hello(hello: Hello, secret: bytes, server_nonce: bytes) -> None:
    expected = _mac(secret, b"hello", server_nonce, hello.nonce, hello.cpe_id, hello.raw_features)
    if not hmac.compare_digest(expected, hello.mac):
        raise HandshakeError("auth_failed", f"bad HMAC from CPE {hello.cpe_id!r}")


def encode_welcome(hello: Hello, secret: bytes, server_nonce: bytes, features: Feature) -> bytes:
    mac = _mac(secret, b"welcome", server_nonce, hello.nonce, hello.cpe_id, features)
    return _frame(MsgType.WELCOME, struct.pack("!I", features) + mac)


def decode_welcome(
    body: bytes, cpe_id: str, secret: bytes, server_nonce: bytes, client_nonce: bytes
) -> Welcome:
    if len(body) != 4 + MAC_LEN:
        raise HandshakeError("bad_message", "welcome has the wrong length")
    (features,) = struct.unpack_from("!I", body)
    expected = _mac(secret, b"welcome", server_nonce, client_nonce, cpe_id, features)
    if not hmac.compare_digest(expected, body[4:]):
        raise HandshakeError("auth_failed", "the BGW does not know our secret")
    return Welcome(Feature(features & KNOWN_FEATURES), body[4:])


def encode_claim(cpe_id: str) -> bytes:
    return _frame(MsgType.CLAIM, cpe_id.encode("ascii"))


def decode_claim(body: bytes) -> str:
    if not 0 < len(body) <= MAX_CLAIM_BODY:
        raise HandshakeError("bad_message", f"claim of {len(body)} bytes")
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise HandshakeError("bad_message", "CPE id is not ASCII") from None


def encode_features(mtype: MsgType, features: int) -> bytes:
    """OFFER or ACCEPT (inside TLS)."""
    return _frame(mtype, struct.pack("!I", features))


def decode_features(body: bytes) -> Feature:
    if len(body) < 4:
        raise HandshakeError("bad_message", f"feature message of {len(body)} bytes")
    (features,) = struct.unpack_from("!I", body)
    return Feature(features & KNOWN_FEATURES)  # unknown bits: ignored


class MessageReader:
    """Collects exactly one message from a byte stream, never reading past it.

    ``wants()`` says how many bytes may be taken now (so a reader never consumes the bytes that follow,
    e.g. the TLS ClientHello behind a CLAIM); ``add(data)`` returns (type, body) once complete.
    """

    def __init__(self, expect: tuple[MsgType, ...], max_body: int = MAX_BODY) -> None:
        self.expect = expect
        self.max_body = max_body
        self._buf = b""
        self._length = -1
        self._type = MsgType.REJECT

    def wants(self) -> int:
        if self._length < 0:
            return HEADER.size - len(self._buf)
        return HEADER.size + self._length - len(self._buf)

    def add(self, data: bytes) -> tuple[MsgType, bytes] | None:
        if len(data) > self.wants():
            raise HandshakeError("bad_message", "more bytes than the message holds")
        self._buf += data
        if self._length < 0 and len(self._buf) >= HEADER.size:
            self._type, self._length = parse_header(self._buf[: HEADER.size])
            if self._type not in self.expect:
                names = "/".join(t.name for t in self.expect)
                raise HandshakeError("bad_message", f"expected {names}, got {self._type.name}")
            if self._length > self.max_body:
                raise HandshakeError("bad_message", f"{self._type.name} of {self._length} bytes")
        if self._length >= 0 and len(self._buf) == HEADER.size + self._length:
            return self._type, self._buf[HEADER.size :]
        return None


def encode_reject(reason: str) -> bytes:
    return _frame(MsgType.REJECT, reason.encode()[:MAX_BODY])


def decode_reject(body: bytes) -> str:
    """The peer's reason, printable: control characters escaped (it goes into our logs)."""
    return escape(body.decode("utf-8", "replace"))


def escape(text: str, limit: int = 200) -> str:
    """Peer-supplied text made safe for a log line: no newlines or control characters, bounded."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


class ServerHandshake:
    """The BGW's side of the exchange as a state machine: bytes in, a HELLO (or an error) out.

    ``greeting()`` is the CHALLENGE to send; ``receive(data)`` buffers at most one message and returns
    the decoded HELLO once it is complete. The caller looks up the CPE and calls ``verify_hello``.
    """

    def __init__(self, nonce: bytes | None = None) -> None:
        self.nonce = nonce or new_nonce()
        self._buf = b""

    def greeting(self) -> bytes:
        return encode_challenge(self.nonce)

    def receive(self, data: bytes) -> Hello | None:
        self._buf += data
        if len(self._buf) < HEADER.size:
            return None
        mtype, length = parse_header(self._buf[: HEADER.size])
        if mtype != MsgType.HELLO:
            raise HandshakeError("bad_message", f"expected HELLO, got {mtype.name}")
        if len(self._buf) < HEADER.size + length:
            return None
        if len(self._buf) > HEADER.size + length:
            raise HandshakeError("bad_message", "data after HELLO before WELCOME")
        return decode_hello(self._buf[HEADER.size :])
