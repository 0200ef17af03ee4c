"""Property tests: every parser a peer can reach takes any bytes without crashing.

Each parser either returns a result or raises its own error type (FrameError, HandshakeError); any
other exception is a bug a peer could trigger. The long run (millions of inputs) is the ``fuzz``
benchmark (bench/run_bench/security.py).
"""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_tunnel import handshake as hs
from mptcp_tunnel import tls
from mptcp_tunnel.framing import FrameError, StreamParser

chunks = st.lists(st.binary(max_size=300), max_size=20)


@settings(max_examples=500, deadline=None)
@given(chunks, st.sampled_from([0, 10]))
def test_the_stream_parser_takes_any_bytes(pieces: list[bytes], vnet: int) -> None:
    parser = StreamParser(vnet_hdr_len=vnet)
    try:
        for piece in pieces:
            parser.feed(piece)
    except FrameError as exc:
        assert exc.reason


@settings(max_examples=500, deadline=None)
@given(
    chunks,
    st.sampled_from([(hs.MsgType.CLAIM,), (hs.MsgType.OFFER,), (hs.MsgType.ACCEPT, hs.MsgType.REJECT)]),
)
def test_the_message_reader_never_reads_past_its_message(
    pieces: list[bytes], expect: tuple[hs.MsgType, ...]
) -> None:
    reader = hs.MessageReader(expect, max_body=64)
    stream = b"".join(pieces)
    pos = 0
    try:
        while pos < len(stream):
            want = reader.wants()
            assert want > 0
            got = reader.add(stream[pos : pos + want])
            pos += min(want, len(stream) - pos)
            if got is not None:
                mtype, body = got
                assert mtype in expect and len(body) <= 64
                assert pos == hs.HEADER.size + len(body)  # exactly one message, not a byte more
                return
    except hs.HandshakeError as exc:
        assert exc.reason in ("bad_magic", "bad_version", "bad_message")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_message_bodies_decode_or_fail_cleanly(body: bytes) -> None:
    for decode in (hs.decode_claim, hs.decode_features, hs.decode_hello, hs.decode_challenge):
        with contextlib.suppress(hs.HandshakeError):
            decode(body)
    with contextlib.suppress(hs.HandshakeError):
        hs.decode_welcome(body, "cpe1", b"s" * 16, bytes(16), bytes(16))
    assert "\n" not in hs.decode_reject(body) and "\x1b" not in hs.decode_reject(body)


@settings(max_examples=300, deadline=None)
@given(chunks)
def test_the_hmac_server_handshake_takes_any_bytes(pieces: list[bytes]) -> None:
    machine = hs.ServerHandshake()
    with contextlib.suppress(hs.HandshakeError):
        for piece in pieces:
            machine.receive(piece)


@given(st.integers(0, 2**32 - 1))
def test_unknown_feature_bits_are_ignored(bits: int) -> None:
    assert hs.decode_features(struct.pack("!I", bits)) == hs.Feature(bits & hs.KNOWN_FEATURES)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_the_crl_reader_takes_any_bytes(der: bytes) -> None:
    with contextlib.suppress(ValueError, IndexError):
        tls.crl_serials(der)
