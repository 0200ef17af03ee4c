"""FQ-CoDel (RFC 8290) for the packets waiting to enter the tunnel, sans-I/O.

With ``tunnel.aqm: fq_codel`` the kernel keeps only a little unsent data (``queue_bytes`` as
``TCP_NOTSENT_LOWAT``); what the socket cannot take yet waits here, in userspace, where it can be
managed packet by packet. Packets are hashed by their inner 5-tuple into flow queues served by
deficit round robin, flows that were idle go first (a ping, a DNS lookup or a TCP ACK stream does not
wait behind a bulk download), and each queue runs CoDel on its own sojourn time: a bulk flow that
keeps a standing queue gets drops (or ECN CE marks), the others do not.

The engine drives it: ``enqueue`` what the kernel should not take yet, ``dequeue`` a budget of bytes
when it may take more, ``undo`` what the socket then refused (back to the heads of their queues).
``KernelGate`` says how much "more" is: the kernel keeps only a few ms of unsent data, counted in the
connection and in its subflows. Nothing here reads a clock or a socket.
"""

from __future__ import annotations

from collections import deque

from mptcp_tunnel.aqm import AqmSettings, CoDel, mark_ce

QUANTUM = 1514  # bytes a flow may send per round (RFC 8290: one MTU-sized packet)
FLOWS = 1024
TCP, UDP, SCTP, UDPLITE = 6, 17, 132, 136
_PORTS = (TCP, UDP, SCTP, UDPLITE)
IDLE, NEW, OLD = 0, 1, 2
Item = tuple[int, bytes, float]  # (flow, packet, enqueue time)


# The kernel's part of the queue, with fq_codel. The MPTCP scheduler hands each subflow data long
# before its congestion window lets it out (hundreds of KB under bulk flows in the lab: hundreds of
# ms of queue nobody manages), and neither TCP_NOTSENT_LOWAT, net.ipv4.tcp_notsent_lowat nor a fixed
# SO_SNDBUF bounds that without also capping throughput. So the agent itself stops writing while the
# connection's and the subflows' unsent data exceed a few ms at the rate the peer acknowledges.
# The floor matters on slow lines, where 4 ms is only a few packets: what the gate lets through may go
# to the slowest subflow, and whatever is sent after it waits for it at the peer (in-order delivery).
# 16 KiB is 26 ms on a 5 Mbit/s cellular link; 6 KiB brought the uploads' ping p99 from 1.43 to 1.35 x
# idle at the same throughput (lab, 3 + 3 alternating runs, 29 Nov: bench/results/issue9-gate-2026-11-29).
GATE_FLOOR = 6 * 1024  # bytes: below this the gate never holds data back
GATE_S = 0.004  # unsent data allowed, in time at the acknowledged rate (the agent refills within it)
MEASURE_EVERY_S = 0.001  # the kernel's counters are read at most this often (room is tracked between)
RATE_WINDOW_S = 0.1
# The shaper (``tunnel.shape_mbit``): a token bucket in front of the kernel, so that the queue forms
# here, in the flow queues, and not in the access links' buffers, which nobody manages (a cubic subflow
# fills a link's buffer before it backs off: +20-40 ms at p99 in the lab). Bursts of 10 ms at the rate.
SHAPE_BURST_S = 0.010
SHAPE_BURST_FLOOR = 4096  # bytes: a few full-sized packets even at low rates


class KernelGate:
    """How many more bytes the agent may hand the kernel (sans-I/O): ``measured`` with the socket's
    counters, ``room`` between measurements (less what was written since), and no more than the
    shaper's tokens when it has a rate. The kernel may hold ``max(floor, GATE_S at the acknowledged
    rate)`` of unsent data."""

    def __init__(self, shape_bps: float = 0.0, floor: int = GATE_FLOOR) -> None:
        self.floor = floor
        self.shape = 0.0  # bytes/s; 0 = no shaper
        self.burst = self.tokens = 0.0
        self._tokens_at = -1.0
        self._tokens_written = 0
        self.set_shape(shape_bps)
        self.rate = 0.0  # bytes/s acknowledged, smoothed
        self.limit = floor
        self._at = -1.0
        self._base = floor
        self._written_at = 0
        self._rate_at = -1.0
        self._rate_acked = 0
        self.exact = True  # the last reading counted the subflows' unsent data (not SIOCOUTQ alone)

    def set_shape(self, shape_bps: float) -> None:
        """A new rate (bits/s; 0 = none) from now on. A shaper that starts has a full bucket; one that
        changes keeps its tokens, up to the new burst."""
        starts = not self.shape
        self.shape = max(0.0, shape_bps) / 8
        self.burst = max(float(SHAPE_BURST_FLOOR), self.shape * SHAPE_BURST_S)
        if starts:
            self.tokens, self._tokens_at = self.burst, -1.0
        else:
            self.tokens = min(self.tokens, self.burst)

    def stale(self, now: float) -> bool:
        return now - self._at >= MEASURE_EVERY_S

    def measured(self, now: float, written: int, outstanding: int, notsent: int) -> None:
        """``written``: bytes the socket ever took; ``outstanding``: not yet acknowledged
        (``SIOCOUTQ``); ``notsent``: not yet on the wire, connection and subflows together."""
        acked = written - outstanding
        if self._rate_at < 0:
            self._rate_at, self._rate_acked = now, acked
        elif now - self._rate_at >= RATE_WINDOW_S:
            sample = (acked - self._rate_acked) / (now - self._rate_at)
            self.rate = sample if self.rate == 0 else (self.rate + sample) / 2
            self._rate_at, self._rate_acked = now, acked
        self.limit = max(self.floor, int(self.rate * GATE_S))
        self._base = self.limit - notsent
        self._written_at = written
        self._at = now
        self.exact = True

    def measured_roughly(self, now: float, written: int, outstanding: int, need: int) -> bool:
        """A reading of ``SIOCOUTQ`` alone: everything the kernel holds counts as unsent. Unsent data,
        in the connection or in a subflow, is never acknowledged, so it is part of ``outstanding``:
        ``room`` then never allows more than after a full reading, and the rate is still learned.
        Sparse traffic (a ping through an idle session) costs one ioctl instead of three reads.
        Returns whether that room fits ``need`` bytes; if not, the caller reads everything (nothing is
        recorded when it cannot fit: a bulk sender's full reading is not preceded by a rough one).
        Never with a shaper (its tokens are spent in ``room``) or for all the room there is."""
        if need <= 0 or self.shape or self.limit - outstanding < need:
            return False
        self.measured(now, written, outstanding, outstanding)
        self.exact = False
        return self.room(written, now) >= need

    def needs_reading(self, now: float, written: int, need: int) -> bool:
        """Whether the kernel's counters must be read before ``need`` more bytes are sent: the last
        reading is stale, or it was rough and too small for them (a full one may find room); a
        caller that takes all the room there is (``need`` 0) always gets a full one."""
        return self.stale(now) or (not self.exact and (need <= 0 or self.room(written, now) < need))

    def room(self, written: int, now: float) -> int:
        room = self._base - (written - self._written_at)
        if not self.shape:
            return room
        if self._tokens_at >= 0:  # tokens may go below zero: a super-packet is taken whole
            earned = (now - self._tokens_at) * self.shape
            self.tokens = min(self.burst, self.tokens + earned - (written - self._tokens_written))
        self._tokens_at, self._tokens_written = now, written
        return min(room, int(self.tokens))


def flow_key(packet: bytes, offset: int = 0) -> bytes:
    """The inner packet's addresses, protocol and ports (non-IP or truncated: its first bytes)."""
    end = len(packet)
    if end < offset + 1:
        return b""
    version = packet[offset] >> 4
    if version == 4 and end >= offset + 20:
        proto = packet[offset + 9]
        ihl = (packet[offset] & 0x0F) * 4
        key = packet[offset + 9 : offset + 10] + packet[offset + 12 : offset + 20]
        first_fragment = (packet[offset + 6] & 0x1F) == 0 and packet[offset + 7] == 0
        if proto in _PORTS and first_fragment and end >= offset + ihl + 4:
            key += packet[offset + ihl : offset + ihl + 4]
        return key
    if version == 6 and end >= offset + 40:
        proto = packet[offset + 6]
        key = packet[offset + 6 : offset + 7] + packet[offset + 8 : offset + 40]
        if proto in _PORTS and end >= offset + 44:
            key += packet[offset + 40 : offset + 44]
        return key
    return packet[offset : offset + 20]


class FlowQueues:
    """Flow queues with deficit round robin and CoDel per queue (RFC 8290's scheduler).

    ``offset`` is where the IP header starts in each packet (the virtio-net header rides in front of
    it when offload is on). ``limit_bytes`` bounds the memory: beyond it, packets are dropped from
    the head of the longest queue (the flow most responsible, as fq_codel does).
    """

    def __init__(
        self,
        settings: AqmSettings,
        *,
        offset: int = 0,
        limit_bytes: int = 4 * 1024 * 1024,
        flows: int = FLOWS,
        quantum: int = QUANTUM,
    ) -> None:
        self.settings = settings
        self.offset = offset
        self.limit_bytes = limit_bytes
        self.flows = flows
        self.quantum = quantum
        self.backlog = 0  # bytes queued, all flows
        self.drops = 0  # CoDel drops (packets)
        self.marks = 0  # CoDel ECN CE marks
        self.overflow_drops = 0  # packets dropped because limit_bytes was exceeded
        self._queues: dict[int, deque[tuple[bytes, float]]] = {}
        self._bytes: dict[int, int] = {}
        self._deficit: dict[int, int] = {}
        self._codel: dict[int, CoDel] = {}
        self._state: dict[int, int] = {}
        self._new: deque[int] = deque()
        self._old: deque[int] = deque()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def flow_of(self, packet: bytes) -> int:
        return hash(flow_key(packet, self.offset)) % self.flows

    def _queue(self, flow: int, nbytes: int) -> deque[tuple[bytes, float]]:
        """The flow's queue, about to take ``nbytes`` more (created on first use)."""
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = deque()
            self._bytes[flow] = 0
        self._bytes[flow] += nbytes
        self.backlog += nbytes
        return queue

    def enqueue(self, packet: bytes, now: float) -> None:
        flow = self.flow_of(packet)
        self._queue(flow, len(packet)).append((packet, now))
        if self._state.get(flow, IDLE) == IDLE:
            self._state[flow] = NEW
            self._deficit[flow] = self.quantum
            self._new.append(flow)
        if self.backlog > self.limit_bytes:
            self._shed()

    def _shed(self) -> None:
        """Over the memory limit: drop from the head of the longest queue until back under it."""
        fattest = max(self._bytes, key=self._bytes.__getitem__)
        queue = self._queues[fattest]
        while self.backlog > self.limit_bytes and queue:
            packet, _ = queue.popleft()
            self._bytes[fattest] -= len(packet)
            self.backlog -= len(packet)
            self.overflow_drops += 1

    def _head(self, flow: int, now: float) -> tuple[bytes, float] | None:
        """The flow's next packet after CoDel (which may drop some or mark the one it returns)."""
        queue = self._queues[flow]
        codel = self._codel.get(flow)
        if codel is None:
            codel = self._codel[flow] = CoDel(self.settings)
        while queue:
            packet, at = queue.popleft()
            self._bytes[flow] -= len(packet)
            self.backlog -= len(packet)
            if not codel.decide(now, now - at, self._bytes[flow] + len(packet)):
                return packet, at
            if self.settings.ecn:
                marked = bytearray(packet)
                if mark_ce(marked, self.offset):
                    self.marks += 1
                    return bytes(marked), at
            self.drops += 1
        return None

    def dequeue(self, now: float, budget: int) -> list[Item]:
        """Packets to send now, about ``budget`` bytes (at least one packet if any is queued)."""
        out: list[Item] = []
        taken = 0
        new, old, state, deficit = self._new, self._old, self._state, self._deficit
        while taken < budget:
            if new:
                lst = new
            elif old:
                lst = old
            else:
                break
            flow = lst[0]
            if deficit[flow] <= 0:
                deficit[flow] += self.quantum
                lst.popleft()
                old.append(flow)
                state[flow] = OLD
                continue
            head = self._head(flow, now)
            if head is None:
                lst.popleft()
                if lst is new and old:  # RFC 8290, 4.2: a new flow that empties goes to the old list
                    old.append(flow)
                    state[flow] = OLD
                else:
                    self._forget(flow)
                continue
            packet, at = head
            deficit[flow] -= len(packet)
            taken += len(packet)
            out.append((flow, packet, at))
        return out

    def _forget(self, flow: int) -> None:
        """An empty flow leaves the lists; its CoDel state goes too unless it is still dropping."""
        self._state[flow] = IDLE
        del self._queues[flow], self._bytes[flow]
        codel = self._codel.get(flow)
        if codel is not None and not codel.dropping:
            del self._codel[flow]

    def undo(self, items: list[Item]) -> None:
        """Put back packets ``dequeue`` returned that the socket did not take, in their order."""
        for flow, packet, at in reversed(items):
            self._queue(flow, len(packet)).appendleft((packet, at))
            self._deficit[flow] = self._deficit.get(flow, 0) + len(packet)
            if self._state.get(flow, IDLE) == IDLE:
                self._state[flow] = NEW
                self._new.appendleft(flow)
