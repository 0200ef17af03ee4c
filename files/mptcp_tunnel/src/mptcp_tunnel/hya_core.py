"""HYA baseline mode, sans-I/O core (paper §6.3: the network-layer scheme we compare against).

HYA bonds access links below the transport: every inner IP packet is encapsulated on its own
(here in UDP, this kernel has no GRE), numbered with a tunnel sequence number and sent over ONE
link chosen by a proportional scheduler (ratio fixed:cellular, e.g. 1:1 or 2:1). The receiver
puts packets back in tunnel order with a JUGGLER-style reorder buffer: an out-of-order packet
waits at most ``ooo_timeout`` for the hole below it (then the hole is declared lost and skipped),
and in-order packets are held at most ``inseq_timeout`` so they leave in batches.

Nothing here touches a socket or a clock: callers pass ``now`` (seconds, monotonic) and get
back what to send or deliver, plus the next deadline at which to call again.

Wire format of one datagram (big-endian, 8 bytes, then the inner IP packet untouched)::

    0      1      2             4                           8
    +------+------+-------------+---------------------------+------------------
    | 0xA7 | type |   epoch     |        sequence           |  inner packet ...
    +------+------+-------------+---------------------------+------------------

``type`` 0 = data, 1 = probe (no payload, keeps NAT/conntrack state and lets the peer learn the
link is alive). ``epoch`` is chosen at random by each sender at start; a new epoch tells the
receiver the peer restarted and its sequence numbers start over. The 32-bit sequence wraps and is
extended to 64 bits on receipt (serial-number arithmetic, RFC 1982).
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from mptcp_tunnel.config import ConfigError

MAGIC = 0xA7
HEADER = struct.Struct("!BBHI")
HEADER_LEN = HEADER.size
SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
# Outer IPv4 (20) + UDP (8) + our header: what a link's MTU loses per inner packet.
OUTER_OVERHEAD_V4 = 20 + 8 + HEADER_LEN


class FrameType(IntEnum):
    DATA = 0
    PROBE = 1


class HyaFrameError(ValueError):
    """A datagram that is not a valid HYA frame (the caller counts it and drops it)."""


@dataclass(frozen=True)
class HyaFrame:
    kind: FrameType
    epoch: int
    seq: int  # 32-bit wire sequence
    payload: bytes


def encode(kind: FrameType, epoch: int, seq: int, payload: bytes = b"") -> bytes:
    """One datagram: header + payload. ``seq`` is taken modulo 2**32."""
    return HEADER.pack(MAGIC, int(kind), epoch & 0xFFFF, seq % SEQ_MOD) + payload


def decode(datagram: bytes) -> HyaFrame:
    """Parse one datagram; raise :class:`HyaFrameError` with a short reason if invalid."""
    if len(datagram) < HEADER_LEN:
        raise HyaFrameError("short")
    magic, kind, epoch, seq = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise HyaFrameError("magic")
    if kind not in (FrameType.DATA, FrameType.PROBE):
        raise HyaFrameError("type")
    payload = bytes(datagram[HEADER_LEN:])
    if kind == FrameType.DATA and not payload:
        raise HyaFrameError("empty")
    return HyaFrame(FrameType(kind), epoch, seq, payload)


# --------------------------------------------------------------------------- scheduler


class ProportionalScheduler:
    """Byte-proportional link choice with fixed weights (HYA's "proportional scheduling").

    Each packet goes to the link whose share, counted in bytes and including this packet, stays
    lowest relative to its weight (a smooth weighted round robin on bytes). Over any stretch of
    traffic each link's byte count stays within one packet of ``weight / sum(weights)``.
    Links can be marked down; their weight is then ignored until they come back.
    """

    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.weights = tuple(int(w) for w in weights)
        self.sent = [0] * len(self.weights)
        self.up = [True] * len(self.weights)

    def set_up(self, link: int, up: bool) -> None:
        self.up[link] = up

    def pick(self, size: int) -> int:
        """Choose the link for a packet of ``size`` bytes and account for it."""
        best = -1
        best_score = 0.0
        for i, w in enumerate(self.weights):
            if w == 0 or not self.up[i]:
                continue
            score = (self.sent[i] + size) / w
            if best < 0 or score < best_score:
                best, best_score = i, score
        if best < 0:  # every weighted link is down: use any link that is up, else the first
            best = next((i for i, u in enumerate(self.up) if u), 0)
        self.sent[best] += size
        low = min(self.sent)
        if low > 1 << 40:  # keep the counters small; only differences matter
            self.sent = [s - low for s in self.sent]
        return best


# --------------------------------------------------------------------------- reorder buffer


@dataclass
class ReorderStats:
    delivered: int = 0
    in_order: int = 0
    reordered: int = 0  # arrived ahead of a hole and waited for it
    late: int = 0  # arrived after its hole was given up: delivered at once
    duplicates: int = 0
    lost: int = 0  # sequence numbers skipped after the out-of-order timeout
    overflow_skips: int = 0  # holes skipped because the buffer was full
    resyncs: int = 0  # sequence jumps too large to be reordering


@dataclass
class ReorderBuffer:
    """JUGGLER-style reorder buffer over 64-bit (extended) sequence numbers.

    - A packet with the expected sequence number joins the in-order batch, together with every
      held packet that now follows on without a hole.
    - A packet above a hole is held. No packet is held longer than ``ooo_timeout``: once the
      oldest held packet has waited that long, every hole below it is declared lost and skipped.
    - In-order packets wait at most ``inseq_timeout`` (or until ``max_batch`` are queued, or the
      caller flushes because its input ran dry) and leave as one batch.
    - A packet below the expected number (its hole was already skipped) is delivered at once:
      for the inner TCP it fills a hole, which beats a retransmission.
    """

    ooo_timeout: float = 0.010
    inseq_timeout: float = 0.001
    max_held: int = 4096
    max_batch: int = 64
    resync_window: int = 1 << 20
    stats: ReorderStats = field(default_factory=ReorderStats)
    expected: int | None = None
    _held: dict[int, tuple[float, bytes]] = field(default_factory=dict)
    _by_arrival: list[tuple[float, int]] = field(default_factory=list)
    _batch: list[bytes] = field(default_factory=list)
    _batch_since: float | None = None
    _out: list[bytes] = field(default_factory=list)
    _highest: int = -1

    # ---- sequence extension
    def extend(self, seq32: int) -> int:
        """Map a 32-bit wire sequence to the 64-bit sequence nearest the current position."""
        if self._highest < 0:
            return seq32  # nothing seen yet: the first packet defines the position
        ref = self._highest
        diff = (seq32 - ref) % SEQ_MOD
        if diff >= SEQ_HALF:
            diff -= SEQ_MOD
        return max(ref + diff, 0)

    @property
    def held(self) -> int:
        return len(self._held)

    def reset(self) -> None:
        """Forget all state (the peer restarted). Pending packets are dropped."""
        self.expected = None
        self._held.clear()
        self._by_arrival.clear()
        self._batch.clear()
        self._batch_since = None
        self._highest = -1

    # ---- input
    def push(self, seq: int, packet: bytes, now: float) -> None:
        """Accept one packet with its (extended) sequence number."""
        if self.expected is None:
            self.expected = seq
        self._highest = max(self._highest, seq)
        if seq < self.expected:
            if seq in self._held:
                self.stats.duplicates += 1
                return
            self.stats.late += 1
            self._emit_now([packet])
            return
        if seq > self.expected + self.resync_window:
            # Far beyond anything reordering explains: flush what we have and restart there.
            self.stats.resyncs += 1
            self._release_all(now)
            self.expected = seq
        if seq == self.expected:
            self.stats.in_order += 1
            self._queue(packet, now)
            self.expected += 1
            self._drain_contiguous(now)
            return
        if seq in self._held:
            self.stats.duplicates += 1
            return
        self._held[seq] = (now, packet)
        heapq.heappush(self._by_arrival, (now, seq))
        if len(self._held) > self.max_held:
            self.stats.overflow_skips += 1
            self._skip_to_lowest(now)

    # ---- output
    def poll(self, now: float, flush: bool = False) -> list[bytes]:
        """Packets to deliver now, in order. ``flush`` releases the in-order batch at once."""
        self._expire(now)
        if self._batch and (
            flush
            or len(self._batch) >= self.max_batch
            # same expression as next_deadline(): polling at the deadline always makes progress
            or (self._batch_since is not None and now >= self._batch_since + self.inseq_timeout)
        ):
            self._emit_batch()
        out, self._out = self._out, []
        self.stats.delivered += len(out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`poll` has something to do, or None when idle."""
        deadlines: list[float] = []
        if self._batch_since is not None:
            deadlines.append(self._batch_since + self.inseq_timeout)
        arrival = self._oldest_arrival()
        if arrival is not None:
            deadlines.append(arrival + self.ooo_timeout)
        return min(deadlines) if deadlines else None

    # ---- internals
    def _queue(self, packet: bytes, now: float) -> None:
        if self._batch_since is None:
            self._batch_since = now
        self._batch.append(packet)

    def _emit_batch(self) -> None:
        self._out.extend(self._batch)
        self._batch = []
        self._batch_since = None

    def _emit_now(self, packets: list[bytes]) -> None:
        # Keep ordering: whatever is already batched goes first.
        self._emit_batch()
        self._out.extend(packets)

    def _drain_contiguous(self, now: float) -> None:
        assert self.expected is not None
        while self.expected in self._held:
            _, packet = self._held.pop(self.expected)
            self.stats.reordered += 1
            self._queue(packet, now)
            self.expected += 1

    def _oldest_arrival(self) -> float | None:
        while self._by_arrival:
            arrival, seq = self._by_arrival[0]
            held = self._held.get(seq)
            if held is not None and held[0] == arrival:
                return arrival
            heapq.heappop(self._by_arrival)  # stale: delivered already
        return None

    def _skip_to_lowest(self, now: float) -> None:
        assert self.expected is not None
        lowest = min(self._held)
        self.stats.lost += lowest - self.expected
        self.expected = lowest
        self._drain_contiguous(now)

    def _expire(self, now: float) -> None:
        while True:
            arrival = self._oldest_arrival()
            if arrival is None or now < arrival + self.ooo_timeout:
                return
            self._skip_to_lowest(now)

    def _release_all(self, now: float) -> None:
        while self._held:
            self._skip_to_lowest(now)


# --------------------------------------------------------------------------- endpoints


class HyaSender:
    """Numbers packets and spreads them over the links by the proportional scheduler."""

    def __init__(self, weights: Sequence[int], epoch: int) -> None:
        self.scheduler = ProportionalScheduler(weights)
        self.epoch = epoch & 0xFFFF
        self.seq = 0

    def send(self, packet: bytes) -> tuple[int, bytes]:
        """Return (link index, datagram) for one inner packet."""
        link = self.scheduler.pick(len(packet) + OUTER_OVERHEAD_V4)
        datagram = encode(FrameType.DATA, self.epoch, self.seq, packet)
        self.seq = (self.seq + 1) % SEQ_MOD
        return link, datagram

    def probe(self) -> bytes:
        return encode(FrameType.PROBE, self.epoch, self.seq)


class HyaReceiver:
    """Decodes datagrams from any link and restores tunnel order."""

    def __init__(self, ooo_timeout: float, inseq_timeout: float, max_held: int = 4096) -> None:
        self.buffer = ReorderBuffer(ooo_timeout=ooo_timeout, inseq_timeout=inseq_timeout, max_held=max_held)
        self.epoch: int | None = None
        self.errors: dict[str, int] = {}
        self.epoch_changes = 0

    def receive(self, datagram: bytes, now: float) -> FrameType | None:
        """Feed one datagram; returns its type, or None when it was invalid (and counted)."""
        try:
            frame = decode(datagram)
        except HyaFrameError as exc:
            reason = str(exc)
            self.errors[reason] = self.errors.get(reason, 0) + 1
            return None
        if frame.epoch != self.epoch:
            if self.epoch is not None:
                self.epoch_changes += 1
            self.buffer.reset()
            self.epoch = frame.epoch
        if frame.kind == FrameType.DATA:
            seq = self.buffer.extend(frame.seq)
            if self.buffer.expected is None and seq < self.buffer.max_held:
                # A sender numbers each epoch from 0, so a small first number means the
                # packets below it are still in flight on the other link: wait for them
                # (at most ooo_timeout) rather than deliver them late and out of order.
                self.buffer.expected = 0
            self.buffer.push(seq, frame.payload, now)
        return frame.kind

    def poll(self, now: float, flush: bool = False) -> list[bytes]:
        return self.buffer.poll(now, flush)

    def next_deadline(self) -> float | None:
        return self.buffer.next_deadline()


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class HyaLink:
    """One access link of the HYA tunnel: our address on it and the peer's."""

    local: str
    remote: str


@dataclass(frozen=True)
class HyaSettings:
    """The ``hya:`` section of the agent's config (used when ``mode: hya``)."""

    ratio_fixed: int = 1
    ratio_cellular: int = 1
    ooo_timeout_ms: float = 10.0
    inseq_timeout_ms: float = 1.0
    port: int = 7441
    links: tuple[HyaLink, ...] = ()
    tun_mtu: int | None = None  # None: the tunnel MTU minus the outer headers
    max_held: int = 4096

    @property
    def weights(self) -> tuple[int, ...]:
        """Scheduler weights per link, in ``links`` order: first fixed, the rest cellular."""
        return tuple(self.ratio_fixed if i == 0 else self.ratio_cellular for i in range(len(self.links)))

    def effective_tun_mtu(self, tunnel_mtu: int) -> int:
        if self.tun_mtu is not None:
            return self.tun_mtu
        return tunnel_mtu - OUTER_OVERHEAD_V4


_HYA_KEYS = {
    "ratio",
    "ooo_timeout_ms",
    "inseq_timeout_ms",
    "port",
    "links",
    "tun_mtu",
    "max_held",
}


def _number(raw: dict[str, object], key: str, where: str, default: float, low: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if value < low:
        raise ConfigError(f"{where}.{key}: must be >= {low}, got {value!r}")
    return float(value)


def _int(raw: dict[str, object], key: str, where: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be in {low}..{high}, got {value}")
    return value


def _ratio(value: object, where: str) -> tuple[int, int]:
    parts: list[object]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(":")]
    elif isinstance(value, list):
        parts = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 2:1 as the base-60 integer 121.
        raise ConfigError(f'{where}.ratio: write it quoted ("2:1") or as a list [2, 1]')
    else:
        raise ConfigError(f'{where}.ratio: expected "fixed:cellular", got {value!r}')
    if len(parts) != 2:
        raise ConfigError(f"{where}.ratio: expected two parts fixed:cellular, got {value!r}")
    out: list[int] = []
    for p in parts:
        if isinstance(p, str) and p.isdigit():
            p = int(p)
        if isinstance(p, bool) or not isinstance(p, int) or p < 0 or p > 1000:
            raise ConfigError(f"{where}.ratio: parts must be integers 0..1000, got {value!r}")
        out.append(p)
    if out[0] + out[1] == 0:
        raise ConfigError(f"{where}.ratio: at least one part must be positive")
    return out[0], out[1]


def _address(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an IPv4 address, got {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"{where}: not an IPv4 address: {value!r}") from None


def parse_hya(raw: dict[str, object], where: str) -> HyaSettings:
    """Validate the ``hya:`` mapping; raise ConfigError naming the key on bad input.

    Keys: ``ratio`` ("F:C" or [F, C], default 1:1), ``ooo_timeout_ms`` (10), ``inseq_timeout_ms``
    (1), ``port`` (UDP, 7441), ``links`` (list of {local, remote} IPv4 address pairs, first =
    fixed; required), ``tun_mtu`` (default tunnel.mtu - 36), ``max_held`` (4096).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in raw if k not in _HYA_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key")
    fixed, cellular = _ratio(raw.get("ratio", "1:1"), where)
    ooo = _number(raw, "ooo_timeout_ms", where, 10.0, 0.0)
    inseq = _number(raw, "inseq_timeout_ms", where, 1.0, 0.0)
    port = _int(raw, "port", where, 1, 65535)
    tun_mtu = _int(raw, "tun_mtu", where, 576, 65000)
    max_held = _int(raw, "max_held", where, 16, 1 << 20)
    links_raw = raw.get("links")
    if not isinstance(links_raw, list) or not links_raw:
        raise ConfigError(f"{where}.links: expected a non-empty list of {{local, remote}}")
    links: list[HyaLink] = []
    for i, item in enumerate(links_raw):
        here = f"{where}.links[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{here}: expected a mapping with local and remote")
        extra = sorted(str(k) for k in item if k not in ("local", "remote"))
        if extra:
            raise ConfigError(f"{here}.{extra[0]}: unknown key")
        for key in ("local", "remote"):
            if key not in item:
                raise ConfigError(f"{here}.{key}: missing")
        links.append(
            HyaLink(_address(item["local"], f"{here}.local"), _address(item["remote"], f"{here}.remote"))
        )
    if len({link.local for link in links}) != len(links):
        raise ConfigError(f"{where}.links: local addresses must differ")
    return HyaSettings(
        ratio_fixed=fixed,
        ratio_cellular=cellular,
        ooo_timeout_ms=ooo,
        inseq_timeout_ms=inseq,
        port=port if port is not None else 7441,
        links=tuple(links),
        tun_mtu=tun_mtu,
        max_held=max_held if max_held is not None else 4096,
    )
