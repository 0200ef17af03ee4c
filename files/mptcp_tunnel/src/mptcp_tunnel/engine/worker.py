"""A BGW worker process: an event loop over the sessions the control process hands it.

The control process owns configuration, TUN devices, routes, admission and the rule "one session per
CPE"; it hands each authenticated connection here together with a duplicate of the CPE's TUN fd. A
CPE always goes to the same worker, so a newer connection replaces the older one inside this one loop,
atomically. The worker never looks at configuration files and never decides who may connect.

With TLS, the control process hands over the raw connection right after its CLAIM (``admit``); the
TLS handshake, the check "certificate = claimed CPE" and the feature exchange run here
(``tlsaccept``), and only a connection that passed them replaces the CPE's session.

Messages from the control process: ``settings`` (tunnel and TLS settings, offload offered), ``attach``
(cpe, gen, vnet, prefixes; fds: socket, TUN; encryption none), ``admit`` (cpe, gen, deadline, peer,
prefixes; fds: socket, TUN), ``detach`` (cpe), ``prefixes`` (cpe, prefixes), ``stop``.
Messages to it: ``admitted`` (cpe, gen, ok, vnet or reason), ``ended`` (cpe, gen, reason), ``stats``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time
from typing import Any

from mptcp_tunnel import exitcodes
from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import ConfigError, IPNetwork, TlsSettings, TunnelSettings, tunnel_from_wire
from mptcp_tunnel.engine import channel
from mptcp_tunnel.engine.loop import IN, OUT, EventLoop
from mptcp_tunnel.engine.session import Buffers, Session
from mptcp_tunnel.engine.tlsaccept import AdmissionFailed, TlsAccept
from mptcp_tunnel.engine.wheel import TimerWheel
from mptcp_tunnel.srcfilter import SourceFilter
from mptcp_tunnel.status import subflow_row
from mptcp_tunnel.tls import TlsChannel, load_contexts
from mptcp_tunnel.tun import VNET_HDR_LEN

log = logging.getLogger("mptcp_tunnel.worker")

HOUSEKEEPING_S = 0.25  # the timer wheel's quantum: keepalives leave at most ~0.5 s late
INFO_EVERY_S = 30.0  # MPTCP_INFO (subflows, fallback) per session every 30 s, spread over time
STATS_S = 1.0
HEARTBEAT_S = 2.0  # the longest the worker stays silent: the control process kills a hung worker
# `status` on the BGW: a session that moved bytes has its subflows read at most every 5 s, and at most
# 200 sessions are read per report (a fleet's cost stays bounded); 100 CPEs per message.
SUBFLOWS_EVERY_S = 5.0
SUBFLOWS_PER_REPORT = 200
SUBFLOWS_PER_MESSAGE = 100


def _prefixes(raw: list[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(p) for p in raw)


class Worker:
    def __init__(self, chan: socket.socket, index: int) -> None:
        self.chan = chan
        self.index = index
        self.loop = EventLoop()
        self.tunnel = TunnelSettings()
        self.buffers = Buffers(self.tunnel.batch_bytes)
        self.sessions: dict[str, Session] = {}
        self.wheel: TimerWheel[Session] = TimerWheel(time.monotonic(), HOUSEKEEPING_S)  # by next housekeeping
        self.info_due: dict[Session, float] = {}
        self.done = False
        self.outbox = channel.Outbox(chan)
        self.dirty: set[Session] = set()  # sessions whose counters moved since the last report
        self.tls_ctx: ssl.SSLContext | None = None
        self.tls_settings: TlsSettings | None = None
        self.offered = hs.Feature.NONE
        self.sent_at = 0.0  # the last message to the control process (HEARTBEAT_S)
        self.admitting: dict[int, tuple[TlsAccept, dict[str, Any], int]] = {}  # fd -> (accept, msg, tun)

    def run(self) -> int:
        self.chan.setblocking(False)
        self.loop.register(self.chan.fileno(), IN, self._on_channel_event)
        self.loop.call_every(HOUSEKEEPING_S, self._housekeeping)
        self.loop.call_every(STATS_S, self._report_stats)
        try:
            self.loop.run(lambda: self.done)
        finally:
            for accept, _msg, _tun in list(self.admitting.values()):
                accept.abort("local_stop", "agent stopping")
            for session in list(self.sessions.values()):
                session.end("local_stop: agent stopping")
            self._report_stats()
            self.chan.setblocking(True)
            self.chan.settimeout(channel.SEND_WAIT_S)
            with contextlib.suppress(OSError):
                self.outbox.flush()  # the last counters and "ended" messages
        return 0

    # --- control messages --------------------------------------------------------------------------
    def _on_channel_event(self, events: int) -> None:
        if events & OUT and self.outbox.flush():
            self.loop.modify(self.chan.fileno(), IN)
        if events & ~OUT:
            self._on_channel()

    def _on_channel(self) -> None:
        for _ in range(256):
            try:
                got = channel.receive(self.chan)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:  # the control process is gone: nothing left to work for
                self.done = True
                return
            message, fds = got
            try:
                self._handle(message, fds)
            except Exception:  # a malformed message must not end every session of this worker
                log.exception("worker %d: cannot handle %s", self.index, message.get("op"))
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                if message.get("op") == "admit":  # e.g. fds lost to EMFILE: the control process must know
                    failed = {"ok": False, "reason": "worker_error", "detail": "see the worker's log"}
                    self._send({**_brief(message), **failed})

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        if op == "settings":
            self.tunnel = tunnel_from_wire(message["tunnel"])
            if len(self.buffers.tx) < self.tunnel.batch_bytes + 65545:
                self.buffers = Buffers(self.tunnel.batch_bytes)
            self.offered = hs.bgw_offer(bool(message.get("offload")))
            if message.get("tls"):
                self._load_tls(TlsSettings(**message["tls"]))
        elif op == "attach":
            self._attach(message, fds)
        elif op == "admit":
            self._admit(message, fds)
        elif op == "detach":
            reason = message.get("reason", "cpe_removed: no longer in the configuration")
            for accept, msg, _tun in list(self.admitting.values()):
                if msg["cpe"] == message["cpe"]:
                    accept.abort("cpe_removed", reason)
            session = self.sessions.get(message["cpe"])
            if session is not None:
                session.end(reason)
        elif op == "prefixes":
            session = self.sessions.get(message["cpe"])
            if session is not None:
                session.source_filter = SourceFilter(_prefixes(message["prefixes"]), session.stream_hdr)
        elif op == "stop":
            self.done = True
        else:
            raise ValueError(f"unknown op {op!r}")

    def _load_tls(self, settings: TlsSettings) -> None:
        """(Re)load the PKI; sessions whose certificate the CRL now lists end here."""
        try:
            ctx, revoked = load_contexts(settings, server=True)
        except ConfigError as exc:  # the control process checked; a file changed since: keep the old one
            log.error("worker %d: keeping the previous TLS setup: %s", self.index, exc)
            return
        self.tls_ctx, self.tls_settings = ctx, settings
        for session in list(self.sessions.values()):
            if session.peer_serial is not None and session.peer_serial in revoked:
                session.end("revoked: the CPE's certificate is on the CRL")

    def _admit(self, message: dict[str, Any], fds: list[int]) -> None:
        sock_fd, tun_fd = fds
        sock = socket.socket(fileno=sock_fd)
        if self.tls_ctx is None:
            sock.close()
            os.close(tun_fd)
            self._send({**_brief(message), "ok": False, "reason": "no_tls", "detail": "no TLS setup"})
            return
        accept = TlsAccept(
            self.loop,
            sock,
            self.tls_ctx,
            message["cpe"],
            float(message["deadline"]),
            self.offered,
            self._admission_done,
        )
        self.admitting[accept.fd] = (accept, message, tun_fd)
        accept.start()

    def _admission_done(self, accept: TlsAccept, error: AdmissionFailed | None) -> None:
        _accept, message, tun_fd = self.admitting.pop(accept.fd)
        if error is not None:
            os.close(tun_fd)
            self._send(
                {**_brief(message), "ok": False, "reason": error.reason, "detail": hs.escape(str(error))}
            )
            return
        vnet = bool(accept.features & hs.Feature.VNET_HDR)
        quiet = bool(accept.features & hs.Feature.QUIET_BGW)
        self._run_session(
            message, accept.sock, tun_fd, vnet, quiet, accept.channel, accept.leftover, answer=True
        )

    def _attach(self, message: dict[str, Any], fds: list[int]) -> None:
        sock_fd, tun_fd = fds
        sock = socket.socket(fileno=sock_fd)
        self._run_session(message, sock, tun_fd, bool(message["vnet"]), bool(message["quiet"]))

    def _run_session(
        self,
        message: dict[str, Any],
        sock: socket.socket,
        tun_fd: int,
        vnet: bool,
        quiet: bool,
        tls: TlsChannel | None = None,
        rx_tail: bytes = b"",
        answer: bool = False,
    ) -> None:
        """The CPE's newer authenticated connection replaces its older session, here and now.

        ``answer``: tell the control process the admit succeeded, before the session can end.
        """
        cpe_id = message["cpe"]
        old = self.sessions.get(cpe_id)
        if old is not None:
            old.end("replaced: the CPE reconnected")
        session = Session(
            self.loop,
            self.buffers,
            sock,
            tun_fd,
            cpe_id,
            self.tunnel,
            vnet=vnet,
            keepalives=not quiet,  # QUIET_BGW: the CPE hears us through the ACKs of its keepalives
            source_filter=SourceFilter(_prefixes(message["prefixes"]), VNET_HDR_LEN if vnet else 0),
            owns_tun=True,
            on_end=self._ended,
            generation=int(message["gen"]),
            dirty=self.dirty,
            tls=tls,
            rx_tail=rx_tail,
            shape_mbit=message.get("shape_mbit"),
        )
        self.sessions[cpe_id] = session
        now = time.monotonic()
        self.info_due[session] = now + random.uniform(1.0, INFO_EVERY_S)  # spread a reconnect storm's reads
        self.wheel.schedule(session, now + HOUSEKEEPING_S)
        if answer:
            self._send({**_brief(message), "ok": True, "vnet": vnet})
        try:
            session.start()
        except OSError as exc:
            session.end(f"internal_error: cannot start the session: {exc.strerror or exc}")

    def _ended(self, session: Session) -> None:
        if self.sessions.get(session.cpe_id) is session:
            del self.sessions[session.cpe_id]
        self.dirty.discard(session)
        self.wheel.discard(session)
        self.info_due.pop(session, None)
        self._send_stats_of(session)
        ended = {"op": "ended", "cpe": session.cpe_id, "gen": session.generation, "reason": session.reason}
        self._send(ended)

    # --- periodic ----------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Only the sessions that asked for this moment: idle ones are due every keepalive_s."""
        now = time.monotonic()
        for session in self.wheel.due(now):
            info_at = self.info_due.get(session)
            if session.ended or info_at is None:
                continue
            check_info = now >= info_at
            if check_info:
                self.info_due[session] = info_at = now + INFO_EVERY_S
            session.housekeeping(now, check_info=check_info)
            if not session.ended:
                self.wheel.schedule(session, min(session.housekeeping_due(now), info_at))

    def _report_stats(self) -> None:
        cpes: dict[str, Any] = {}
        details: dict[str, list[dict[str, Any]]] = {}
        now = time.monotonic()
        for session in list(self.dirty):  # a subflow reading below may mark its session
            if session.ended:
                continue
            deltas = session.take_deltas()
            # busy = packets moved (a keepalive alone wakes a session without moving its counters)
            busy = deltas is not None and len(details) < SUBFLOWS_PER_REPORT
            if busy and now - session.subflows_read_at >= SUBFLOWS_EVERY_S:
                session.subflows_read_at = now
                # the count follows too, not only at the next MPTCP_INFO round (up to 30 s away)
                infos = session.read_subflows()
                if infos is not None:
                    details[session.cpe_id] = [subflow_row(sf) for sf in infos]
            if deltas is not None or session.round_subflows != session.subflows:
                cpes[session.cpe_id] = [deltas or [], session.subflows]
                session.round_subflows = session.subflows
        self.dirty.clear()
        if cpes:
            self._send({"op": "stats", "cpes": cpes})
        elif now - self.sent_at >= HEARTBEAT_S:
            self._send({"op": "alive"})
        batch = list(details.items())
        for i in range(0, len(batch), SUBFLOWS_PER_MESSAGE):
            self._send({"op": "subflows", "cpes": dict(batch[i : i + SUBFLOWS_PER_MESSAGE])})

    def _send_stats_of(self, session: Session) -> None:
        deltas = session.take_deltas()
        if deltas is not None:
            cpes = {session.cpe_id: [deltas, 0]}
            self._send({"op": "stats", "cpes": cpes})

    def _send(self, message: dict[str, Any]) -> None:
        """Queue for the control process; a full channel never blocks the loop or loses a message."""
        self.sent_at = time.monotonic()
        try:
            if not self.outbox.push(message):
                self.loop.modify(self.chan.fileno(), IN | OUT)
        except OSError:  # the control process is gone: nothing left to work for
            self.done = True


def _brief(message: dict[str, Any]) -> dict[str, Any]:
    return {"op": "admitted", "cpe": message["cpe"], "gen": message["gen"], "peer": message.get("peer", "")}


def main(chan_fd: int, index: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        chan = socket.socket(fileno=chan_fd)
        if chan.family != socket.AF_UNIX:
            raise OSError(f"a {chan.family.name} socket")
    except OSError as exc:  # run by hand: this command is only for the BGW's control process
        reason = exc.strerror or str(exc)
        print(
            f"mptcp-tunnel worker: --channel-fd {chan_fd}: not the BGW's channel ({reason})",
            file=sys.stderr,
        )
        return exitcodes.CONFIG_ERROR
    return Worker(chan, index).run()
