import pytest

from mptcp_tunnel import handshake as hs

SECRET = b"correct horse battery"


def roundtrip(data: bytes) -> tuple[hs.MsgType, bytes]:
    mtype, length = hs.parse_header(data[: hs.HEADER.size])
    body = data[hs.HEADER.size :]
    assert len(body) == length
    return mtype, body


def full_exchange(cpe_secret: bytes, bgw_secret: bytes) -> hs.Feature:
    server_nonce = hs.new_nonce()
    mtype, body = roundtrip(hs.encode_challenge(server_nonce))
    assert mtype == hs.MsgType.CHALLENGE
    client_nonce = hs.new_nonce()
    hello_msg = hs.encode_hello(
        "cpe1", cpe_secret, hs.decode_challenge(body), client_nonce, hs.Feature.VNET_HDR
    )
    mtype, body = roundtrip(hello_msg)
    assert mtype == hs.MsgType.HELLO
    hello = hs.decode_hello(body)
    assert hello.cpe_id == "cpe1"
    hs.verify_hello(hello, bgw_secret, server_nonce)
    mtype, body = roundtrip(hs.encode_welcome(hello, bgw_secret, server_nonce, hs.Feature.NONE))
    assert mtype == hs.MsgType.WELCOME
    return hs.decode_welcome(body, "cpe1", cpe_secret, server_nonce, client_nonce).features


def test_matching_secrets_complete_the_handshake() -> None:
    assert full_exchange(SECRET, SECRET) == hs.Feature.NONE


def test_bgw_refuses_a_cpe_with_the_wrong_secret() -> None:
    with pytest.raises(hs.HandshakeError) as err:
        full_exchange(b"wrong secret!!", SECRET)
    assert err.value.reason == "auth_failed"


def test_hello_replayed_against_a_new_challenge_fails() -> None:
    first_nonce = hs.new_nonce()
    msg = hs.encode_hello("cpe1", SECRET, first_nonce, hs.new_nonce(), hs.Feature.NONE)
    hello = hs.decode_hello(roundtrip(msg)[1])
    with pytest.raises(hs.HandshakeError):
        hs.verify_hello(hello, SECRET, hs.new_nonce())


def test_cpe_refuses_a_welcome_forged_without_the_secret() -> None:
    server_nonce, client_nonce = hs.new_nonce(), hs.new_nonce()
    hello = hs.decode_hello(
        roundtrip(hs.encode_hello("cpe1", SECRET, server_nonce, client_nonce, hs.Feature.NONE))[1]
    )
    forged = hs.encode_welcome(hello, b"attacker guess", server_nonce, hs.Feature.NONE)
    with pytest.raises(hs.HandshakeError):
        hs.decode_welcome(roundtrip(forged)[1], "cpe1", SECRET, server_nonce, client_nonce)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"GET / HTTP/1.1\r\n"[: hs.HEADER.size], "bad_magic"),
        (hs.MAGIC + bytes([9, 1, 0, 0]), "bad_version"),
        (hs.MAGIC + bytes([1, 99, 0, 0]), "bad_message"),
        (hs.MAGIC + bytes([1, 2, 0xFF, 0xFF]), "bad_message"),
    ],
)
def test_bad_headers_are_named(header: bytes, reason: str) -> None:
    with pytest.raises(hs.HandshakeError) as err:
        hs.parse_header(header)
    assert err.value.reason == reason


@pytest.mark.parametrize("body", [b"", b"x" * 20, bytes(4 + 16 + 1) + b"\xff" + bytes(32)])
def test_malformed_hello_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(hs.HandshakeError):
        hs.decode_hello(body)


def test_handshake_magic_can_not_be_mistaken_for_an_ip_packet() -> None:
    assert hs.MAGIC[0] >> 4 not in (4, 6)


def test_known_feature_bits_survive_and_unknown_ones_are_dropped() -> None:
    offered = hs.Feature.VNET_HDR | hs.Feature.QUIET_BGW | hs.Feature(0x80000000)
    body = roundtrip(hs.encode_features(hs.MsgType.OFFER, offered))[1]
    assert hs.decode_features(body) == hs.Feature.VNET_HDR | hs.Feature.QUIET_BGW
    assert hs.bgw_offer(offload=False) == hs.Feature.QUIET_BGW  # quiet keepalives need no kernel feature
