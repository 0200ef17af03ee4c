"""The BGW worker's side of a session's start: TLS 1.3 handshake, certificate = claimed CPE, features.

The control process has read the connection's CLAIM (the CPE id) and handed the raw connection to
the CPE's worker, with the deadline of the whole admission. Here, in the worker's loop, the TLS
handshake runs non-blocking over memory BIOs; the peer's certificate must name exactly the claimed CPE;
then OFFER -> ACCEPT inside TLS. Only a connection that passed all of that becomes a Session (and
replaces the CPE's older one). Everything a peer sends is bounded: TLS messages by OpenSSL, OFFER by
``MessageReader``; a timer ends whatever is still here at the deadline.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable

from mptcp_tunnel import handshake as hs
from mptcp_tunnel.engine.loop import IN, OUT, EventLoop, Timer
from mptcp_tunnel.tls import TlsChannel, TlsError, check_peer_is

READ_CHUNK = 16384
READS_PER_EVENT = 4


class AdmissionFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class TlsAccept:
    """One connection between CLAIM and ACCEPT. ``on_done(self, error)`` runs exactly once."""

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        cpe_id: str,
        deadline: float,
        offered: hs.Feature,
        on_done: Callable[[TlsAccept, AdmissionFailed | None], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.cpe_id = cpe_id
        self.offered = offered  # what this BGW can do
        self.on_done = on_done
        self.channel = TlsChannel(ctx, server_side=True)
        self.reader = hs.MessageReader((hs.MsgType.OFFER,), max_body=64)
        self.features = hs.Feature.NONE
        self.leftover = b""
        self.done = False
        self._tls_up = False
        self._out = b""
        self._timer: Timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expired)

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.register(self.fd, IN, self._on_event)
        self._on_event(IN)  # the ClientHello may be here already

    def _expired(self) -> None:
        self._finish(AdmissionFailed("timeout", "no complete handshake before the deadline"))

    def abort(self, reason: str, detail: str) -> None:
        """End it now (the CPE was removed, the worker stops)."""
        self._finish(AdmissionFailed(reason, detail))

    def _finish(self, error: AdmissionFailed | None) -> None:
        if self.done:
            return
        self.done = True
        self._timer.cancel()
        self.loop.unregister(self.fd)
        if error is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.on_done(self, error)

    def _on_event(self, events: int) -> None:
        try:
            if events & OUT and self._out:
                self._flush()
            self._advance()
        except AdmissionFailed as exc:
            self._finish(exc)
        except (TlsError, hs.HandshakeError) as exc:
            self._finish(AdmissionFailed(exc.reason, str(exc).split(": ", 1)[-1]))
        except OSError as exc:
            self._finish(AdmissionFailed("io_error", str(exc.strerror or exc)))

    def _advance(self) -> None:
        channel = self.channel
        for _ in range(READS_PER_EVENT):
            try:
                data = self.sock.recv(READ_CHUNK)
            except BlockingIOError:
                break
            if not data:
                raise AdmissionFailed("closed", "peer closed the connection during the handshake")
            channel.feed(data)
            if len(data) < READ_CHUNK:
                break
        if not self._tls_up:
            self._tls_up = channel.handshake()
            self._queue(channel.take())
            if not self._tls_up:
                return
            check_peer_is(channel, self.cpe_id)
        if self.done:
            return
        buf = memoryview(bytearray(self.reader.wants() or 1))
        while True:
            want = self.reader.wants()
            n = channel.read_into(buf[:want])
            if n == 0:
                raise AdmissionFailed("closed", "peer closed TLS during the handshake")
            if n < 0:
                return
            got = self.reader.add(bytes(buf[:n]))
            if got is not None:
                break
        self.features = hs.decode_features(got[1]) & self.offered
        # Anything after OFFER is tunnel data (a CPE waits for ACCEPT, but be exact anyway).
        rest = bytearray(65536)
        n = channel.read_into(memoryview(rest))
        self.leftover = bytes(rest[: max(n, 0)])
        channel.write(hs.encode_features(hs.MsgType.ACCEPT, self.features))
        self._out += channel.take()
        self._flush()
        if self._out:  # ACCEPT behind unsent handshake bytes: a peer that does not read is no CPE
            raise AdmissionFailed("io_error", "could not send ACCEPT")
        self._finish(None)

    def _queue(self, data: bytes) -> None:
        if not data:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self._out, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        self._out = self._out[sent:]
        self.loop.modify(self.fd, IN | OUT if self._out else IN)
