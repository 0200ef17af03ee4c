"""Active queue management for the tunnel's own queue (sans-I/O): CoDel on sojourn time, ECN aware.

The tunnel's queue is the unsent data in the MPTCP socket (bounded in bytes by
``TCP_NOTSENT_LOWAT``) and in its subflows' send buffers: packets wait there until a subflow's
congestion window lets them out. A byte bound
is the wrong measure on a link whose rate varies or that has just (re)connected and is still in slow
start: too much standing delay at a low rate, too little room for a burst at a high one. CoDel
(RFC 8289) measures how long the data at the head of that queue has waited and acts only when that
sojourn time has stayed above ``target`` for a whole ``interval``: bursts pass, a standing queue is
drained by dropping (or ECN-marking) one packet at increasing frequency until it goes away.

Two parts, both without I/O:

- :class:`SojournClock` turns what the session knows - the bytes it has written (with the time of
  each write), the bytes the kernel still holds (``SIOCOUTQ``) and the paths' RTT - into the
  head's sojourn.
- :class:`CoDel` is RFC 8289's state machine, asked once per batch the session is about to write:
  ``True`` means "drop or mark one packet of this batch". Deciding at enqueue with the head's sojourn
  (as PIE and Linux's fq_codel on a hardware queue do in effect) is equivalent for the sender: the
  signal reaches the inner flow one queue-length earlier, not later.

:func:`mark_ce` sets ECN CE on an ECN-capable inner IPv4/IPv6 packet, as any router may.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

MTU_BYTES = 1500  # below one packet of backlog there is no queue to manage (RFC 8289, 4.2)
# Data that old waits for a path that stopped (a blackholed subflow's data awaiting reinjection),
# not in a queue: dropping inner packets cannot drain it, and a CoDel that had kept dropping would
# go on starving the flows on the surviving link after the failover.
STALLED_S = 1.0


@dataclass(frozen=True)
class AqmSettings:
    target_s: float = 0.005
    interval_s: float = 0.100
    ecn: bool = True  # mark ECN-capable inner packets (CE) instead of dropping them
    # "codel": one CoDel on the kernel's send queues; "fq_codel": flow queues in userspace (fqcodel.py)
    kind: str = "codel"
    limit_bytes: int = 4 * 1024 * 1024  # fq_codel: memory bound of the userspace queue, per session


class SojournClock:
    """How long data has waited in the kernel's send queues before it went out.

    ``wrote(nbytes, now)`` after each write; ``sojourn(now, outstanding, path_s)`` with the bytes the
    kernel still holds at the connection level (``SIOCOUTQ``: sent but not yet data-acked, plus
    unsent) and the paths' round-trip time. The oldest outstanding byte has been in the kernel for
    its wait in the connection's and the subflows' send queues plus one round trip; minus the round
    trip, what remains is the queue's sojourn time. Entries the peer has acknowledged are forgotten,
    so memory is bounded by the writes in flight.
    """

    def __init__(self) -> None:
        self.written = 0
        self._writes: deque[tuple[int, float]] = deque()

    def wrote(self, nbytes: int, now: float) -> None:
        if nbytes <= 0:
            return
        self.written += nbytes
        writes = self._writes
        if writes and writes[-1][1] == now:  # same instant: one entry
            writes[-1] = (self.written, now)
        else:
            writes.append((self.written, now))

    def sojourn(self, now: float, outstanding: int, path_s: float = 0.0) -> float:
        done_upto = self.written - max(0, min(outstanding, self.written))
        writes = self._writes
        while writes and writes[0][0] <= done_upto:
            writes.popleft()
        return max(0.0, now - writes[0][1] - path_s) if writes else 0.0


class CoDel:
    """RFC 8289's control law, one decision per batch (``True``: drop or mark one packet now)."""

    def __init__(self, settings: AqmSettings) -> None:
        self.settings = settings
        self.dropping = False
        self.count = 0
        self._last_count = 0
        self._first_above = 0.0  # 0 = sojourn below target
        self._drop_next = 0.0
        self.signals = 0  # drops + marks decided so far

    def _control_law(self, t: float) -> float:
        return t + self.settings.interval_s / math.sqrt(self.count)

    def _ok_to_drop(self, now: float, sojourn: float, backlog: int) -> bool:
        s = self.settings
        if sojourn < s.target_s or backlog <= MTU_BYTES:
            self._first_above = 0.0
            return False
        if self._first_above == 0.0:
            self._first_above = now + s.interval_s
            return False
        return now >= self._first_above

    def decide(self, now: float, sojourn: float, backlog: int) -> bool:
        if sojourn >= STALLED_S:  # a stalled path, not a queue: start afresh once it moves again
            self.dropping = False
            self.count = self._last_count = 0
            self._first_above = 0.0
            return False
        ok = self._ok_to_drop(now, sojourn, backlog)
        if self.dropping:
            if not ok:
                self.dropping = False
                return False
            if now >= self._drop_next:
                self.count += 1
                self._drop_next = self._control_law(self._drop_next)
                self.signals += 1
                return True
            return False
        if not ok:
            return False
        self.dropping = True
        delta = self.count - self._last_count
        # re-entering soon after the last episode: resume near the old rate (RFC 8289, 5.4)
        if delta > 1 and now - self._drop_next < 16 * self.settings.interval_s:
            self.count = delta
        else:
            self.count = 1
        self._last_count = self.count
        self._drop_next = self._control_law(now)
        self.signals += 1
        return True


def ecn_capable(packet: memoryview | bytearray, offset: int = 0) -> bool:
    """True if the IPv4/IPv6 packet at ``offset`` is ECT(0), ECT(1) or already CE."""
    if len(packet) < offset + 2:
        return False
    version = packet[offset] >> 4
    if version == 4:
        return packet[offset + 1] & 0x03 != 0
    if version == 6:
        return (packet[offset + 1] >> 4) & 0x03 != 0
    return False


def mark_ce(packet: memoryview | bytearray, offset: int = 0) -> bool:
    """Set ECN CE on an ECN-capable packet in place (IPv4: header checksum updated, RFC 1624).

    Returns False (nothing changed) for a Not-ECT or non-IP packet, which the caller drops instead.
    """
    if not ecn_capable(packet, offset):
        return False
    if packet[offset] >> 4 == 6:
        packet[offset + 1] |= 0x30
        return True
    if len(packet) < offset + 20:
        return False
    old = (packet[offset] << 8) | packet[offset + 1]
    packet[offset + 1] |= 0x03
    new = (packet[offset] << 8) | packet[offset + 1]
    # HC' = ~(~HC + ~m + m')
    hc = (packet[offset + 10] << 8) | packet[offset + 11]
    total = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    hc = ~total & 0xFFFF
    packet[offset + 10] = hc >> 8
    packet[offset + 11] = hc & 0xFF
    return True
