"""FQ-CoDel on the packets waiting to enter the tunnel: flow isolation, DRR, CoDel per flow, limits."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from packets import ipv4, ipv6

from mptcp_tunnel.aqm import AqmSettings
from mptcp_tunnel.fqcodel import GATE_FLOOR, GATE_S, SHAPE_BURST_S, FlowQueues, KernelGate, flow_key

SETTINGS = AqmSettings(target_s=0.005, interval_s=0.100, ecn=False)


def udp(sport: int, size: int = 1000, tos: int = 0, src: str = "192.168.10.2") -> bytes:
    packet = bytearray(ipv4(struct.pack("!HHHH", sport, 9999, size - 20, 0) + bytes(size - 28), src=src))
    packet[1] = tos
    return bytes(packet)


def sport(packet: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("!H", packet, offset + 20)[0])


def test_flow_key_separates_ports_addresses_and_families() -> None:
    assert flow_key(udp(1)) != flow_key(udp(2))
    assert flow_key(udp(1)) == flow_key(udp(1, size=200))
    assert flow_key(udp(1)) != flow_key(udp(1, src="192.168.10.3"))
    v6 = ipv6(struct.pack("!HHHH", 1, 2, 8, 0), src=b"\1" * 16)
    assert flow_key(v6) != flow_key(ipv6(struct.pack("!HHHH", 3, 2, 8, 0), src=b"\1" * 16))
    fragment = bytearray(udp(1))
    fragment[6:8] = b"\x00\x10"  # a later fragment has no ports: keyed by addresses only
    assert flow_key(bytes(fragment)) == flow_key(udp(1))[:9]
    assert flow_key(b"\x10" * 3) == b"\x10" * 3  # neither IPv4 nor IPv6: its first bytes
    assert flow_key(b"") == b""


def test_a_sparse_flow_does_not_wait_behind_a_bulk_queue() -> None:
    fq = FlowQueues(SETTINGS)
    for _ in range(100):
        fq.enqueue(udp(1000), 0.0)
    fq.dequeue(0.0, 1)  # the bulk flow is being served
    fq.enqueue(udp(2000, size=84), 0.001)  # a ping-sized packet of another flow
    served = [sport(p) for _, p, _ in fq.dequeue(0.002, 3000)]
    assert served.index(2000) <= 1, served


def test_backlogged_flows_share_by_bytes() -> None:
    fq = FlowQueues(SETTINGS)
    for _ in range(200):
        fq.enqueue(udp(1, size=1500), 0.0)
        fq.enqueue(udp(2, size=500), 0.0)
        fq.enqueue(udp(2, size=500), 0.0)
        fq.enqueue(udp(2, size=500), 0.0)
    sent = {1: 0, 2: 0}
    for _ in range(50):
        for _, p, _ in fq.dequeue(0.0, 3000):
            sent[sport(p)] += len(p)
    assert abs(sent[1] - sent[2]) <= 3000, sent


def test_codel_drops_only_from_the_flow_that_keeps_a_standing_queue() -> None:
    fq = FlowQueues(SETTINGS)
    bulk_out = sparse_out = 0
    t = 0.0
    for step in range(1000):  # 1 s: the bulk flow arrives twice as fast as it is served
        t = step / 1000
        fq.enqueue(udp(1), t)
        fq.enqueue(udp(1), t)
        if step % 20 == 0:
            fq.enqueue(udp(2, size=100), t)
        for _, p, _ in fq.dequeue(t, 1000):
            if sport(p) == 1:
                bulk_out += 1
            else:
                sparse_out += 1
    assert fq.drops > 0
    assert sparse_out == 50  # every sparse packet went out
    assert fq.marks == 0 and fq.overflow_drops == 0


def test_ecn_capable_packets_are_marked_not_dropped() -> None:
    fq = FlowQueues(AqmSettings(target_s=0.005, interval_s=0.100, ecn=True))
    ce = 0
    for step in range(1000):
        t = step / 1000
        fq.enqueue(udp(1, tos=0x02), t)  # ECT(0)
        fq.enqueue(udp(1, tos=0x02), t)
        ce += sum(1 for _, p, _ in fq.dequeue(t, 1000) if p[1] & 0x03 == 0x03)
    assert fq.drops == 0 and fq.marks > 0 and ce == fq.marks


def test_the_memory_limit_drops_from_the_longest_queue() -> None:
    fq = FlowQueues(SETTINGS, limit_bytes=20_000)
    for _ in range(5):
        fq.enqueue(udp(2), 0.0)  # a small queue
    for _ in range(40):
        fq.enqueue(udp(1), 0.0)  # the hog
    assert fq.backlog <= 20_000
    assert fq.overflow_drops == 25
    out = [sport(p) for _, p, _ in fq.dequeue(0.0, 100_000)]
    assert out.count(2) == 5 and out.count(1) == 15


def test_undo_puts_packets_back_in_their_order() -> None:
    fq = FlowQueues(SETTINGS)
    packets = [udp(1, size=100 + i) for i in range(5)]
    for p in packets:
        fq.enqueue(p, 0.0)
    items = fq.dequeue(0.0, 300)  # until at least 300 bytes
    assert [p for _, p, _ in items] == packets[:3]
    fq.undo(items[1:])
    assert fq.backlog == sum(map(len, packets[1:]))
    assert [p for _, p, _ in fq.dequeue(0.0, 10_000)] == packets[1:]
    assert fq.backlog == 0 and len(fq) == 0


def test_the_virtio_header_in_front_is_skipped() -> None:
    fq = FlowQueues(SETTINGS, offset=10)
    a, b = bytes(10) + udp(1), bytes(10) + udp(2)
    assert fq.flow_of(a) != fq.flow_of(b) or flow_key(a, 10) != flow_key(b, 10)
    assert flow_key(a, 10) == flow_key(udp(1))


@given(st.lists(st.tuples(st.binary(max_size=120), st.booleans()), max_size=60))
def test_any_bytes_are_queued_and_accounted_for(ops: list[tuple[bytes, bool]]) -> None:
    fq = FlowQueues(AqmSettings(ecn=True), limit_bytes=2000)
    enqueued = dequeued = 0
    for i, (packet, pull) in enumerate(ops):
        fq.enqueue(packet, i * 0.05)
        enqueued += 1
        if pull:
            dequeued += len(fq.dequeue(i * 0.05, 300))
    dequeued += len(fq.dequeue(10.0, 1 << 30))
    assert fq.backlog == 0
    assert dequeued + fq.drops + fq.overflow_drops == enqueued


def test_the_kernel_gate_allows_a_few_ms_at_the_acknowledged_rate() -> None:
    gate = KernelGate()
    assert gate.stale(0.0)
    gate.measured(0.0, written=0, outstanding=0, notsent=0)
    assert gate.room(0, 0.0) == GATE_FLOOR  # no rate known yet: the floor
    assert not gate.stale(0.0005)
    gate.measured(0.2, written=2_000_000, outstanding=100_000, notsent=GATE_FLOOR)
    assert gate.rate == 1_900_000 / 0.2  # 9.5 MB/s acknowledged
    assert gate.limit == int(gate.rate * GATE_S) and gate.limit > GATE_FLOOR
    assert gate.room(2_000_000, 0.2) == gate.limit - GATE_FLOOR
    assert gate.room(2_010_000, 0.2) == gate.limit - GATE_FLOOR - 10_000  # written since: less room
    gate.measured(0.4, written=2_010_000, outstanding=2_010_000 - 1_900_000, notsent=10**6)
    assert gate.rate == 9_500_000 / 2  # the link stalled for a window: the rate halves, not zero
    assert gate.room(2_010_000, 0.4) < 0  # the subflows hold far more than a few ms: wait


def test_the_byte_bound_gate_holds_its_floor_at_low_rates_and_a_few_ms_at_high_rates() -> None:
    """The default datapath's bound (``tunnel.queue_bytes``) counts the subflows' unsent data too."""
    gate = KernelGate(floor=131_072)
    assert gate.room(0, 0.0) == 131_072
    gate.measured(0.0, written=0, outstanding=0, notsent=0)
    gate.measured(0.2, written=400_000, outstanding=100_000, notsent=150_000)  # 1.5 MB/s acknowledged
    assert gate.limit == 131_072 and gate.room(400_000, 0.2) == 131_072 - 150_000  # full: drop
    gate.measured(0.4, written=200_400_000, outstanding=400_000, notsent=50_000)  # ~1 GB/s
    assert gate.limit == int(gate.rate * GATE_S) > 1_000_000  # a few ms at a high rate, not the floor
    assert gate.room(200_400_000, 0.4) == gate.limit - 50_000


def test_a_rough_reading_from_siocoutq_never_allows_more_than_a_full_one() -> None:
    """A sparse packet needs only SIOCOUTQ: unsent data is part of what the kernel holds unacknowledged."""
    for outstanding, notsent in ((0, 0), (60_000, 0), (60_000, 60_000), (100_000, 30_000)):
        rough, full = KernelGate(floor=131_072), KernelGate(floor=131_072)
        assert rough.measured_roughly(0.0, written=0, outstanding=outstanding, need=1)
        full.measured(0.0, written=0, outstanding=outstanding, notsent=notsent)
        assert rough.room(0, 0.0) == 131_072 - outstanding <= full.room(0, 0.0)
        assert not rough.exact and full.exact
    gate = KernelGate(floor=131_072)
    assert gate.measured_roughly(0.0, written=0, outstanding=1_500, need=1_500)
    assert not gate.needs_reading(0.0005, written=0, need=1_500)  # a ping fits: no more reads
    assert gate.needs_reading(0.0005, written=0, need=130_000)  # rough and too small: read it all
    assert gate.needs_reading(0.0005, written=0, need=0)  # all the room there is: read it all
    gate.measured(0.0005, written=0, outstanding=1_500, notsent=0)
    assert not gate.needs_reading(0.0006, written=0, need=129_000)  # a full reading stands for 1 ms
    assert gate.needs_reading(0.002, written=0, need=1)  # stale
    bulk = KernelGate(floor=131_072)
    assert not bulk.measured_roughly(0.0, written=0, outstanding=120_000, need=20_000)  # cannot fit
    assert bulk.exact and bulk.stale(0.0)  # nothing recorded: the full reading follows


def test_rough_readings_still_learn_the_rate() -> None:
    """At a high rate the bound is a few ms at the acknowledged rate, not its floor: rough readings
    (every batch fits) must keep that rate current."""
    gate = KernelGate(floor=131_072)
    gate.measured_roughly(0.0, written=0, outstanding=0, need=1)
    gate.measured_roughly(0.2, written=200_000_000, outstanding=100_000, need=1)  # ~1 GB/s acked
    assert gate.limit == int(gate.rate * GATE_S) > 1_000_000
    assert gate.room(200_000_000, 0.2) == gate.limit - 100_000


def test_the_shaper_lets_the_kernel_have_its_rate_and_no_more() -> None:
    rate = 10e6  # bit/s
    gate = KernelGate(shape_bps=rate)
    burst = int(rate / 8 * SHAPE_BURST_S)
    gate.measured(0.0, written=0, outstanding=0, notsent=0)
    gate.measured(0.1, written=10**6, outstanding=0, notsent=0)  # the links could take far more
    assert gate.room(10**6, 0.1) == burst  # a full bucket: one burst, not the gate's room
    # A sender that takes whatever room it is given, 1 ms at a time, for 2 s.
    written, now = 10**6, 0.1
    while now < 2.1:
        now += 0.001
        if gate.stale(now):
            gate.measured(now, written, outstanding=0, notsent=0)
        room = gate.room(written, now)
        if room > 0:
            written += max(room, 1514)  # a packet goes whole, even past the tokens
    sent_bits = (written - 10**6 - burst) * 8
    assert abs(sent_bits / 2.0 - rate) < 0.02 * rate  # the shaped rate, within 2 %


def test_a_super_packet_past_the_tokens_is_paid_back_before_the_next() -> None:
    gate = KernelGate(shape_bps=8e6, floor=16 * 1024)  # 1 MB/s: the bucket (10 KB) decides
    gate.measured(0.0, written=0, outstanding=0, notsent=0)
    assert gate.room(0, 0.0) == 10_000
    assert gate.room(65_000, 0.0) == -55_000  # a 64 KB GSO packet went whole
    gate.measured(0.050, written=65_000, outstanding=0, notsent=0)  # the links took it all
    assert gate.room(65_000, 0.050) < 0  # 50 ms later: 50 KB of tokens, still in debt
    gate.measured(0.056, written=65_000, outstanding=0, notsent=0)
    assert gate.room(65_000, 0.056) > 0  # 56 ms later: even again


def test_without_a_rate_the_gate_alone_decides() -> None:
    gate = KernelGate()
    gate.measured(0.0, written=0, outstanding=0, notsent=0)
    assert gate.room(10**9, 100.0) == GATE_FLOOR - 10**9  # no tokens involved
