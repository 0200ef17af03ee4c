"""One CPE's tunnel as a state machine driven by an event loop: TUN fd <-> MPTCP stream, non-blocking.

PtoS: when the TUN device is readable, read packets into the worker's shared batch buffer until it is
empty or the batch is full (``Batcher``), then one ``sendmsg``. StoP: when the socket is readable,
receive into the worker's shared receive buffer behind the session's partial frame, split it into frames
(``split_frames``) and write each packet to the TUN device. A session keeps only its partial frames and
counters; buffers belong to the worker (``Buffers``), so a session costs a few hundred bytes of Python
plus its kernel socket.

Every TUN fd carries a virtio-net header. With offload negotiated (``vnet``), the header rides in the
stream in front of each frame, and GSO super-packets cross the tunnel whole; without it, the header is
stripped on read and a zero header is written in front of each packet on write.

The record layer: ``_send_stream`` and ``_recv_stream`` are the only places that touch the socket's
bytes. With TLS (``tls.TlsChannel``, memory BIOs) one batch is one ``write``: a lone packet becomes one
small record (no added latency), a bulk batch full 16 KiB records. Keepalives ride inside TLS too.

Stream health: a stream whose bytes keep arriving but that yields no complete frame for
DEAD_AFTER_KEEPALIVES keepalive intervals is out of step (e.g. ``GET / HTTP/1.1`` read as an IPv4
header of 21 536 bytes); the session ends with ``stream_stalled``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from mptcp_tunnel import shaping
from mptcp_tunnel.ackclock import AckClock
from mptcp_tunnel.aqm import CoDel, SojournClock, mark_ce
from mptcp_tunnel.batching import Batcher, after_short_send
from mptcp_tunnel.config import TunnelSettings
from mptcp_tunnel.engine.loop import ERR, IN, OUT, EventLoop
from mptcp_tunnel.fqcodel import FlowQueues, Item, KernelGate
from mptcp_tunnel.framing import ControlFrame, ControlType, FrameError, encode_control, split_frames
from mptcp_tunnel.loglimit import LogLimiter
from mptcp_tunnel.mptcp import (
    MptcpFallback,
    MptcpInfo,
    SubflowInfo,
    established,
    mptcp_info,
    pin_send_buffer,
    restart_bbr,
    send_mss,
    subflow_infos,
    subflow_windows,
    unacked_bytes,
    unsent_bytes,
    wmem_max,
)
from mptcp_tunnel.segfill import HOLD_S, SegmentFill
from mptcp_tunnel.srcfilter import SourceFilter
from mptcp_tunnel.tls import TlsChannel, TlsError
from mptcp_tunnel.tun import VNET_F_NEEDS_CSUM, VNET_HDR_LEN, set_offload

log = logging.getLogger("mptcp_tunnel.session")

DEAD_AFTER_KEEPALIVES = 3
MAX_BATCH_PACKETS = 64
RECV_BUDGET = 2  # socket reads per readiness event: a busy session yields after these
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
MAX_SUPER_PACKET = 65535
GATE_POLL_S = 0.002  # fq_codel: how soon a session the gate stopped looks at the kernel again
CC_RESTART_EVERY_S = 1.0  # a peer's PATH_CHANGE frames restart our congestion control at most this often
# A peer's SHAPE_RATE changes are logged at most this many per SHAPE_LOG_PERIOD_S (a flood is not; the
# metric counts every change)
SHAPE_LOG_BURST = 5
SHAPE_LOG_PERIOD_S = 5.0
RTT_AFTER_BYTES = 65536  # an idle session's RTT is not read (no syscalls for 10 000 idle CPEs)
ZERO_VNET = bytes(VNET_HDR_LEN)
_unbounded_warned = False  # the kernel without TCP_NOTSENT_LOWAT on MPTCP is reported once

# Counter slots of a session (Session.stats); the worker reports their deltas.
(
    TX_PACKETS,
    TX_BYTES,
    RX_PACKETS,
    RX_BYTES,
    BATCHES,
    SPOOFED,
    QUEUE_DROPS,
    TUN_ERRORS,
    TUN_READS,
    TUN_READ_BYTES,
    TUN_WRITES,
    TUN_WRITE_BYTES,
    STALE_GSO_DROPS,
    AQM_DROPS,
    AQM_MARKS,
    CC_RESTARTS,
    SHAPE_CHANGES,
) = range(17)
STAT_NAMES = (
    "tx_packets",
    "tx_bytes",
    "rx_packets",
    "rx_bytes",
    "batches",
    "spoofed",
    "queue_drops",
    "tun_errors",
    "tun_reads",
    "tun_read_bytes",
    "tun_writes",
    "tun_write_bytes",
    "stale_gso_drops",
    "aqm_drops",
    "aqm_marks",
    "cc_restarts",
    "shape_changes",
)


def _prefix(parts: list[memoryview], nbytes: int) -> list[memoryview]:
    """The first ``nbytes`` of ``parts``."""
    out: list[memoryview] = []
    for p in parts:
        if nbytes <= 0:
            break
        out.append(p if len(p) <= nbytes else p[:nbytes])
        nbytes -= len(p)
    return out


def _suffix(parts: list[memoryview], nbytes: int) -> list[memoryview]:
    """The last ``nbytes`` of ``parts``."""
    out: list[memoryview] = []
    for p in reversed(parts):
        if nbytes <= 0:
            break
        out.append(p if len(p) <= nbytes else p[len(p) - nbytes :])
        nbytes -= len(p)
    out.reverse()
    return out


def _fitting(lengths: list[int], room: int) -> int:
    """How many packets of a batch fit in ``room`` bytes (at least one while there is any room)."""
    total = 0
    for i, n in enumerate(lengths):
        total += n
        if total > room:
            return i if i or room <= 0 else 1
    return len(lengths)


class Buffers:
    """Per-worker buffers shared by all its sessions (a loop runs one handler at a time)."""

    def __init__(self, batch_bytes: int) -> None:
        self.tx = bytearray(batch_bytes + MAX_SUPER_PACKET + VNET_HDR_LEN)
        self.tx_view = memoryview(self.tx)
        # A partial frame (<= 64 KiB + header) is moved in front of each receive.
        self.rx = bytearray(2 * (MAX_SUPER_PACKET + VNET_HDR_LEN) + 262144)
        self.rx_view = memoryview(self.rx)
        self._tls_in: memoryview | None = None

    @property
    def tls_in(self) -> memoryview:
        """Ciphertext lands here before decryption (allocated by the first TLS session)."""
        if self._tls_in is None:
            self._tls_in = memoryview(bytearray(len(self.rx)))
        return self._tls_in


class Session:
    def __init__(
        self,
        loop: EventLoop,
        buffers: Buffers,
        sock: socket.socket,
        tun_fd: int,
        cpe_id: str,
        tunnel: TunnelSettings,
        *,
        vnet: bool,
        keepalives: bool = True,
        acked_liveness: bool = False,
        source_filter: SourceFilter | None,
        owns_tun: bool,
        on_end: Callable[[Session], None],
        generation: int = 0,
        dirty: set[Session] | None = None,
        tls: TlsChannel | None = None,
        rx_tail: bytes = b"",
        shape_mbit: float | None = None,
    ) -> None:
        self.loop = loop
        self.buffers = buffers
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.tun_fd = tun_fd
        self.cpe_id = cpe_id
        self.tunnel = tunnel
        self.vnet = vnet
        self.stream_hdr = VNET_HDR_LEN if vnet else 0
        # QUIET_BGW: the BGW sends no keepalives (``keepalives`` False there); the CPE counts the
        # BGW's data-level ACKs of what it sent as hearing from it (``acked_liveness``).
        self.keepalives = keepalives
        self.acked_liveness = acked_liveness
        self.source_filter = source_filter  # replaced whole on reload
        self.owns_tun = owns_tun
        self.on_end = on_end
        self.generation = generation
        self._dirty = dirty if dirty is not None else set()  # the worker reports only these
        self.reason = ""
        self.ended = False
        self.subflows = 0
        self.round_subflows = -1  # subflows as last reported
        self.subflows_read_at = 0.0  # the worker's last per-subflow reading (BGW status)
        self.stats = [0] * len(STAT_NAMES)
        self.reported = [0] * len(STAT_NAMES)
        self.tls = tls
        self.peer_serial = tls.peer_serial() if tls is not None else None
        self._rx_tail = rx_tail  # plaintext that arrived with the handshake's last message
        self._tx_tail = b""
        # Less than one segment of the stream, held to lead the next write (segfill.py): the socket has
        # taken it as far as the session is concerned, so it always goes before anything else.
        self._held = b""
        self._hold_timer = False
        self._fill = SegmentFill(send_mss(sock))
        self._cc_restarted_at = -CC_RESTART_EVERY_S
        self._bounded = tunnel.queue_bytes > 0
        # CoDel on the time data waits in the send queues; the byte bound stays as the hard limit
        aqm = tunnel.aqm if self._bounded else None
        self._aqm = CoDel(aqm) if aqm is not None and aqm.kind == "codel" else None
        # fq_codel: what the socket cannot take yet waits in flow queues here (fqcodel.py)
        self._fq = (
            FlowQueues(aqm, offset=self.stream_hdr, limit_bytes=aqm.limit_bytes)
            if aqm is not None and aqm.kind == "fq_codel"
            else None
        )
        self._clock = SojournClock()
        self._written = 0  # bytes the socket took, all of them (fq_codel: the acknowledged rate)
        self.received = 0  # bytes read from the socket (ciphertext with TLS): cpe.shape_share
        rate = tunnel.shape_mbit if shape_mbit is None else shape_mbit  # the BGW's per-CPE rate wins
        self._configured_shape = rate * 1e6  # bits/s: the ceiling of what the peer may ask for
        self._shape_refused = False  # a SHAPE_RATE without flow queues here was logged
        self._shape_malformed = False  # a malformed SHAPE_RATE was logged (once per session)
        self._shape_log: LogLimiter | None = None  # made at the first change the peer asks for
        self._gate = KernelGate(self._configured_shape) if self._fq is not None else None
        self._gated = False  # fq_codel: the kernel holds enough; a timer resumes sending
        # The byte bound (aqm none) counts the subflows' unsent data too: the scheduler parks hundreds of
        # KB in them, and when one link slows down that data held the connection's send buffer full and
        # the other link idle for up to a second (fig9_varying). Beyond it, packets are dropped.
        self._bound = (
            KernelGate(floor=tunnel.queue_bytes)
            if self._bounded and self._fq is None and self._aqm is None
            else None
        )
        self._rtt_at = 0  # bytes written when the paths' RTT was last read
        self._path_s = 0.0  # the slowest subflow's smoothed RTT (what the sojourn time excludes)
        self._batch = Batcher(tunnel.batch_bytes, tunnel.batch_timeout_us / 1e6, MAX_BATCH_PACKETS)
        self._keepalive = encode_control(ControlType.KEEPALIVE, vnet_hdr_len=self.stream_hdr)
        now = time.monotonic()
        self.last_rx = self.last_tx = self.last_frame = now
        self.acks = AckClock(now)  # acked_liveness: when the peer's kernel last proved it is alive

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._bounded:  # bound the unsent data in the socket: the tunnel's queue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, self.tunnel.queue_bytes)
            except OSError as exc:
                if exc.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    raise
                self._run_unbounded()
        if self._gate is not None:  # the gate never lets the socket fill: no autotuning (mptcp.py)
            pin_send_buffer(sock, wmem_max())
        set_offload(self.tun_fd, self.vnet)
        self.loop.register(self.sock_fd, IN, self._on_socket)
        self.loop.register(self.tun_fd, IN, self._on_tun)

    def _run_unbounded(self) -> None:
        """MPTCP before Linux 6.9 has no TCP_NOTSENT_LOWAT: without it neither the byte bound nor an
        AQM sees the queue, so the session runs as with ``queue_bytes: 0`` (backpressure)."""
        global _unbounded_warned
        self._bounded = False
        self._aqm = self._fq = self._gate = self._bound = None
        if not _unbounded_warned:
            _unbounded_warned = True
            log.warning(
                "this kernel's MPTCP has no TCP_NOTSENT_LOWAT (Linux %s; it needs 6.9 or later): "
                "tunnel.queue_bytes and tunnel.aqm are ignored, the tunnel's queue is the socket's "
                "send buffer",
                os.uname().release,
            )

    def end(self, reason: str) -> None:
        """End the session (idempotent): unregister, close the socket (and the TUN fd if ours)."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        self.loop.unregister(self.sock_fd)
        self.loop.unregister(self.tun_fd)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.owns_tun:
            os.close(self.tun_fd)
        self.on_end(self)

    def housekeeping_due(self, now: float) -> float:
        """When ``housekeeping`` next has something to do, if nothing happens meanwhile. Traffic only
        moves these moments later, so a worker may sleep a session until then and look again."""
        if self._aqm is not None or self._tx_tail or self.acked_liveness:
            return now + 1.0  # the path RTT, a keepalive behind a partial write, or the peer's ACKs
        dead = DEAD_AFTER_KEEPALIVES * self.tunnel.keepalive_s
        due = min(self.last_rx + dead, self.last_frame + dead)
        return min(due, self.last_tx + self.tunnel.keepalive_s) if self.keepalives else due

    def housekeeping(self, now: float, check_info: bool) -> list[SubflowInfo] | None:
        """Called about once a second: keepalive, dead-peer detection, subflows and fallback. Returns
        the subflows read with ``check_info`` (the CPE's tick uses them), None if none were read."""
        if self.ended:
            return None
        keepalive = self.tunnel.keepalive_s
        heard = self.last_rx
        info: MptcpInfo | None = None  # one MPTCP_INFO reading serves the ACKs and the fallback check
        if self.acked_liveness:
            if now - max(heard, self.acks.alive_at) >= keepalive:  # a quiet peer: do its ACKs come?
                info = self._read_acks(now)
            heard = max(heard, self.acks.alive_at)
        if now - heard > DEAD_AFTER_KEEPALIVES * keepalive:
            self.end(f"keepalive_timeout: nothing received for {DEAD_AFTER_KEEPALIVES * keepalive:.0f} s")
            return None
        if now - self.last_frame > DEAD_AFTER_KEEPALIVES * keepalive and self.last_rx > self.last_frame:
            self.end(
                f"stream_stalled: bytes but no complete frame for {DEAD_AFTER_KEEPALIVES * keepalive:.0f} s"
                f" ({len(self._rx_tail)} bytes waiting)"
            )
            return None
        if self.keepalives and now - self.last_tx >= keepalive and not self._tx_tail:
            self._send_segments([memoryview(self._keepalive)], [len(self._keepalive)], keepalive=True)
        if self._aqm is not None and self._clock.written - self._rtt_at > RTT_AFTER_BYTES:
            self._read_path_rtt()

        if not check_info or self.ended:
            return None
        try:
            if info is None:
                mptcp_info(self.sock)  # raises on fallback
        except MptcpFallback:
            self.end("fallback: the connection runs as plain TCP")
            return None
        except OSError:
            return None
        return self.read_subflows()

    def read_subflows(self) -> list[SubflowInfo] | None:
        """The subflows now (``MPTCP_TCPINFO``/``MPTCP_SUBFLOW_ADDRS``), None if the socket cannot
        say. Every reading also updates the established count and the segment size writes are cut
        at, whoever took it (housekeeping, or the BGW worker's per-subflow report)."""
        try:
            infos = subflow_infos(self.sock)
        except OSError:
            return None
        subflows = established(infos)
        mss = [sf.mss for sf in infos if sf.state == "established" and sf.mss]
        if mss:
            self._fill.set_mss(min(mss))
        if subflows != self.subflows:
            self.subflows = subflows
            self._dirty.add(self)
        return infos

    def path_changed(self, now: float) -> bool:
        """Our traffic moved onto links that stood by: restart our congestion control and tell the
        peer (PATH_CHANGE), whose subflow on that link stood idle just as long. True if ours restarted."""
        restarted = self.restart_congestion_control(now)
        self.send_control(ControlType.PATH_CHANGE)
        return restarted

    def restart_congestion_control(self, now: float) -> bool:
        """``mptcp.restart_bbr`` on this connection, at most once per CC_RESTART_EVERY_S."""
        if self.ended or now - self._cc_restarted_at < CC_RESTART_EVERY_S:
            return False
        self._cc_restarted_at = now
        try:
            restarted = restart_bbr(self.sock)
        except OSError as exc:
            log.warning("%s: cannot restart the congestion control: %s", self.cpe_id, exc.strerror or exc)
            return False
        if restarted:
            self.stats[CC_RESTARTS] += 1
            self._dirty.add(self)
        return restarted

    def send_control(self, ctype: ControlType, payload: bytes = b"") -> None:
        """A control frame into the stream, behind whatever the socket still owes."""
        if self.ended:
            return
        frame = encode_control(ctype, payload, vnet_hdr_len=self.stream_hdr)
        if self._tx_tail and self.tls is None:
            self._tx_tail += frame  # plaintext tail: the frame follows the packet it finishes
        else:
            self._send_segments([memoryview(frame)], [len(frame)], keepalive=True)

    @property
    def written(self) -> int:
        """Bytes the socket took (ciphertext with TLS): what the shaper meters."""
        return self._written

    @property
    def shape_bps(self) -> float:
        """The rate the shaper hands the kernel now (bits/s); 0 = none."""
        return self._gate.shape * 8 if self._gate is not None else 0.0

    def set_shape(self, bps: float) -> None:
        """Shape at ``bps`` from now on (fq_codel only: without flow queues there is no shaper)."""
        if self._gate is not None and bps != self.shape_bps:
            self._gate.set_shape(bps)
            self.stats[SHAPE_CHANGES] += 1
            self._dirty.add(self)

    def _peer_shape(self, payload: bytes) -> None:
        """SHAPE_RATE: the peer's links changed (shaping.py). Its rate applies up to the configured one;
        a malformed one is ignored (it could only slow the peer's own traffic). Logged sparingly: a
        peer may send them before every packet."""
        asked = shaping.decode_rate(payload)
        if asked is None:
            if not self._shape_malformed:
                self._shape_malformed = True
                log.warning("%s: malformed SHAPE_RATE frame (%d bytes) ignored", self.cpe_id, len(payload))
            return
        if self._gate is None:  # no flow queues here to hold what a shaper holds back
            if not self._shape_refused:
                self._shape_refused = True
                log.warning("%s: SHAPE_RATE ignored: shaping needs tunnel.aqm fq_codel here", self.cpe_id)
            return
        rate = shaping.peer_rate(asked, self._configured_shape)
        if rate != self.shape_bps:
            self.set_shape(rate)
            if self._shape_log is None:
                self._shape_log = LogLimiter(SHAPE_LOG_BURST, SHAPE_LOG_PERIOD_S, log)
            if self._shape_log.allow(f"{self.cpe_id} SHAPE_RATE"):
                log.info("%s: shaping at %.2f Mbit/s (the peer's links changed)", self.cpe_id, rate / 1e6)

    def _read_acks(self, now: float) -> MptcpInfo | None:
        try:
            info = mptcp_info(self.sock)
        except (OSError, MptcpFallback):
            return None  # a fallen-back connection ends at the fallback check
        self.acks.reading(now, self.last_tx, info.write_seq, info.snd_una)
        return info

    def _read_path_rtt(self) -> None:
        """The slowest subflow's smoothed RTT: a byte the kernel holds has waited in the send queues
        for its age less one round trip (MPTCP_TCPINFO, about once a second while data flows)."""
        self._rtt_at = self._clock.written
        try:
            windows = subflow_windows(self.sock)
        except OSError:
            return
        if windows:
            self._path_s = max(w.srtt_us for w in windows) / 1e6

    # --- PtoS: TUN -> stream -----------------------------------------------------------------------
    def _on_tun(self, _events: int) -> None:
        self._dirty.add(self)
        try:
            if self._tx_tail and self._fq is None:
                self._drop_from_tun()
            else:
                self._pump_tun()
        except Exception as exc:  # a session's bug must never take the worker down
            log.exception("%s: PtoS failed", self.cpe_id)
            self.end(f"internal_error: {exc}")

    def _pump_tun(self) -> None:
        view = self.buffers.tx_view
        stats = self.stats
        vnet = self.vnet
        fd = self.tun_fd
        limit = len(view) - MAX_SUPER_PACKET - VNET_HDR_LEN
        batch = self._batch
        segments: list[memoryview] = []
        lengths: list[int] = []
        off = 0
        readv, monotonic = os.readv, time.monotonic
        while True:
            try:
                n = readv(fd, [view[off:]])
            except BlockingIOError:
                break
            except OSError as exc:
                self.end(f"tun_error: {exc.strerror or exc}")
                return
            stats[TUN_READS] += 1
            stats[TUN_READ_BYTES] += n
            if n <= VNET_HDR_LEN:
                continue
            if vnet:
                seg = view[off : off + n]
            else:
                # Queued before offload was switched off: a super-packet the peer cannot take.
                if view[off + 1] or view[off] & VNET_F_NEEDS_CSUM:
                    stats[STALE_GSO_DROPS] += 1
                    continue
                seg = view[off + VNET_HDR_LEN : off + n]
            segments.append(seg)
            lengths.append(len(seg))
            off += n
            if batch.add(len(seg), monotonic()) or off > limit:
                break
        if segments:
            if self._fq is not None:
                self._queue_or_send(segments, lengths)
            else:
                if self._aqm is not None:
                    self._manage_queue(segments, lengths)
                elif self._bound is not None and not self._tx_tail:
                    fits = _fitting(lengths, self._room(self._bound, sum(lengths)))
                    if fits < len(segments):
                        stats[QUEUE_DROPS] += len(segments) - fits
                        del segments[fits:], lengths[fits:]
                if segments:
                    self._send_segments(segments, lengths)
            batch.flushed()

    # --- fq_codel: packets the socket cannot take yet wait in flow queues ---------------------------
    def _queue_or_send(self, segments: list[memoryview], lengths: list[int]) -> None:
        """Straight to the socket while nothing waits (no copy); what it does not take is queued."""
        fq = self._fq
        assert fq is not None
        if not fq.backlog and not self._tx_tail and not self._gated:
            # only what the kernel should still take: the rest waits in the flow queues (TLS would
            # otherwise take all of it and keep the excess as ciphertext, outside them)
            fits = _fitting(lengths, self._room(need=sum(lengths)))
            sent = self._send_stream(segments[:fits]) if fits else 0
            if sent < 0:
                return
            first_queued = self._account_sent(segments, lengths, sent) if fits else 0
            if first_queued == len(segments):
                return
            segments = segments[first_queued:]
        now = time.monotonic()
        dropped = fq.overflow_drops
        for seg in segments:
            fq.enqueue(bytes(seg), now)
        self.stats[QUEUE_DROPS] += fq.overflow_drops - dropped
        if not self._gated:
            self.loop.modify(self.sock_fd, IN | OUT)

    def _room(self, gate: KernelGate | None = None, need: int = 0) -> int:
        """Bytes the kernel may still take (``KernelGate``; fq_codel's gate unless another is given): the
        connection's unsent data and what the subflows hold beyond their windows, against a few ms at
        the acknowledged rate. ``need``: the bytes about to be sent (enough room ends the reading early)."""
        gate = gate or self._gate
        assert gate is not None
        now = time.monotonic()
        written = self._written
        if gate.needs_reading(now, written, need):
            try:
                outstanding = unacked_bytes(self.sock_fd)
                # enough room by SIOCOUTQ alone (e.g. a lone ping) needs no more reads
                if not gate.measured_roughly(now, written, outstanding, need):
                    notsent = unsent_bytes(self.sock_fd)
                    # a subflow in RTO recovery (a dead link) keeps its unsent data until the
                    # connection reinjects it elsewhere: it must not hold the survivors back
                    notsent += sum(w.notsent for w in subflow_windows(self.sock) if not w.stalled)
                    gate.measured(now, written, outstanding, notsent)
            except OSError:
                return self.tunnel.batch_bytes
        return gate.room(written, now)

    def _wait_for_room(self) -> None:
        """The kernel holds enough: stop watching for writability, look again shortly."""
        self._gated = True
        self.loop.modify(self.sock_fd, IN)
        self.loop.call_later(GATE_POLL_S, self._ungate)

    def _ungate(self) -> None:
        self._gated = False
        if self.ended or self._fq is None or not self._fq.backlog:
            return
        try:
            if self._tx_tail:
                self.loop.modify(self.sock_fd, IN | OUT)
            else:
                self._drain_queue()
        except Exception as exc:  # a session's bug must never take the worker down
            log.exception("%s: PtoS failed", self.cpe_id)
            self.end(f"internal_error: {exc}")

    def _account_sent(self, segments: list[memoryview], lengths: list[int], sent: int) -> int:
        """Count what the socket took; a packet it took part of is finished via ``_tx_tail``.
        Returns the index of the first packet it did not take at all."""
        cut, offset, first_untaken = after_short_send(lengths, sent)
        if cut is not None:
            self._tx_tail = bytes(segments[cut][offset:])
            self.loop.modify(self.sock_fd, IN | OUT)  # the tail goes first, when the socket drains
        if sent:
            self.stats[TX_PACKETS] += first_untaken
            self.stats[TX_BYTES] += sum(lengths[:first_untaken]) - self.stream_hdr * first_untaken
            self.stats[BATCHES] += 1
            self.last_tx = time.monotonic()
        return first_untaken

    def _drain_queue(self) -> None:
        """The socket is writable: send from the flow queues until it is full or they are empty."""
        fq = self._fq
        assert fq is not None
        stats = self.stats
        while fq.backlog and not self._tx_tail and not self.ended:
            budget = min(self.tunnel.batch_bytes, self._room())
            if budget <= 0:
                self._wait_for_room()
                return
            drops, marks, shed = fq.drops, fq.marks, fq.overflow_drops
            items: list[Item] = fq.dequeue(time.monotonic(), budget)
            stats[AQM_DROPS] += fq.drops - drops
            stats[AQM_MARKS] += fq.marks - marks
            stats[QUEUE_DROPS] += fq.overflow_drops - shed
            if not items:
                break
            segments = [memoryview(packet) for _, packet, _ in items]
            sent = self._send_stream(segments)
            if sent < 0:
                return
            first_untaken = self._account_sent(segments, [len(s) for s in segments], sent)
            if first_untaken < len(items):
                fq.undo(items[first_untaken:])
                self.loop.modify(self.sock_fd, IN | OUT)
                return  # full: the next writable event resumes
        if not fq.backlog and not self._tx_tail and not self.ended:
            self.loop.modify(self.sock_fd, IN)

    def _manage_queue(self, segments: list[memoryview], lengths: list[int]) -> None:
        """CoDel: when the queue's head has waited too long, mark (ECN CE) or drop one packet."""
        aqm = self._aqm
        assert aqm is not None
        if not self._path_s:  # the paths' RTT is not known yet (the first second of traffic)
            return
        try:
            outstanding = unacked_bytes(self.sock_fd)
        except OSError:
            return
        now = time.monotonic()
        sojourn = self._clock.sojourn(now, outstanding, self._path_s)
        if not aqm.decide(now, sojourn, outstanding + len(self._tx_tail)):
            return
        if aqm.settings.ecn and mark_ce(segments[0], self.stream_hdr):
            self.stats[AQM_MARKS] += 1
            return
        del segments[0], lengths[0]
        self.stats[AQM_DROPS] += 1

    def _drop_from_tun(self) -> None:
        """The socket still owes part of a packet: what arrives now is dropped (a full router queue)."""
        if not self._bounded:  # unbounded: no reading until the socket drains (backpressure)
            self.loop.modify(self.tun_fd, 0)
            return
        view = self.buffers.tx_view
        for _ in range(MAX_BATCH_PACKETS):
            try:
                os.readv(self.tun_fd, [view])
            except BlockingIOError:
                return
            except OSError as exc:
                self.end(f"tun_error: {exc.strerror or exc}")
                return
            self.stats[QUEUE_DROPS] += 1

    def _send_segments(self, segments: list[memoryview], lengths: list[int], keepalive: bool = False) -> None:
        sent = self._send_stream(segments)
        if sent < 0:
            return
        stats = self.stats
        self.last_tx = time.monotonic()
        total = sum(lengths)
        if sent == total:
            if not keepalive:
                stats[TX_PACKETS] += len(lengths)
                stats[TX_BYTES] += total - self.stream_hdr * len(lengths)
                stats[BATCHES] += 1
            return
        if self._bounded:
            # The stream must stay whole: a packet the kernel took part of is finished later; the
            # packets behind it are dropped, where the inner TCP sees the loss.
            cut, offset, first_dropped = after_short_send(lengths, sent)
            if cut is not None:
                self._tx_tail = bytes(segments[cut][offset:])
            if not keepalive:
                stats[TX_PACKETS] += first_dropped
                stats[TX_BYTES] += sum(lengths[:first_dropped]) - self.stream_hdr * first_dropped
                stats[QUEUE_DROPS] += len(lengths) - first_dropped
                stats[BATCHES] += 1
        else:
            self._tx_tail = b"".join(bytes(s) for s in segments)[sent:]
            if not keepalive:
                stats[TX_PACKETS] += len(lengths)
                stats[TX_BYTES] += total - self.stream_hdr * len(lengths)
                stats[BATCHES] += 1
        if self._tx_tail:
            self.loop.modify(self.sock_fd, IN | OUT)

    def _send_stream(self, segments: list[memoryview]) -> int:
        """The record layer's send side. Returns bytes taken, -1 if the session ended."""
        if self.tls is not None:
            return self._send_tls(segments)
        return self._write(segments)

    def _write(self, parts: list[memoryview], cut: bool = True) -> int:
        """The socket's only writer: ``parts`` behind the held bytes, cut at a segment boundary while the
        stream is busy (``SegmentFill``) unless ``cut`` is false. Returns the bytes of ``parts`` taken
        (held ones count), -1 if the session ended."""
        held = self._held
        total = sum(len(p) for p in parts)
        whole = len(held) + total
        now = time.monotonic()
        # what is held goes first, whole
        now_bytes = max(self._fill.cut(whole, now), len(held)) if cut else whole
        bufs: list[memoryview] = [memoryview(held), *parts] if held else parts
        if now_bytes < whole:
            bufs = _prefix(bufs, now_bytes)
        try:
            sent = self.sock.sendmsg(bufs, (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.end(f"send_error: {exc.strerror or exc}")
            return -1
        self._fill.wrote(now, backlog=sent < now_bytes)
        if sent < len(held):
            self._held = held[sent:]
            return 0
        self._held = b""
        taken = sent - len(held)
        if sent == now_bytes < whole:  # all that was due went: hold the rest
            self._held = b"".join(bytes(p) for p in _suffix(parts, whole - now_bytes))
            self._fill.held(now)
            taken = total
            if not self._hold_timer:
                self._hold_timer = True
                self.loop.call_later(HOLD_S, self._flush_held)
        self._wrote(taken)
        return taken

    def _flush_held(self) -> None:
        """What has been held for HOLD_S goes now, whole segment or not (bytes held since then by a
        later write get their own HOLD_S: one timer per session)."""
        self._hold_timer = False
        if self.ended or not self._held or self._tx_tail:
            return  # nothing, or a tail that is owed goes first (the held bytes lead it)
        wait = self._fill.due_in(time.monotonic())
        if wait:
            self._hold_timer = True
            self.loop.call_later(wait, self._flush_held)
            return
        if self._write([], cut=False) < 0:
            return
        if self._held:  # owed like any partial write: it goes when the socket drains
            self._tx_tail, self._held = self._held, b""
            self.loop.modify(self.sock_fd, IN | OUT)

    def _wrote(self, nbytes: int) -> None:
        self._written += nbytes
        if self._aqm is not None:  # only CoDel needs the write times
            self._clock.wrote(nbytes, time.monotonic())

    def _send_tls(self, segments: list[memoryview]) -> int:
        """All of a batch goes into TLS at once; ciphertext the socket does not take waits in _tx_tail
        (the TUN is not read meanwhile), so the record stream stays whole."""
        tls = self.tls
        assert tls is not None
        total = sum(len(s) for s in segments)
        try:
            tls.write(segments[0] if len(segments) == 1 else b"".join(segments))
            data = tls.take()
        except TlsError as exc:
            self.end(f"tls_error: {exc}")
            return -1
        self._send_cipher(data)
        return -1 if self.ended else total

    def _send_cipher(self, data: bytes) -> None:
        if self._tx_tail:
            self._tx_tail += data
            return
        sent = self._write([memoryview(data)])
        if sent < 0:
            return
        if sent < len(data):
            self._tx_tail = data[sent:]
            self.loop.modify(self.sock_fd, IN | OUT)

    def _on_writable(self) -> None:
        tail = self._tx_tail
        n = self._write([memoryview(tail)], cut=False)  # the socket still holds data: no need
        if n <= 0:
            return
        self._tx_tail = tail[n:]
        if not self._tx_tail:
            if self._fq is not None and self._fq.backlog:
                self._drain_queue()
                return
            self.loop.modify(self.sock_fd, IN)
            if not self._bounded:
                self.loop.modify(self.tun_fd, IN)

    # --- StoP: stream -> TUN -----------------------------------------------------------------------
    def _on_socket(self, events: int) -> None:
        self._dirty.add(self)
        try:
            if events & OUT and self._tx_tail:
                self._on_writable()
            elif events & OUT and self._fq is not None and self._fq.backlog:
                self._drain_queue()
            if not self.ended and events & (IN | ERR):
                self._pump_socket()
        except FrameError as exc:
            log.warning("%s: invalid frame from peer, ending session: %s", self.cpe_id, exc)
            self.end(f"frame_error: {exc}")
        except TlsError as exc:
            log.warning("%s: TLS failed, ending session: %s", self.cpe_id, exc)
            self.end(f"tls_error: {exc}")
        except Exception as exc:  # a session's bug must never take the worker down
            log.exception("%s: StoP failed", self.cpe_id)
            self.end(f"internal_error: {exc}")

    def _recv_stream(self, into: memoryview) -> int:
        """The record layer's receive side. Returns bytes, 0 at EOF, -1 if none."""
        tls = self.tls
        if tls is None:
            try:
                n = self.sock.recv_into(into)
            except BlockingIOError:
                return -1
            self.received += n
            return n
        # Ciphertext is never shorter than its plaintext: taking no more than ``into`` can hold keeps
        # every decrypted byte in ``into`` (nothing left inside the TLS object that epoll cannot see).
        room = len(into) - tls.incoming.pending
        if room <= 0:
            return tls.read_into(into)
        scratch = self.buffers.tls_in
        try:
            n = self.sock.recv_into(scratch[:room])
        except BlockingIOError:
            return -1
        if n == 0:
            return 0
        self.received += n
        tls.feed(scratch[:n])
        got = tls.read_into(into)
        out = tls.take()  # post-handshake messages (e.g. a KeyUpdate's answer)
        if out:
            self._send_cipher(out)
        if tls.eof and got <= 0:
            return 0
        return got

    def _pump_socket(self) -> None:
        buf, view = self.buffers.rx, self.buffers.rx_view
        hdr = self.stream_hdr
        write, writev, tun = os.write, os.writev, self.tun_fd
        stats = self.stats
        filt = self.source_filter
        max_frame = self.tunnel.max_frame_bytes
        for _ in range(RECV_BUDGET):
            tail = self._rx_tail
            t = len(tail)
            buf[:t] = tail
            try:
                n = self._recv_stream(view[t:])
            except OSError as exc:
                self.end(f"recv_error: {exc.strerror or exc}")
                return
            if n < 0:
                return
            if n == 0:
                self.end("peer_closed: the peer closed the connection")
                return
            self.last_rx = time.monotonic()
            end = t + n
            frames: list[memoryview | ControlFrame] = []
            pos = split_frames(buf, 0, end, hdr, max_frame, frames)
            self._rx_tail = bytes(buf[pos:end])
            if frames:
                self.last_frame = self.last_rx
            packets = nbytes = 0
            for frame in frames:
                if isinstance(frame, ControlFrame):
                    if frame.type == ControlType.PATH_CHANGE:
                        self.restart_congestion_control(self.last_rx)
                    elif frame.type == ControlType.SHAPE_RATE:
                        self._peer_shape(bytes(frame.payload))
                    continue  # a keepalive's point was its arrival; unknown types are skipped
                if filt is not None and not filt.allows(frame):
                    stats[SPOOFED] += 1
                    continue
                try:
                    if hdr:
                        write(tun, frame)
                    else:
                        writev(tun, (ZERO_VNET, frame))
                except OSError:
                    stats[TUN_ERRORS] += 1
                    continue
                packets += 1
                nbytes += len(frame)
            stats[RX_PACKETS] += packets
            stats[RX_BYTES] += nbytes - packets * hdr
            stats[TUN_WRITES] += packets
            stats[TUN_WRITE_BYTES] += nbytes + packets * (VNET_HDR_LEN - hdr)
            if n < len(view) - t:  # the socket is drained
                return

    # --- metrics -----------------------------------------------------------------------------------
    def take_deltas(self) -> list[int] | None:
        """Counter increments since the last call, or None if nothing changed."""
        stats, reported = self.stats, self.reported
        if stats == reported:
            return None
        deltas = [a - b for a, b in zip(stats, reported, strict=True)]
        self.reported = list(stats)
        return deltas
