"""The shaper's rates from the links that carry traffic (sans-I/O): ``cpe.shape_share``.

A fixed ``tunnel.shape_mbit`` keeps the queue in the agent's flow queues only while every link runs at
its declared rate: when the fixed link fails, a shaper still set for both links lets cellular's buffer
fill again. With ``cpe.shape_share`` the CPE shapes at that share of the declared rates of the links
that carry traffic now (up, and not standing by while another link carries it), upstream itself and
downstream by telling the BGW (a SHAPE_RATE control frame, which older BGWs skip).

The share is of the line, which carries more than the tunnel's stream: every outer segment's headers,
and the pure ACKs of the other direction (under 8 upload flows the cellular link also carries the
outer ACKs of their inner ACKs: with a fixed share of the stream rate that left a growing queue in
the link's buffer, lab 28 Nov). ``Overhead`` learns, in each direction, the line's bytes per stream
byte from the subflows' counters (payload plus ``SEGMENT_BYTES`` per segment, ACKs included) while
the shaper is busy, and the stream rate is the line's share divided by it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mptcp_tunnel.config import Link

RATE_FORMAT = struct.Struct("!I")
MAX_KBIT = 2**32 - 1
# A segment's bytes on the line besides its payload: IPv4 20, TCP 20, timestamps 12, MPTCP's DSS
# option (~12-20 on data, 12 on ACKs), an Ethernet header 14. IPv6: 20 more.
SEGMENT_BYTES = 80
SEGMENT_BYTES_V6 = 100
DEFAULT_OVERHEAD = 1.06  # line bytes per stream byte before a measurement: full-size segments
OVERHEAD_RANGE = (1.0, 1.5)  # a sample outside is clamped
BUSY_SHARE = 0.5  # a window counts when the stream ran at half the shaper's rate or more
SMOOTHING = 0.5  # weight of a new sample (one a second)
RESHAPE_AT = 0.02  # rates that move less keep the old ones (no SHAPE_RATE every second)


@dataclass(frozen=True)
class ShapeRates:
    up_bps: float
    down_bps: float
    links: tuple[str, ...]  # the links whose rates were summed

    def describe(self) -> str:
        return (
            f"up {self.up_bps / 1e6:.2f} Mbit/s, down {self.down_bps / 1e6:.2f} Mbit/s"
            f" ({' + '.join(self.links)})"
        )


def carrying(links: Sequence[Link], up: Callable[[str], bool], standby: Callable[[Link], bool]) -> list[Link]:
    """The links that carry traffic: up and not standing by; if every link that is up stands by, those
    (a backup link takes over). Empty while every link is down."""
    alive = [link for link in links if up(link.name)]
    return [link for link in alive if not standby(link)] or alive


def rates(
    links: Sequence[Link], share: float, up_overhead: float = 1.0, down_overhead: float = 1.0
) -> ShapeRates | None:
    """The stream rates that put ``share`` of the links' declared rates (``rate_mbit`` up,
    ``rate_down_mbit`` down) on the line; None for no links: nothing flows, the last rates stand."""
    if not links:
        return None
    return ShapeRates(
        up_bps=share * sum(link.rate_mbit for link in links) * 1e6 / up_overhead,
        down_bps=share * sum(link.rate_down_mbit or link.rate_mbit for link in links) * 1e6 / down_overhead,
        links=tuple(link.name for link in links),
    )


def moved(old: ShapeRates | None, new: ShapeRates) -> bool:
    """Whether ``new`` should replace ``old``: other links, or a rate that moved by RESHAPE_AT."""
    if old is None or old.links != new.links:
        return True
    return any(
        abs(b - a) > RESHAPE_AT * a for a, b in ((old.up_bps, new.up_bps), (old.down_bps, new.down_bps))
    )


def line_bytes(payload: int, segments: int, ipv6: bool) -> int:
    """A subflow's bytes on the line from its payload and segment counters."""
    return payload + segments * (SEGMENT_BYTES_V6 if ipv6 else SEGMENT_BYTES)


class Overhead:
    """Line bytes per stream byte in one direction, learned from totals sampled once a tick."""

    def __init__(self) -> None:
        self.factor = DEFAULT_OVERHEAD
        self._last: tuple[int, int] | None = None  # (line, stream) at the last sample

    def restart(self) -> None:
        """The totals start anew (a new session): the next sample is a base only."""
        self._last = None

    def sample(self, line: int, stream: int, busy_bytes: float) -> None:
        """``line``: every subflow's bytes on the line; ``stream``: the tunnel's. A window counts when
        the stream moved ``busy_bytes`` or more (else the shaper did not matter in it)."""
        last, self._last = self._last, (line, stream)
        if last is None:
            return
        d_line, d_stream = line - last[0], stream - last[1]
        if d_stream < busy_bytes or d_line <= 0:  # idle, or a subflow and its counters went away
            return
        low, high = OVERHEAD_RANGE
        self.factor += SMOOTHING * (min(high, max(low, d_line / d_stream)) - self.factor)


def encode_rate(bps: float) -> bytes:
    return RATE_FORMAT.pack(min(MAX_KBIT, max(0, round(bps / 1000))))


def decode_rate(payload: bytes) -> float | None:
    """The rate a peer asked for, bits/s (0: its own setting), or None if the payload is malformed."""
    if len(payload) != RATE_FORMAT.size:
        return None
    kbit: int = RATE_FORMAT.unpack(payload)[0]
    return kbit * 1000.0


def peer_rate(asked_bps: float, configured_bps: float) -> float:
    """The rate a session shapes at when its peer asked for ``asked_bps``: the configured rate is the
    operator's ceiling (0: none), and 0 asks for the configured rate itself."""
    if asked_bps <= 0:
        return configured_bps
    return min(asked_bps, configured_bps) if configured_bps > 0 else asked_bps
