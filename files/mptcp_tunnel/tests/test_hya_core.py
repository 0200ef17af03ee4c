"""HYA baseline core: encapsulation, proportional scheduler, JUGGLER-style reorder buffer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_tunnel.config import ConfigError
from mptcp_tunnel.hya_core import (
    HEADER_LEN,
    FrameType,
    HyaFrameError,
    HyaReceiver,
    HyaSender,
    ProportionalScheduler,
    ReorderBuffer,
    decode,
    encode,
    parse_hya,
)

# ---------------------------------------------------------------- encapsulation


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, (1 << 32) - 1),
    st.binary(min_size=1, max_size=2000),
)
def test_encode_decode_roundtrip(epoch: int, seq: int, payload: bytes) -> None:
    frame = decode(encode(FrameType.DATA, epoch, seq, payload))
    assert (frame.kind, frame.epoch, frame.seq, frame.payload) == (
        FrameType.DATA,
        epoch,
        seq,
        payload,
    )


def test_sequence_wraps_on_the_wire() -> None:
    assert decode(encode(FrameType.DATA, 1, (1 << 32) + 5, b"x")).seq == 5


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "short"),
        (b"\xa7\x00\x00", "short"),
        (b"\x45" + bytes(7) + b"x", "magic"),
        (b"\xa7\x09" + bytes(6) + b"x", "type"),
        (b"\xa7\x00" + bytes(6), "empty"),
    ],
)
def test_decode_rejects_bad_frames(datagram: bytes, reason: str) -> None:
    with pytest.raises(HyaFrameError, match=reason):
        decode(datagram)


def test_probe_has_no_payload() -> None:
    frame = decode(HyaSender([1, 1], epoch=7).probe())
    assert frame.kind == FrameType.PROBE and frame.payload == b"" and frame.epoch == 7
    assert len(HyaSender([1, 1], epoch=7).probe()) == HEADER_LEN


# ---------------------------------------------------------------- scheduler


@pytest.mark.parametrize("weights", [(1, 1), (2, 1), (1, 2), (3, 1), (5, 3)])
def test_scheduler_keeps_byte_ratio_with_equal_packets(weights: tuple[int, int]) -> None:
    sched = ProportionalScheduler(weights)
    counts = [0, 0]
    for _ in range(300 * sum(weights)):
        counts[sched.pick(1500)] += 1
    assert counts[0] * weights[1] == counts[1] * weights[0]


@settings(max_examples=60)
@given(
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
    st.lists(st.integers(40, 1500), min_size=50, max_size=600),
)
def test_scheduler_byte_share_within_one_packet(weights: tuple[int, int], sizes: list[int]) -> None:
    sched = ProportionalScheduler(weights)
    sent = [0, 0]
    for size in sizes:
        sent[sched.pick(size)] += size
    total = sum(sent)
    for i, w in enumerate(weights):
        ideal = total * w / sum(weights)
        assert abs(sent[i] - ideal) <= 1500


def test_scheduler_interleaves_rather_than_bursts() -> None:
    sched = ProportionalScheduler([2, 1])
    picks = [sched.pick(1000) for _ in range(9)]
    # 2:1 spreads as f f c f f c ..., never three of a kind in a row
    assert all(picks[i : i + 3] != [picks[i]] * 3 for i in range(len(picks) - 2))
    assert picks.count(0) == 6 and picks.count(1) == 3


def test_scheduler_skips_down_link_and_zero_weight() -> None:
    sched = ProportionalScheduler([1, 1])
    sched.set_up(1, False)
    assert {sched.pick(100) for _ in range(10)} == {0}
    sched.set_up(1, True)
    assert sched.pick(100) == 1  # catches up on its share
    only_fixed = ProportionalScheduler([1, 0])
    assert {only_fixed.pick(100) for _ in range(10)} == {0}


def test_scheduler_rejects_bad_weights() -> None:
    for weights in ([], [0, 0], [-1, 2]):
        with pytest.raises(ValueError):
            ProportionalScheduler(weights)


# ---------------------------------------------------------------- reorder buffer


def pkt(seq: int) -> bytes:
    return seq.to_bytes(4, "big")


def seqs(packets: list[bytes]) -> list[int]:
    return [int.from_bytes(p, "big") for p in packets]


def test_in_order_packets_wait_at_most_inseq_timeout() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.001)
    buf.push(0, pkt(0), now=0.0)
    buf.push(1, pkt(1), now=0.0002)
    assert buf.poll(0.0005) == []  # still batching
    assert buf.next_deadline() == pytest.approx(0.001)
    assert seqs(buf.poll(0.001)) == [0, 1]
    assert buf.next_deadline() is None


def test_flush_releases_batch_immediately() -> None:
    buf = ReorderBuffer()
    buf.push(10, pkt(10), now=0.0)
    assert seqs(buf.poll(0.0, flush=True)) == [10]


def test_batch_released_when_full() -> None:
    buf = ReorderBuffer(max_batch=4)
    for s in range(4):
        buf.push(s, pkt(s), now=0.0)
    assert seqs(buf.poll(0.0)) == [0, 1, 2, 3]


def test_hole_filled_before_timeout_restores_order() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0)
    buf.push(0, pkt(0), 0.0)
    buf.push(2, pkt(2), 0.001)
    buf.push(3, pkt(3), 0.002)
    assert seqs(buf.poll(0.003)) == [0]
    assert buf.held == 2
    buf.push(1, pkt(1), 0.004)
    assert seqs(buf.poll(0.004)) == [1, 2, 3]
    assert buf.stats.reordered == 2 and buf.stats.lost == 0


def test_lost_packet_skipped_after_ooo_timeout() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0)
    buf.push(0, pkt(0), 0.0)
    buf.push(2, pkt(2), 0.001)
    buf.push(3, pkt(3), 0.005)
    assert seqs(buf.poll(0.0)) == [0]
    assert buf.next_deadline() == pytest.approx(0.011)
    assert buf.poll(0.0109) == []
    assert seqs(buf.poll(0.011)) == [2, 3]
    assert buf.stats.lost == 1 and buf.expected == 4


def test_two_gaps_each_bounded_by_ooo_timeout() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0)
    buf.push(0, pkt(0), 0.0)
    buf.push(2, pkt(2), 0.000)  # hole at 1
    buf.push(5, pkt(5), 0.008)  # hole at 3, 4
    assert seqs(buf.poll(0.010)) == [0, 2]
    assert buf.poll(0.0179) == []
    assert seqs(buf.poll(0.008 + 0.010)) == [5]
    assert buf.stats.lost == 3


def test_late_packet_after_skip_is_delivered_not_dropped() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0)
    buf.push(0, pkt(0), 0.0)
    buf.push(2, pkt(2), 0.0)
    assert seqs(buf.poll(0.02)) == [0, 2]
    buf.push(1, pkt(1), 0.021)
    assert seqs(buf.poll(0.021)) == [1]
    assert buf.stats.late == 1


def test_duplicate_held_packet_dropped() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0)
    buf.push(0, pkt(0), 0.0)
    buf.push(3, pkt(3), 0.0)
    buf.push(3, pkt(3), 0.001)
    buf.push(1, pkt(1), 0.002)
    buf.push(2, pkt(2), 0.002)
    assert seqs(buf.poll(0.002)) == [0, 1, 2, 3]
    assert buf.stats.duplicates == 1


def test_overflow_skips_hole_instead_of_growing() -> None:
    buf = ReorderBuffer(ooo_timeout=10.0, inseq_timeout=0.0, max_held=8)
    buf.push(0, pkt(0), 0.0)
    for s in range(2, 11):  # nine held above hole 1
        buf.push(s, pkt(s), 0.0)
    assert seqs(buf.poll(0.0)) == [0, *range(2, 11)]
    assert buf.held == 0 and buf.stats.overflow_skips == 1


def test_huge_jump_resyncs() -> None:
    buf = ReorderBuffer(ooo_timeout=0.010, inseq_timeout=0.0, resync_window=1000)
    buf.push(0, pkt(0), 0.0)
    buf.push(5, pkt(5), 0.0)
    buf.push(100000, pkt(100000), 0.0)
    assert seqs(buf.poll(0.0)) == [0, 5, 100000]
    assert buf.stats.resyncs == 1


@settings(max_examples=150, deadline=None)
@given(
    st.integers(20, 300),
    st.floats(0.0, 0.3),
    st.integers(0, 2**32 - 1),
    st.randoms(use_true_random=False),
)
def test_two_links_with_loss_deliver_each_packet_once_in_bounded_time(
    n: int, loss: float, start_seq: int, rnd: random.Random
) -> None:
    """Simulate two links with different delays and loss: every packet that arrives is
    delivered exactly once; everything delivered before the first skip is in order; nothing
    waits in the buffer longer than ooo_timeout + inseq_timeout."""
    ooo, inseq = 0.010, 0.001
    sender = HyaSender([2, 1], epoch=3)
    sender.seq = start_seq
    receiver = HyaReceiver(ooo_timeout=ooo, inseq_timeout=inseq)
    delay = [0.002, 0.009]
    arrivals: list[tuple[float, int, bytes]] = []
    for i in range(n):
        link, datagram = sender.send(i.to_bytes(4, "big") + bytes(rnd.randint(0, 1400)))
        if rnd.random() < loss:
            continue
        jitter = rnd.uniform(0.0, 0.003)
        arrivals.append((i * 0.0004 + delay[link] + jitter, i, datagram))
    arrivals.sort()
    arrived_at = {i: t for t, i, _ in arrivals}
    delivered: list[tuple[int, float]] = []

    def run_until(t: float) -> None:
        while (d := receiver.next_deadline()) is not None and d <= t:
            delivered.extend((int.from_bytes(p[:4], "big"), d) for p in receiver.poll(d))

    for t, _, datagram in arrivals:
        run_until(t)
        assert receiver.receive(datagram, t) == FrameType.DATA
        delivered.extend((int.from_bytes(p[:4], "big"), t) for p in receiver.poll(t))
    run_until(float("inf"))
    got = [s for s, _ in delivered]
    assert sorted(got) == sorted(arrived_at)  # each arrived packet exactly once
    for s, t in delivered:
        assert t - arrived_at[s] <= ooo + inseq + 1e-9
    stats = receiver.buffer.stats
    if stats.lost == 0 and stats.late == 0:
        assert got == sorted(got)
    else:
        # only late packets may break the order
        inversions = sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
        assert inversions <= stats.late


def test_receiver_counts_garbage_and_resets_on_new_epoch() -> None:
    rx = HyaReceiver(ooo_timeout=0.010, inseq_timeout=0.0)
    assert rx.receive(b"junk", 0.0) is None
    assert rx.errors == {"short": 1}
    rx.receive(encode(FrameType.DATA, 1, 100000, b"a"), 0.0)  # joined mid-stream
    rx.receive(encode(FrameType.DATA, 1, 100002, b"c"), 0.0)  # hole at 100001
    assert rx.poll(0.0) == [b"a"]
    rx.receive(encode(FrameType.DATA, 2, 0, b"new"), 0.001)  # peer restarted
    assert rx.poll(0.001) == [b"new"]
    assert rx.epoch_changes == 1 and rx.buffer.held == 0


def test_epoch_start_waits_for_packets_still_on_the_slower_link() -> None:
    # 2:1 scheduling puts 0 and 1 on one link and 2 on the other; 2 may arrive first.
    rx = HyaReceiver(ooo_timeout=0.010, inseq_timeout=0.0)
    rx.receive(encode(FrameType.DATA, 7, 2, b"2"), 0.0)
    assert rx.poll(0.0) == []
    rx.receive(encode(FrameType.DATA, 7, 0, b"0"), 0.001)
    rx.receive(encode(FrameType.DATA, 7, 1, b"1"), 0.001)
    assert rx.poll(0.001) == [b"0", b"1", b"2"]
    assert rx.buffer.stats.late == 0 and rx.buffer.stats.lost == 0


def test_epoch_start_gives_up_on_missing_first_packets_after_ooo_timeout() -> None:
    rx = HyaReceiver(ooo_timeout=0.010, inseq_timeout=0.0)
    rx.receive(encode(FrameType.DATA, 7, 3, b"3"), 0.0)
    assert rx.poll(0.009) == []
    assert rx.poll(0.010) == [b"3"]
    assert rx.buffer.stats.lost == 3


def test_receiver_extends_sequence_across_wrap() -> None:
    rx = HyaReceiver(ooo_timeout=0.010, inseq_timeout=0.0)
    top = (1 << 32) - 2
    for i, s in enumerate([top, top + 1, 0, 1]):
        rx.receive(encode(FrameType.DATA, 9, s, bytes([i])), 0.0)
    assert rx.poll(0.0) == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert rx.buffer.stats.resyncs == 0 and rx.buffer.stats.lost == 0


def test_probe_does_not_enter_buffer() -> None:
    rx = HyaReceiver(ooo_timeout=0.010, inseq_timeout=0.0)
    assert rx.receive(encode(FrameType.PROBE, 1, 5), 0.0) == FrameType.PROBE
    assert rx.poll(0.0) == [] and rx.buffer.expected is None


# ---------------------------------------------------------------- settings


LINKS = [{"local": "10.1.0.1", "remote": "10.1.0.2"}, {"local": "10.2.0.1", "remote": "10.2.0.2"}]


def test_parse_defaults() -> None:
    s = parse_hya({"links": LINKS}, "hya")
    assert (s.ratio_fixed, s.ratio_cellular, s.ooo_timeout_ms, s.inseq_timeout_ms) == (1, 1, 10, 1)
    assert s.port == 7441 and s.weights == (1, 1) and s.effective_tun_mtu(1500) == 1464
    assert [(link.local, link.remote) for link in s.links] == [
        ("10.1.0.1", "10.1.0.2"),
        ("10.2.0.1", "10.2.0.2"),
    ]


@pytest.mark.parametrize("ratio", ["2:1", [2, 1], " 2 : 1 "])
def test_parse_ratio_forms(ratio: object) -> None:
    s = parse_hya({"ratio": ratio, "links": LINKS, "ooo_timeout_ms": 5}, "hya")
    assert s.weights == (2, 1) and s.ooo_timeout_ms == 5.0


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"ratio": 121, "links": LINKS}, "hya.ratio"),  # YAML's reading of unquoted 2:1
        ({"ratio": "2:1:1", "links": LINKS}, "hya.ratio"),
        ({"ratio": "0:0", "links": LINKS}, "hya.ratio"),
        ({"ratio": "a:1", "links": LINKS}, "hya.ratio"),
        ({"ooo_timeout_ms": -1, "links": LINKS}, "hya.ooo_timeout_ms"),
        ({"inseq_timeout_ms": "1ms", "links": LINKS}, "hya.inseq_timeout_ms"),
        ({"port": 70000, "links": LINKS}, "hya.port"),
        ({"port": True, "links": LINKS}, "hya.port"),
        ({}, "hya.links"),
        ({"links": [{"local": "10.1.0.1"}]}, "hya.links[0].remote"),
        ({"links": [{"local": "10.1.0.300", "remote": "10.1.0.2"}]}, "hya.links[0].local"),
        ({"links": [{"local": "10.1.0.1", "remote": "x", "foo": 1}]}, "hya.links[0].foo"),
        ({"links": LINKS, "colour": "red"}, "hya.colour"),
        ({"links": [LINKS[0], LINKS[0]]}, "hya.links"),
    ],
)
def test_parse_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hya(raw, "hya")
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message
