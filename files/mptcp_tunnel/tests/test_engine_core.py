"""Engine building blocks without root: the server handshake machine, frame splitting on a shared
buffer, the control channel (messages and fds), and the loop's turn-taking."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packets import ipv4

from mptcp_tunnel import handshake as hs
from mptcp_tunnel.engine import channel
from mptcp_tunnel.engine.loop import IN, EventLoop
from mptcp_tunnel.engine.wheel import TimerWheel
from mptcp_tunnel.framing import ControlFrame, FrameError, encode_control, split_frames

SECRET = b"0123456789abcdef"


def test_server_handshake_accepts_a_hello_split_anywhere() -> None:
    machine = hs.ServerHandshake()
    challenge = machine.greeting()
    nonce = hs.decode_challenge(challenge[hs.HEADER.size :])
    hello = hs.encode_hello("cpe1", SECRET, nonce, hs.new_nonce(), hs.Feature.VNET_HDR)
    for i in range(len(hello) - 1):
        assert machine.receive(hello[i : i + 1]) is None
    got = machine.receive(hello[-1:])
    assert got is not None and got.cpe_id == "cpe1" and got.features == hs.Feature.VNET_HDR
    hs.verify_hello(got, SECRET, machine.nonce)
    with pytest.raises(hs.HandshakeError, match="auth_failed"):
        hs.verify_hello(got, b"another-secret-xyz", machine.nonce)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"GET / HTTP/1.1\r\n", "bad_magic"),
        (hs.encode_challenge(b"x" * 16), "bad_message"),  # a CHALLENGE is not a HELLO
        (hs.MAGIC + bytes([hs.VERSION, hs.MsgType.HELLO]) + (5000).to_bytes(2, "big"), "bad_message"),
    ],
)
def test_server_handshake_refuses_what_is_not_a_hello(data: bytes, reason: str) -> None:
    with pytest.raises(hs.HandshakeError, match=reason):
        hs.ServerHandshake().receive(data)


def test_server_handshake_refuses_bytes_after_the_hello() -> None:
    machine = hs.ServerHandshake()
    hello = hs.encode_hello("cpe1", SECRET, machine.nonce, hs.new_nonce(), hs.Feature.NONE)
    with pytest.raises(hs.HandshakeError, match="data after HELLO"):
        machine.receive(hello + b"\x45")


@given(st.lists(st.integers(min_value=20, max_value=3000), min_size=1, max_size=20), st.data())
def test_split_frames_with_vnet_headers_keeps_each_header_with_its_packet(
    sizes: list[int], data: st.DataObject
) -> None:
    vnet = [bytes([i % 256]) * 10 for i in range(len(sizes))]
    packets = [ipv4(bytes(n - 20)) for n in sizes]
    stream = b"".join(v + p for v, p in zip(vnet, packets, strict=True)) + encode_control(1, vnet_hdr_len=10)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    buf = bytearray(stream)
    out: list[memoryview | ControlFrame] = []
    pos = split_frames(buf, 0, cut, 10, 65535, out)
    rest: list[memoryview | ControlFrame] = []
    buf2 = bytearray(stream[pos:])
    assert split_frames(buf2, 0, len(buf2), 10, 65535, rest) == len(buf2)
    frames = [bytes(f) for f in out + rest if not isinstance(f, ControlFrame)]
    assert frames == [v + p for v, p in zip(vnet, packets, strict=True)]
    assert isinstance((out + rest)[-1], ControlFrame)


def test_split_frames_refuses_a_frame_longer_than_allowed() -> None:
    buf = bytearray(ipv4(bytes(2980)))
    with pytest.raises(FrameError, match="too_long"):
        split_frames(buf, 0, len(buf), 0, 1500, [])


def test_channel_carries_messages_and_fds_in_order() -> None:
    a, b = channel.pair()
    r, w = os.pipe()
    try:
        channel.send(a, {"op": "attach", "cpe": "cpe1", "gen": 1}, [r])
        channel.send(a, {"op": "detach", "cpe": "cpe1"})
        first = channel.receive(b)
        second = channel.receive(b)
        assert first is not None and second is not None
        assert first[0]["op"] == "attach" and len(first[1]) == 1
        assert second == ({"op": "detach", "cpe": "cpe1"}, [])
        os.write(w, b"ok")
        assert os.read(first[1][0], 2) == b"ok"  # the received fd is the same pipe
        os.close(first[1][0])
        a.close()
        assert channel.receive(b) is None  # the other end is gone
    finally:
        for fd in (r, w):
            os.close(fd)
        b.close()


def test_loop_gives_every_ready_fd_a_turn_before_any_gets_a_second() -> None:
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(3)]
    turns: list[int] = []
    try:
        for i, (reader, writer) in enumerate(pairs):
            writer.send(b"x" * 100)  # always ready: each handler reads only 10 bytes per turn

            def handler(_events: int, i: int = i, reader: socket.socket = reader) -> None:
                reader.recv(10)
                turns.append(i)

            loop.register(reader.fileno(), IN, handler)
        for _ in range(4):
            loop.run_once(0)
        assert sorted(turns[:3]) == [0, 1, 2] and sorted(turns[3:6]) == [0, 1, 2]
        fired: list[str] = []
        loop.call_later(0, lambda: fired.append("timer"))
        loop.run_once(0)
        assert fired == ["timer"]
    finally:
        loop.close()
        for reader, writer in pairs:
            reader.close()
            writer.close()


def test_timer_wheel_hands_out_items_when_due_once_each() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=100.2)
    wheel.schedule("a", 101.5)
    wheel.schedule("b", 100.4)  # within the second already handed out: the next one
    wheel.schedule("c", 105.0)
    assert wheel.due(100.9) == []
    assert wheel.due(101.0) == ["b"]
    assert wheel.due(101.9) == []  # "a" asked for 101.5: not before second 102
    assert wheel.due(102.0) == ["a"]
    assert wheel.due(102.0) == []  # handed out once; it must be scheduled again
    assert len(wheel) == 1 and "c" in wheel


def test_timer_wheel_moves_and_discards_items() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=0.0)
    wheel.schedule("a", 10.0)
    wheel.schedule("a", 3.0)  # moved earlier: the old entry is skipped
    wheel.schedule("b", 3.0)
    wheel.discard("b")
    assert wheel.due(5.0) == ["a"]
    assert wheel.due(20.0) == []
    wheel.schedule("a", 1.0)  # a moment long past: the next second
    assert wheel.due(20.5) == [] and wheel.due(21.0) == ["a"]


def test_timer_wheel_with_quarter_second_slots_is_never_early_and_at_most_two_slots_late() -> None:
    wheel: TimerWheel[int] = TimerWheel(now=0.1, quantum=0.25)
    moments = {i: 0.3 + i * 0.173 for i in range(40)}
    for item, at in moments.items():
        wheel.schedule(item, at)
    handed: dict[int, float] = {}
    now = 0.1
    while now < 9.0:
        now += 0.25 + 0.01  # a tick that drifts, as the event loop's does
        for item in wheel.due(now):
            handed[item] = now
    assert set(handed) == set(moments)
    for item, at in moments.items():
        assert at <= handed[item] <= at + 2 * 0.25 + 0.02, (item, at, handed[item])
