"""CoDel on the tunnel's queue: sojourn time from write offsets, RFC 8289's control law, ECN CE marking."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st
from packets import ipv4, ipv6

from mptcp_tunnel.aqm import (
    AqmSettings,
    CoDel,
    SojournClock,
    ecn_capable,
    mark_ce,
)

SETTINGS = AqmSettings(target_s=0.005, interval_s=0.100)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(packet: bytes) -> bytearray:
    p = bytearray(packet)
    p[10:12] = b"\0\0"
    p[10:12] = struct.pack("!H", _checksum(bytes(p[:20])))
    return p


def test_sojourn_is_the_age_of_the_oldest_outstanding_byte_less_the_round_trip() -> None:
    clock = SojournClock()
    clock.wrote(1000, 0.0)
    clock.wrote(1000, 0.010)
    assert clock.sojourn(0.020, outstanding=1500) == 0.020  # bytes 500.. of the first write wait
    assert math.isclose(clock.sojourn(0.030, outstanding=900), 0.020)  # the first write is acked
    assert math.isclose(clock.sojourn(0.030, outstanding=900, path_s=0.015), 0.005)
    assert clock.sojourn(0.030, outstanding=900, path_s=0.050) == 0.0  # never negative
    assert clock.sojourn(0.040, outstanding=0) == 0.0
    assert clock.sojourn(0.050, outstanding=0) == 0.0  # nothing left to remember


def test_sojourn_clamps_an_outstanding_count_larger_than_what_was_written() -> None:
    clock = SojournClock()
    clock.wrote(100, 1.0)
    assert clock.sojourn(1.5, outstanding=10_000) == 0.5  # e.g. a handshake's bytes counted too


def test_codel_lets_a_short_burst_pass() -> None:
    codel = CoDel(SETTINGS)
    # 50 ms of queue for less than one interval: no signal
    assert not any(codel.decide(t / 1000, 0.050, 100_000) for t in range(0, 99))
    assert not codel.decide(0.120, 0.001, 100_000)  # queue gone
    assert codel.signals == 0


def test_codel_signals_a_standing_queue_at_increasing_frequency() -> None:
    codel = CoDel(SETTINGS)
    times = [t / 1000 for t in range(0, 2000)]
    signalled = [t for t in times if codel.decide(t, 0.030, 100_000)]
    assert signalled[0] >= 0.100  # only after a whole interval above target
    gaps = [b - a for a, b in zip(signalled, signalled[1:], strict=False)]
    assert len(signalled) > 10
    assert all(b <= a + 0.0011 for a, b in zip(gaps, gaps[1:], strict=False)), gaps  # never slower
    assert math.isclose(gaps[0], 0.100, abs_tol=0.002)  # interval / sqrt(1), then / sqrt(2) ...
    assert math.isclose(gaps[1], 0.100 / math.sqrt(2), abs_tol=0.002)


def test_codel_stops_when_the_queue_drains_and_ignores_less_than_a_packet() -> None:
    codel = CoDel(SETTINGS)
    for t in range(0, 300):
        codel.decide(t / 1000, 0.030, 100_000)
    assert codel.dropping
    assert not codel.decide(0.301, 0.001, 100_000)
    assert not codel.dropping
    fresh = CoDel(SETTINGS)
    assert not any(fresh.decide(t / 1000, 0.5, 1000) for t in range(0, 1000))  # < one MTU queued


def test_mark_ce_on_ect_ipv4_keeps_the_header_checksum_valid() -> None:
    p = _with_checksum(ipv4(b"x" * 40))
    p[1] = 0xB8 | 0x02  # DSCP EF, ECT(0)
    p = _with_checksum(bytes(p))
    assert mark_ce(p)
    assert p[1] == 0xB8 | 0x03  # DSCP untouched, CE
    assert _checksum(bytes(p[:20])) == 0


def test_not_ect_is_left_alone_for_the_caller_to_drop() -> None:
    p = _with_checksum(ipv4(b"x" * 40))
    before = bytes(p)
    assert not ecn_capable(p) and not mark_ce(p)
    assert bytes(p) == before
    assert not mark_ce(bytearray(b"\x00garbage"))


def test_mark_ce_on_ipv6_after_a_vnet_header() -> None:
    vnet = 10
    p = bytearray(bytes(vnet) + ipv6(b"y" * 8))
    p[vnet + 1] |= 0x10  # ECT(1): traffic class bits 0x01 sit in the upper nibble of byte 1
    assert mark_ce(memoryview(p), vnet)
    assert (p[vnet + 1] >> 4) & 0x03 == 0x03
    assert p[vnet] >> 4 == 6  # version untouched


@given(st.integers(0, 63), st.sampled_from([1, 2, 3]), st.binary(max_size=64), st.integers(1, 255))
def test_ipv4_checksum_stays_valid_for_any_header(dscp: int, ect: int, payload: bytes, ttl: int) -> None:
    p = bytearray(ipv4(payload, ttl=ttl))
    p[1] = dscp << 2 | ect
    p = _with_checksum(bytes(p))
    assert mark_ce(p)
    assert p[1] == dscp << 2 | 3
    assert _checksum(bytes(p[:20])) == 0
