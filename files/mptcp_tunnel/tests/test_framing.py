import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packets import ipv4, ipv6

from mptcp_tunnel.framing import ControlFrame, ControlType, FrameError, StreamParser, encode_control

ip_packet = st.one_of(
    st.binary(max_size=1480).map(ipv4),
    st.binary(max_size=1460).map(ipv6),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@given(st.lists(ip_packet, min_size=1, max_size=30), st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_of_the_stream_yields_the_same_packets(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(packets)
    parser = StreamParser(max_frame_bytes=65535, bufsize=4096)
    out: list[bytes | ControlFrame] = []
    for piece in split(stream, cuts):
        out.extend(parser.feed(piece))
    assert out == packets
    assert parser.pending == 0


@given(st.lists(ip_packet, min_size=1, max_size=10), st.integers(min_value=1, max_value=10))
def test_vnet_header_rides_in_front_of_each_packet(packets: list[bytes], cut: int) -> None:
    framed = [bytes(range(10)) + p for p in packets]
    stream = b"".join(framed)
    parser = StreamParser(vnet_hdr_len=10, bufsize=4096)
    out = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    assert out == framed


def test_zero_copy_receive_path_returns_views_into_its_buffer() -> None:
    parser = StreamParser(bufsize=4096)
    data = ipv4(b"a" * 100) + ipv6(b"b" * 50)
    room = parser.recv_buffer()
    room[: len(data)] = data
    frames = parser.received(len(data))
    assert [bytes(f) for f in frames] == [ipv4(b"a" * 100), ipv6(b"b" * 50)]  # type: ignore[arg-type]
    assert all(isinstance(f, memoryview) for f in frames)


def test_control_frames_are_returned_between_packets_and_unknown_types_skipped() -> None:
    keepalive = encode_control(ControlType.KEEPALIVE)
    unknown = encode_control(0x0E, b"future")
    parser = StreamParser()
    out = parser.feed(ipv4(b"x") + keepalive + unknown + ipv6())
    assert out == [ipv4(b"x"), ControlFrame(ControlType.KEEPALIVE, b""), ipv6()]


def test_control_frame_at_the_very_end_of_a_read_is_complete() -> None:
    assert StreamParser().feed(encode_control(ControlType.KEEPALIVE)) == [
        ControlFrame(ControlType.KEEPALIVE, b"")
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x55" + bytes(30), "bad_version"),
        (b"\xff" * 40, "bad_version"),
        (b"\x44" + bytes(30), "bad_header"),  # IHL 4 < 5
        (struct.pack("!BBH", 0x45, 0, 12) + bytes(30), "short_length"),
        (struct.pack("!BBH", 0x46, 0, 20) + bytes(30), "short_length"),  # < 24-byte header
        (struct.pack("!BBH", 0x45, 0, 9000) + bytes(30), "too_long"),
        (struct.pack("!IH", 6 << 28, 9000) + bytes(40), "too_long"),
        (b"\x00\x00\x00\x00", "bad_control"),
    ],
)
def test_invalid_frames_raise_with_a_stable_reason(data: bytes, reason: str) -> None:
    parser = StreamParser(max_frame_bytes=1500)
    with pytest.raises(FrameError) as err:
        parser.feed(data)
    assert err.value.reason == reason


def test_garbage_after_a_valid_packet_is_rejected_but_the_packet_was_parsed_first() -> None:
    parser = StreamParser()
    good = ipv4(b"ok")
    assert parser.feed(good) == [good]
    with pytest.raises(FrameError):
        parser.feed(b"\x99 garbage that is no IP packet")


def test_partial_header_waits_for_more_bytes() -> None:
    parser = StreamParser()
    pkt = ipv6(b"z" * 10)
    assert parser.feed(pkt[:3]) == []
    assert parser.feed(pkt[3:5]) == []
    assert parser.feed(pkt[5:]) == [pkt]


def test_encode_control_rejects_types_that_could_look_like_ip() -> None:
    with pytest.raises(ValueError):
        encode_control(0x45)


def test_bytes_that_look_like_an_ipv4_header_wait_for_their_length() -> None:
    # "GET " parses as IPv4 (nibble 4, IHL 7, length 0x5420): framing alone cannot tell, so the
    # parser waits for 21536 bytes; the keepalive timeout or the peer closing ends such a session.
    parser = StreamParser()
    assert parser.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    assert parser.pending == 18
