"""PtoS batching manager (paper §4.2.2), sans-I/O.

Packets read from the TUN device are coalesced into one send. A batch is flushed when it reaches
``max_bytes`` or ``max_packets``, when its first packet has waited ``timeout_s``, or -- the rule that
keeps light load fast -- as soon as the TUN device has nothing more queued: a lone packet never waits
for a timeout when no other packet is behind it.
"""

from __future__ import annotations


class Batcher:
    def __init__(self, max_bytes: int, timeout_s: float, max_packets: int = 64) -> None:
        if max_bytes <= 0 or max_packets <= 0 or timeout_s < 0:
            raise ValueError("batch limits must be positive")
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.timeout_s = timeout_s
        self.bytes = 0
        self.packets = 0
        self._first_at = 0.0

    def add(self, nbytes: int, now: float) -> bool:
        """Account for one packet read at ``now``; True when the batch must be sent now."""
        if self.packets == 0:
            self._first_at = now
        self.packets += 1
        self.bytes += nbytes
        return (
            self.bytes >= self.max_bytes
            or self.packets >= self.max_packets
            or now - self._first_at >= self.timeout_s
        )

    def source_empty(self) -> bool:
        """The TUN device had nothing more to read: True when a partial batch must go now."""
        return self.packets > 0

    def flushed(self) -> None:
        self.bytes = 0
        self.packets = 0


def after_short_send(lengths: list[int], sent: int) -> tuple[int | None, int, int]:
    """A non-blocking send took only ``sent`` bytes of a batch of packets of ``lengths``.

    The stream must stay whole, so a packet the kernel took part of is finished; the packets behind
    it are dropped (tail drop, like a router whose queue is full). Returns ``(cut, offset,
    first_dropped)``: packet ``cut`` (None if no packet was cut) must still be sent from ``offset``;
    packets from ``first_dropped`` on are dropped.
    """
    start = 0
    for i, n in enumerate(lengths):
        if sent < start + n:
            if sent > start:
                return i, sent - start, i + 1
            return None, 0, i
        start += n
    return None, 0, len(lengths)
