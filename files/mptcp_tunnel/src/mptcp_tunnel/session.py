"""One tunnel session: a TUN device and one established MPTCP connection, pumped both ways.

Two threads, as in the paper (§5): PtoS reads packets from the TUN device and sends them in batches;
StoP receives the stream, splits it into packets and writes them to the TUN device. Data moves one
way through each. The socket and the TUN calls release the GIL, so the two pumps overlap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any

from mptcp_tunnel import metrics
from mptcp_tunnel.batching import Batcher, after_short_send
from mptcp_tunnel.config import TunnelSettings
from mptcp_tunnel.framing import ControlFrame, ControlType, FrameError, StreamParser, encode_control
from mptcp_tunnel.mptcp import MptcpFallback, mptcp_info
from mptcp_tunnel.srcfilter import SourceFilter

log = logging.getLogger("mptcp_tunnel.session")

DEAD_AFTER_KEEPALIVES = 3
MAX_BATCH_PACKETS = 64
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


class Session:
    def __init__(
        self,
        sock: socket.socket,
        tun_fd: int,
        cpe_id: str,
        tunnel: TunnelSettings,
        vnet_hdr_len: int = 0,
        source_filter: SourceFilter | None = None,
    ) -> None:
        self.sock = sock
        self.tun_fd = tun_fd
        self.cpe_id = cpe_id
        self.tunnel = tunnel
        self.vnet_hdr_len = vnet_hdr_len
        self.source_filter = source_filter  # replaced whole on reload; read once per packet
        self.reason = ""
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._threads = [
            threading.Thread(target=self._guard, args=(self._ptos,), name=f"ptos-{cpe_id}", daemon=True),
            threading.Thread(target=self._guard, args=(self._stop,), name=f"stop-{cpe_id}", daemon=True),
        ]
        timeout = struct.pack("ll", int(tunnel.keepalive_s), int(tunnel.keepalive_s % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tunnel.queue_bytes:  # bound the unsent data in the socket: the tunnel's queue
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, tunnel.queue_bytes)
        self._queue_drops = metrics.QUEUE_DROPS.labels(cpe_id)

    def start(self) -> None:
        metrics.SESSION_UP.labels(self.cpe_id).set(1)
        for t in self._threads:
            t.start()

    def close(self, reason: str) -> None:
        """End the session (idempotent); the first reason given is kept."""
        with self._lock:
            if self.ended.is_set():
                return
            self.reason = reason
            self.ended.set()
        metrics.SESSION_UP.labels(self.cpe_id).set(0)
        metrics.SESSIONS_ENDED.labels(self.cpe_id, reason.split(":")[0]).inc()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def join(self) -> None:
        """Wait for both pumps and release the socket (the TUN fd belongs to the caller).

        Safe to call from several threads: the fds are closed exactly once, so a closed fd number
        that the kernel has already handed out again is never closed a second time.
        """
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join()
        with self._lock:
            if self._released:
                return
            self._released = True
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def poll_info(self) -> None:
        """Refresh the subflow gauge; a connection found running as plain TCP is ended."""
        if self.ended.is_set():
            return
        try:
            info = mptcp_info(self.sock)
        except MptcpFallback:
            metrics.FALLBACKS.inc()
            self.close("fallback: the connection runs as plain TCP")
            return
        except OSError:
            return
        metrics.SUBFLOWS.labels(self.cpe_id).set(info.subflows)

    def _guard(self, pump: object) -> None:
        try:
            pump()  # type: ignore[operator]
        except Exception as exc:  # a pump must never take the process down
            log.exception("%s: pump failed", self.cpe_id)
            self.close(f"internal_error: {exc}")

    def _ptos(self) -> None:
        """TUN -> tunnel: read until the TUN is empty or the batch is full, then one sendmsg."""
        size = self.tunnel.mtu + self.vnet_hdr_len
        bufs = [bytearray(size) for _ in range(MAX_BATCH_PACKETS)]
        views = [memoryview(b) for b in bufs]
        batch = Batcher(self.tunnel.batch_bytes, self.tunnel.batch_timeout_us / 1e6, MAX_BATCH_PACKETS)
        out: list[memoryview] = []
        keepalive = encode_control(ControlType.KEEPALIVE, vnet_hdr_len=self.vnet_hdr_len)
        tun, wake = self.tun_fd, self._wake_r
        counters = (
            metrics.PACKETS.labels(self.cpe_id, "tx"),
            metrics.BYTES.labels(self.cpe_id, "tx"),
            metrics.BATCHES.labels(self.cpe_id),
        )
        readv, monotonic = os.readv, time.monotonic
        while not self.ended.is_set():
            ready, _, _ = select.select([tun, wake], [], [], self.tunnel.keepalive_s)
            if wake in ready:
                return
            if not ready:  # idle: tell the peer we are alive
                if self._send([memoryview(keepalive)]) is None:
                    return
                continue
            while True:
                try:
                    n = readv(tun, [bufs[len(out)]])
                except BlockingIOError:  # TUN empty: a partial batch goes now, never waits
                    if out and not self._flush(out, batch, counters):
                        return
                    break
                out.append(views[len(out)][:n])
                if batch.add(n, monotonic()) and not self._flush(out, batch, counters):
                    return

    def _flush(self, out: list[memoryview], batch: Batcher, counters: tuple[Any, Any, Any]) -> bool:
        result = self._send(out)
        if result is None:
            return False
        dropped, dropped_bytes = result
        packets, nbytes, batches = counters
        packets.inc(batch.packets - dropped)
        nbytes.inc(batch.bytes - dropped_bytes)
        batches.inc()
        if dropped:
            self._queue_drops.inc(dropped)
        out.clear()
        batch.flushed()
        return True

    def _send(self, views: list[memoryview]) -> tuple[int, int] | None:
        """Send a batch; returns (packets, bytes) dropped because the queue is full, None on error.

        With a queue limit the send does not block: a full socket drops packets here, where the
        inner TCP sees the loss, instead of queueing them for seconds in the socket or the TUN.
        """
        flags = socket.MSG_DONTWAIT if self.tunnel.queue_bytes else 0
        try:
            try:
                sent = self.sock.sendmsg(views, (), flags)
            except BlockingIOError:
                sent = 0
            lengths = [len(v) for v in views]
            if sent == sum(lengths):
                return 0, 0
            if not flags:  # a blocking send interrupted mid-batch: push the rest out in order
                self.sock.sendall(b"".join(views)[sent:])
                return 0, 0
            cut, offset, first_dropped = after_short_send(lengths, sent)
            if cut is not None:
                self.sock.sendall(views[cut][offset:])  # the stream must stay whole
            return len(views) - first_dropped, sum(lengths[first_dropped:])
        except OSError as exc:
            self.close(f"send_error: {exc.strerror or exc}")
            return None

    def _stop(self) -> None:
        """Tunnel -> TUN: split the stream into packets by their IP header length."""
        parser = StreamParser(self.tunnel.max_frame_bytes, self.vnet_hdr_len)
        dead_after = DEAD_AFTER_KEEPALIVES * self.tunnel.keepalive_s
        last_rx = time.monotonic()
        rx_packets = metrics.PACKETS.labels(self.cpe_id, "rx")
        rx_bytes = metrics.BYTES.labels(self.cpe_id, "rx")
        spoofed = metrics.SPOOFED_DROPS.labels(self.cpe_id)
        tun_errors = metrics.TUN_WRITE_ERRORS.labels(self.cpe_id)
        write, tun, sock = os.write, self.tun_fd, self.sock
        while not self.ended.is_set():
            try:
                n = sock.recv_into(parser.recv_buffer())
            except BlockingIOError:  # SO_RCVTIMEO expired: is the peer still there?
                if time.monotonic() - last_rx > dead_after:
                    self.close(f"keepalive_timeout: nothing received for {dead_after:.0f} s")
                continue
            except OSError as exc:
                self.close(f"recv_error: {exc.strerror or exc}")
                return
            if n == 0:
                self.close("peer_closed: the peer closed the connection")
                return
            last_rx = time.monotonic()
            try:
                frames = parser.received(n)
            except FrameError as exc:
                metrics.FRAME_ERRORS.labels(exc.reason).inc()
                log.warning("%s: invalid frame from peer, ending session: %s", self.cpe_id, exc)
                self.close(f"frame_error: {exc}")
                return
            filt = self.source_filter
            packets = nbytes = dropped = errors = 0
            for frame in frames:
                if isinstance(frame, ControlFrame):
                    continue  # keepalive: receiving it was the point
                if filt is not None and not filt.allows(frame):
                    dropped += 1
                    continue
                try:
                    write(tun, frame)
                except OSError:
                    errors += 1
                    continue
                packets += 1
                nbytes += len(frame)
            rx_packets.inc(packets)
            rx_bytes.inc(nbytes)
            if dropped:
                spoofed.inc(dropped)
            if errors:
                tun_errors.inc(errors)
