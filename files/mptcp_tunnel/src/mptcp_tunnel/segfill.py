"""Full outer segments (sans-I/O): how much of a write the socket gets now.

A subflow sends what it is given as soon as its window allows, so every write ends in a partial
segment. A tunnel that the shaper or the gate paces (and the default byte bound, under bulk flows)
writes a few KB every few ms: its outer segments carried 1 020-1 130 bytes of payload against raw
MPTCP's 1 413 on the same links (lab, 28 Nov), and the headers of the partial segments took 4-6 %
of the line. The kernel cannot help: with Nagle or ``TCP_CORK`` a subflow holds its partial
segment until an ACK, while MPTCP's scheduler hands the next write to another subflow (measured:
5-12 Mbit/s instead of 13, and segments no fuller).

So while the stream is busy (a write within ``HOLD_S`` of the one before), a write of at least one
segment is cut at its last segment boundary and the rest, less than a segment, is held: it leads the
next write, or goes alone once it has waited ``HOLD_S``. A write smaller than a segment (a ping, an
inner ACK, a keepalive) goes at once, with whatever is held in front of it, and a stream that was
idle is never held: what waits is at most one segment, for at most ``HOLD_S``, behind bulk data.
Nor is a write cut while the socket holds data of its own (it did not take the last write whole):
the subflows build full segments from that.
"""

from __future__ import annotations

# A data segment carries MPTCP's DSS option besides what tcpi_snd_mss leaves out (the timestamps):
# data ACK and mapping, 28 bytes (1 448 -> 1 420 measured), 30 with checksums; padded, 32.
DSS_BYTES = 32
MIN_MSS = 536 + DSS_BYTES  # below it (or unknown): no cutting
# Paced writes come every 2-3 ms. Each held byte waits at most HOLD_S: 3 ms filled segments to 1 336-1 377
# bytes of payload in the lab, 5 ms to 1 389-1 412 (raw MPTCP 1 413), and the line differs by 0.2 %.
HOLD_S = 0.003
# Larger writes end in one partial segment per 11 or more (under 0.5 % of the line), and at line rate
# over unshaped links cutting every 64 KB write cost 1.5-3 x the CPU per byte on both agents (offload
# 5.0-6.2 -> 0.9-3.3 Gbit/s; results/segments-2026-11-28).
CUT_BELOW = 16 * 1024
# A hold timer that fires this close to the held bytes' due time sends them rather than re-arming.
DUE_SLACK_S = 0.0005


def segment_payload(mss: int) -> int:
    """Stream bytes that fill one data segment of a subflow whose ``tcpi_snd_mss`` is ``mss``
    (0: unknown)."""
    return mss - DSS_BYTES if mss >= MIN_MSS else 0


class SegmentFill:
    """Where to cut a write (``cut``) so that it ends on a segment boundary; ``wrote`` when the socket
    was offered bytes; ``held`` when the rest of a cut write was held, and ``due_in`` how long the oldest
    held byte may still wait; ``set_mss`` with the smallest MSS of the subflows that carry data."""

    def __init__(self, mss: int = 0) -> None:
        self.unit = segment_payload(mss)
        self._last = float("-inf")
        self._held_at = float("-inf")
        # The socket did not take all of the last write: it holds data of its own, from which the
        # subflows build full segments, so cutting would only add writes (and at line rate, cost).
        self._backlog = False

    def set_mss(self, mss: int) -> None:
        self.unit = segment_payload(mss)

    def wrote(self, now: float, backlog: bool = False) -> None:
        """The socket was offered bytes at ``now``; ``backlog``: it did not take them all."""
        self._last = now
        self._backlog = backlog

    def held(self, now: float) -> None:
        """Bytes are held from ``now`` (none were before: the held bytes lead every write)."""
        self._held_at = now

    def due_in(self, now: float) -> float:
        """Seconds the held bytes may still wait; 0: send them now."""
        wait = self._held_at + HOLD_S - now
        return wait if wait > DUE_SLACK_S else 0.0

    def cut(self, total: int, now: float) -> int:
        """Bytes of a ``total``-byte write (held bytes included) to hand the kernel now."""
        unit = self.unit
        if not unit or self._backlog or not unit <= total < CUT_BELOW or now - self._last >= HOLD_S:
            return total
        return total - total % unit
