"""BGW control process: configuration, TUN devices and routes, admission, "one session per CPE".

It never touches a data byte. With TLS (the default) it reads only a connection's CLAIM (the CPE id it
says it is, <= 70 bytes) and hands the raw connection, with a duplicate of that CPE's TUN fd, to the
worker process (``engine.worker``) chosen by the CPE id; the worker runs TLS and decides. One CPE always
lands on the same worker, so a reconnect replaces the old session inside that worker's loop. With
``encryption: none`` the HMAC handshake runs here and authenticated connections are handed over.

Admission no attacker can block: one deadline for the whole handshake (claim + TLS + exchange), at most
``bgw.max_pending_per_source`` handshakes per source address (IPv6: per /64), a global budget sized by memory
(``pending_budget``); plain-TCP connections are closed right after accept.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptcp_tunnel import exitcodes, metrics, netsetup, sdnotify, status
from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import AgentConfig, CpeEntry, load_for_reload, tunnel_to_wire
from mptcp_tunnel.engine import channel
from mptcp_tunnel.engine.loop import IN, EventLoop
from mptcp_tunnel.exchange import HANDSHAKE_TIMEOUT_S  # the BGW applies it to the whole exchange
from mptcp_tunnel.loglimit import LogLimiter
from mptcp_tunnel.mptcp import MptcpFallback, mptcp_info, mptcp_socket, set_congestion_control
from mptcp_tunnel.runtime import Runtime
from mptcp_tunnel.tun import TunError, add_routes, delete_group, delete_link, offload_supported, open_tun
from mptcp_tunnel.tun import remove_routes as remove_tun_routes

log = logging.getLogger("mptcp_tunnel.bgw")

# Pending handshakes (claim or TLS not finished), all sources together: beyond the budget new
# connections are closed at once. One costs at most PENDING_COST (its socket's queues, a TLS object in a
# worker, a duplicated TUN fd); the budget is 1/16 of the memory available at start, within these bounds.
PENDING_COST = 64 * 1024
MIN_PENDING_BUDGET = 1024
MAX_PENDING_BUDGET = 65536
LISTEN_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn
ACCEPT_BUDGET = 128  # accepts per loop turn
ACCEPT_PAUSE_S = 0.2  # after EMFILE and friends: let sessions and handshakes free fds first
WORKER_STOP_S = 5.0
WORKER_HUNG_S = 15.0  # a worker silent this long (it reports every HEARTBEAT_S at most) is killed
PROGRESS_EVERY = 250  # long loops (TUN setup/teardown) tell systemd they are alive this often


def tun_name(cpe_id: str) -> str:
    return f"mt-{cpe_id}"


def tun_group(port: int) -> int:
    """The netdev group of this agent's TUN devices: one request deletes them all at stop."""
    return 0x4D540000 | port


@dataclass
class CpeSlot:
    entry: CpeEntry
    tun_fd: int
    index: int
    worker: int
    generation: int = 0  # of the latest connection handed to the worker
    up: bool = False
    live_gen: int = 0  # of the session that is up


@dataclass
class Pending:
    conn: socket.socket
    peer: str
    source: str  # the key of the per-source limit
    deadline: float
    machine: hs.ServerHandshake | None  # encryption none
    claim: hs.MessageReader | None = None  # encryption tls


def source_key(peer: str) -> str:
    """Per-source accounting: an IPv4 address, or an IPv6 /64 (one host can hold a whole /64)."""
    addr = ipaddress.ip_address(peer)
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{peer}/64", strict=False))
    return peer


def pending_budget(cpes: int) -> int:
    """How many handshakes may be pending at once, from MemAvailable and the fd limit.

    A pending handshake holds at most 2 fds in one process (a worker: the socket and the TUN dup; the
    control process holds 1 while it reads the CLAIM); every process has the same limit and the
    control process also holds one TUN fd per CPE.
    """
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        kib = 1 << 20
    import resource

    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = kib * 1024 // 16 // PENDING_COST
    return max(MIN_PENDING_BUDGET, min(MAX_PENDING_BUDGET, budget, max(64, (fds - cpes - 256) // 2)))


@dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    chan: socket.socket | None = None
    restarts: int = 0
    cpes: set[str] = field(default_factory=set)
    heard_at: float = 0.0  # the worker's last message (it sends one at least every HEARTBEAT_S)


class BgwAgent:
    def __init__(self, cfg: AgentConfig, runtime: Runtime) -> None:
        assert cfg.bgw is not None
        self.cfg = cfg
        self.rt = runtime
        self.loop = EventLoop()
        self.ipr = IPRoute()
        self.slots: dict[str, CpeSlot] = {}
        self.pending: dict[int, Pending] = {}
        self.nworkers = cfg.tunnel.workers or os.cpu_count() or 1
        self.workers = [WorkerHandle(i) for i in range(self.nworkers)]
        self.group = tun_group(cfg.tunnel.port)
        self.listener: socket.socket | None = None
        self.offload = cfg.tunnel.offload != "off" and offload_supported()
        self._last_accept_log = 0.0
        self.budget = pending_budget(len(cfg.bgw.cpes))
        self.per_source: dict[str, int] = {}
        self.admitting: dict[tuple[str, int], tuple[str, int]] = {}  # (cpe, gen) -> (source, worker)
        self.limiter = LogLimiter(logger=log)
        self.own_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        # CPE id -> (when, rows): each active session's subflows as its worker last read them (status)
        self.subflow_views: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        runtime.on_reload = self.reload

    # --- main --------------------------------------------------------------------------------------
    def run(self) -> int:
        assert self.cfg.bgw is not None
        netsetup.apply_logged(self.cfg)
        listen = self.cfg.bgw.listen_address
        listener = mptcp_socket(socket.AF_INET if listen.version == 4 else socket.AF_INET6)
        self.listener = listener
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_congestion_control(listener, self.cfg.tunnel.congestion_control)  # inherited on accept
            try:
                listener.bind((str(listen), self.cfg.tunnel.port))
            except OSError as exc:
                log.error("cannot listen on %s port %d: %s", listen, self.cfg.tunnel.port, exc.strerror)
                return exitcodes.RUNTIME_ERROR
            if self.cfg.tunnel.offload == "on" and not self.offload:
                log.error("tunnel.offload is on but this kernel's TUN driver refuses offload")
                return exitcodes.RUNTIME_ERROR
            delete_group(self.group, self.ipr)  # leftovers of a process that was killed
            self.own_addresses = self._local_addresses()
            self._sync_slots(self.cfg.bgw.cpes)
            for handle in self.workers:
                self._spawn(handle)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
            self.loop.wake_on_signals()
            self.loop.register(listener.fileno(), IN, self._on_listener)
            self.loop.call_every(0.5, self._tick)
            sdnotify.notify("READY=1")
            log.info(
                "BGW listening on %s port %d for %d CPE(s), %d worker(s), offload %s, %s, "
                "pending handshakes <= %d (<= %d per source)%s",
                listen,
                self.cfg.tunnel.port,
                len(self.slots),
                self.nworkers,
                "offered" if self.offload else "off",
                "TLS 1.3" if self.cfg.tls is not None else "NO encryption",
                self.budget,
                self.cfg.bgw.max_pending_per_source,
                f", name {self.cfg.bgw.name}" if self.cfg.bgw.name else "",
            )
            self.loop.run(self.rt.stop.is_set)
        finally:
            self._shutdown()
        log.info("stopped")
        return exitcodes.OK

    def _tick(self) -> None:
        self.rt.tick()
        now = time.monotonic()
        for fd, pending in list(self.pending.items()):
            if now >= pending.deadline:
                metrics.HANDSHAKE_FAILURES.labels("timeout").inc()
                if self.limiter.allow("handshake timeout"):
                    log.warning("handshake with %s timed out", pending.peer)
                self._drop_pending(fd)
        for handle in self.workers:
            if handle.proc is not None and handle.proc.poll() is not None:
                self._worker_died(handle)
            elif handle.proc is not None and now - handle.heard_at > WORKER_HUNG_S:
                self._on_worker(handle)  # what it sent while this process was busy counts
                if handle.proc is None or now - handle.heard_at <= WORKER_HUNG_S:
                    continue
                # Its sessions would look alive to quiet CPEs (their kernels still ACK) and carry
                # nothing: end it, and its CPEs reconnect to its successor.
                log.error(
                    "worker %d sent nothing for %.0f s (hung?): killing it", handle.index, WORKER_HUNG_S
                )
                handle.heard_at = now
                handle.proc.kill()

    def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        if self.listener is not None:
            self.loop.unregister(self.listener.fileno())
            self.listener.close()
        for fd in list(self.pending):
            self._drop_pending(fd)
        for handle in self.workers:
            if handle.chan is not None:
                with contextlib.suppress(OSError):
                    channel.send(handle.chan, {"op": "stop"})
        deadline = time.monotonic() + WORKER_STOP_S
        for handle in self.workers:
            if handle.proc is None:
                continue
            try:
                handle.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.proc.kill()
                handle.proc.wait()
            if handle.chan is not None:
                self._drain_worker(handle)
                handle.chan.close()
        # Devices first, in one batch; then the fds are cheap to close.
        delete_group(self.group, self.ipr)
        for slot in self.slots.values():
            os.close(slot.tun_fd)
            metrics.SESSION_UP.labels(slot.entry.id).set(0)
        self.slots.clear()
        self.ipr.close()
        self.loop.close()

    # --- workers -----------------------------------------------------------------------------------
    def _spawn(self, handle: WorkerHandle) -> None:
        ours, theirs = channel.pair()
        cmd = [
            sys.executable,
            "-m",
            "mptcp_tunnel",
            "worker",
            "--channel-fd",
            str(theirs.fileno()),
            "--index",
            str(handle.index),
            "--log-level",
            self.cfg.log_level,
        ]
        handle.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()])
        handle.heard_at = time.monotonic()
        theirs.close()
        handle.chan = ours
        ours.setblocking(False)
        channel.send(ours, self._settings_message())
        self.loop.register(ours.fileno(), IN, lambda _e: self._on_worker(handle))

    def _settings_message(self) -> dict[str, Any]:
        tls = self.cfg.tls
        return {
            "op": "settings",
            "tunnel": tunnel_to_wire(self.cfg.tunnel),
            "tls": None if tls is None else {k: getattr(tls, k) for k in tls.__dataclass_fields__},
            "offload": self.offload,
        }

    def _worker_died(self, handle: WorkerHandle) -> None:
        if handle.proc is None:
            return
        code = handle.proc.wait()
        if handle.chan is not None:
            self._drain_worker(handle)
            self.loop.unregister(handle.chan.fileno())
            handle.chan.close()
            handle.chan = None
        handle.proc = None
        for key, (source, worker) in list(self.admitting.items()):
            if worker == handle.index:  # its handshakes died with it
                del self.admitting[key]
                self._release_source(source)
        lost = sorted(handle.cpes)
        for cpe_id in lost:
            slot = self.slots.get(cpe_id)
            if slot is not None and slot.up:
                self._session_down(slot, "worker_died: its worker process exited")
        handle.cpes.clear()
        if self.rt.stop.is_set():
            return
        metrics.WORKER_RESTARTS.inc()
        handle.restarts += 1
        delay = min(30.0, 0.5 * 2 ** min(handle.restarts - 1, 6))
        log.error(
            "worker %d exited (code %s); %d session(s) lost; restarting it in %.1f s",
            handle.index,
            code,
            len(lost),
            delay,
        )
        self.loop.call_later(delay, lambda: self._respawn(handle))

    def _respawn(self, handle: WorkerHandle) -> None:
        if handle.proc is None and not self.rt.stop.is_set():
            self._spawn(handle)
            log.info("worker %d restarted", handle.index)

    def _on_worker(self, handle: WorkerHandle) -> None:
        if handle.chan is None:
            return
        for _ in range(256):
            try:
                got = channel.receive(handle.chan)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                self._worker_died(handle)
                return
            message, fds = got
            for fd in fds:  # workers never send fds; never keep what we did not ask for
                os.close(fd)
            handle.heard_at = time.monotonic()
            self._worker_message(handle, message)

    def _drain_worker(self, handle: WorkerHandle) -> None:
        """Read the last messages of a worker that stopped (its final counters)."""
        assert handle.chan is not None
        handle.chan.setblocking(False)
        while True:
            try:
                got = channel.receive(handle.chan)
            except (BlockingIOError, OSError):
                return
            if got is None:
                return
            self._worker_message(handle, got[0])

    def _worker_message(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "stats":
            for cpe_id, (deltas, subflows) in message["cpes"].items():
                metrics.apply_session_stats(cpe_id, deltas)
                if subflows:
                    metrics.SUBFLOWS.labels(cpe_id).set(subflows)
        elif op == "subflows":
            now = time.monotonic()
            for cpe_id, rows in message["cpes"].items():
                if cpe_id in handle.cpes:  # a late report of an ended session is not kept
                    self.subflow_views[cpe_id] = (now, rows)
        elif op == "ended":
            cpe_id, reason = message["cpe"], message["reason"]
            if reason.startswith("frame_error: "):
                metrics.FRAME_ERRORS.labels(reason.split(": ", 2)[1]).inc()
            elif reason.startswith("fallback"):
                metrics.FALLBACKS.inc()
            elif reason.startswith("stream_stalled"):
                metrics.STREAM_STALLS.inc()
            slot = self.slots.get(cpe_id)
            if slot is not None and slot.live_gen == message["gen"] and slot.up:
                handle.cpes.discard(cpe_id)
                self._session_down(slot, message["reason"])
        elif op == "admitted":
            self._admitted(handle, message)
        # "alive": the worker's heartbeat; receiving it was the point (heard_at)

    def _session_up(
        self, handle: WorkerHandle, slot: CpeSlot, gen: int, vnet: bool, peer: str, how: str
    ) -> None:
        if slot.up:  # the CPE reconnected: its older session was replaced in the worker, count it
            metrics.SESSIONS_ENDED.labels(slot.entry.id, "replaced").inc()
        slot.up = True
        slot.live_gen = gen
        handle.cpes.add(slot.entry.id)
        metrics.SESSION_UP.labels(slot.entry.id).set(1)
        metrics.SESSION_OFFLOAD.labels(slot.entry.id).set(1 if vnet else 0)
        mode = "offload" if vnet else "per-packet"
        log.info("CPE %s: session up from %s (worker %d, %s%s)", slot.entry.id, peer, handle.index, how, mode)

    def snapshot(self) -> dict[str, Any]:
        """``mptcp-tunnel status`` (called from the control socket's thread)."""
        return status.bgw_snapshot(self.subflow_views, time.monotonic())

    def _session_down(self, slot: CpeSlot, reason: str) -> None:
        slot.up = False
        self.subflow_views.pop(slot.entry.id, None)
        metrics.SESSION_UP.labels(slot.entry.id).set(0)
        metrics.SUBFLOWS.labels(slot.entry.id).set(0)
        metrics.SESSION_OFFLOAD.labels(slot.entry.id).set(0)
        metrics.SESSIONS_ENDED.labels(slot.entry.id, reason.split(":")[0]).inc()
        log.warning("CPE %s: session ended: %s", slot.entry.id, reason)

    def _admitted(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        """A worker finished a TLS admission: the session is up there, or the connection is closed."""
        cpe_id, gen = message["cpe"], int(message["gen"])
        held = self.admitting.pop((cpe_id, gen), None)
        if held is not None:
            self._release_source(held[0])
        peer = message.get("peer", "?")
        if not message["ok"]:
            reason = str(message.get("reason", "error"))
            metrics.HANDSHAKE_FAILURES.labels(reason).inc()
            if self.limiter.allow("refused connection"):
                log.warning("refused connection from %s claiming %s: %s", peer, cpe_id, message.get("detail"))
            return
        slot = self.slots.get(cpe_id)
        if slot is None:
            return  # removed meanwhile; the worker got the detach after this
        self._session_up(handle, slot, gen, bool(message["vnet"]), peer, "TLS 1.3, ")

    # --- admission ---------------------------------------------------------------------------------
    def _on_listener(self, _events: int) -> None:
        assert self.listener is not None
        for _ in range(ACCEPT_BUDGET):
            try:
                conn, peer = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            if len(self.pending) + len(self.admitting) >= self.budget:
                metrics.HANDSHAKE_FAILURES.labels("too_many_pending").inc()
                conn.close()
                continue
            source = source_key(str(peer[0]))
            assert self.cfg.bgw is not None
            if self.per_source.get(source, 0) >= self.cfg.bgw.max_pending_per_source:
                metrics.HANDSHAKE_FAILURES.labels("too_many_from_source").inc()
                conn.close()
                continue
            self._start_handshake(conn, str(peer[0]), source)

    def _release_source(self, source: str) -> None:
        left = self.per_source.get(source, 0) - 1
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    def _accept_failed(self, exc: OSError) -> None:
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        metrics.ACCEPT_ERRORS.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_accept_log >= 5.0:
            self._last_accept_log = now
            log.error("accept failed: %s; pausing new connections for %.1f s", exc.strerror, ACCEPT_PAUSE_S)
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            assert self.listener is not None
            fd = self.listener.fileno()
            self.loop.modify(fd, 0)
            self.loop.call_later(ACCEPT_PAUSE_S, lambda: self._resume_accept(fd))

    def _resume_accept(self, fd: int) -> None:
        if self.listener is not None and self.listener.fileno() == fd and self.loop.registered(fd):
            self.loop.modify(fd, IN)

    def _start_handshake(self, conn: socket.socket, peer: str, source: str) -> None:
        try:
            conn.setblocking(False)
            try:
                mptcp_info(conn)
            except MptcpFallback:
                metrics.FALLBACKS.inc()
                metrics.HANDSHAKE_FAILURES.labels("fallback").inc()
                if self.limiter.allow("plain TCP"):
                    log.warning("refused connection from %s: peer connected with plain TCP", peer)
                conn.close()  # before it costs anything: no state, no reply
                return
            machine = None
            claim = None
            if self.cfg.tls is None:
                machine = hs.ServerHandshake()
                conn.send(machine.greeting())  # 24 bytes into an empty send buffer: never short
            else:
                claim = hs.MessageReader((hs.MsgType.CLAIM,), hs.MAX_CLAIM_BODY)
        except OSError as exc:
            metrics.HANDSHAKE_FAILURES.labels("io_error").inc()
            if self.limiter.allow("handshake io"):
                log.warning("handshake with %s failed: %s", peer, exc.strerror or exc)
            conn.close()
            return
        fd = conn.fileno()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        self.pending[fd] = Pending(conn, peer, source, deadline, machine, claim)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        handler = self._on_claim if claim is not None else self._on_handshake
        self.loop.register(fd, IN, lambda _e: handler(fd))

    def _drop_pending(self, fd: int) -> Pending | None:
        pending = self._forget_pending(fd)
        if pending is not None:
            pending.conn.close()
        return pending

    def _forget_pending(self, fd: int) -> Pending | None:
        pending = self.pending.pop(fd, None)
        if pending is not None:
            self.loop.unregister(fd)
            self._release_source(pending.source)
        return pending

    def _send_to_worker(
        self, handle: WorkerHandle, slot: CpeSlot, pending: Pending, message: dict[str, Any]
    ) -> bool:
        """Send the connection and the CPE's TUN to its worker; ours are closed either way."""
        try:
            if handle.chan is None:  # the worker died a moment ago
                raise ConnectionError("worker restarting")
            channel.send(handle.chan, message, [pending.conn.fileno(), slot.tun_fd])
        except OSError as exc:
            metrics.HANDSHAKE_FAILURES.labels("worker_unavailable").inc()
            log.error("cannot hand CPE %s to worker %d: %s", slot.entry.id, handle.index, exc)
            return False
        finally:
            pending.conn.close()  # on success the worker holds the connection now
        return True

    def _refuse(self, fd: int, pending: Pending, exc: hs.HandshakeError) -> None:
        """Count, log (rate-limited) and close a failed handshake; the peer learns no more than it must."""
        metrics.HANDSHAKE_FAILURES.labels(exc.reason).inc()
        if self.limiter.allow("refused connection"):
            log.warning("refused connection from %s: %s", pending.peer, exc)
        self._forget_pending(fd)
        # which id or secret was wrong stays in our log: the peer is told only that it failed
        public = "authentication failed" if exc.reason in ("unknown_cpe", "auth_failed") else str(exc)
        self._reject(pending.conn, public)

    def _on_claim(self, fd: int) -> None:
        """TLS: read the CLAIM, exactly (the ClientHello behind it is the worker's), then hand over."""
        pending = self.pending.get(fd)
        if pending is None or pending.claim is None:
            return
        try:
            data = pending.conn.recv(pending.claim.wants())
            if not data:
                raise hs.HandshakeError("closed", "peer closed the connection before its claim")
            got = pending.claim.add(data)
            if got is None:
                return
            cpe_id = hs.decode_claim(got[1])
            slot = self.slots.get(cpe_id)
            if slot is None:
                raise hs.HandshakeError("unknown_cpe", f"no CPE {hs.escape(cpe_id)!r} is configured")
            if self.workers[slot.worker].chan is None:
                raise hs.HandshakeError("worker_unavailable", "busy, try again in a moment")
        except BlockingIOError:
            return
        except hs.HandshakeError as exc:
            self._refuse(fd, pending, exc)
            return
        except OSError:
            metrics.HANDSHAKE_FAILURES.labels("io_error").inc()
            self._drop_pending(fd)
            return
        self.loop.unregister(fd)
        del self.pending[fd]
        self._hand_to_tls(slot, pending)

    def _hand_to_tls(self, slot: CpeSlot, pending: Pending) -> None:
        """The worker runs TLS within what is left of the deadline; the source stays counted until then."""
        handle = self.workers[slot.worker]
        assert handle.chan is not None
        # CLOCK_MONOTONIC is the same in every process
        message = self._session_message("admit", slot, deadline=pending.deadline, peer=pending.peer)
        if not self._send_to_worker(handle, slot, pending, message):
            self._release_source(pending.source)
            return
        self.admitting[(slot.entry.id, slot.generation)] = (pending.source, handle.index)

    def _on_handshake(self, fd: int) -> None:
        pending = self.pending.get(fd)
        if pending is None or pending.machine is None:
            return
        try:
            data = pending.conn.recv(hs.HEADER.size + hs.MAX_BODY)
            if not data:
                raise hs.HandshakeError("closed", "peer closed the connection during the handshake")
            hello = pending.machine.receive(data)
            if hello is None:
                return
            slot = self.slots.get(hello.cpe_id)
            if slot is None:
                raise hs.HandshakeError("unknown_cpe", f"no CPE {hello.cpe_id!r} is configured")
            hs.verify_hello(hello, slot.entry.secret, pending.machine.nonce)
            if self.workers[slot.worker].chan is None:
                raise hs.HandshakeError("worker_unavailable", "busy, try again in a moment")
            features = hello.features & hs.bgw_offer(self.offload)
            welcome = hs.encode_welcome(hello, slot.entry.secret, pending.machine.nonce, features)
            if pending.conn.send(welcome) != len(welcome):
                raise hs.HandshakeError("io_error", "could not send WELCOME")
        except BlockingIOError:
            return
        except hs.HandshakeError as exc:
            self._refuse(fd, pending, exc)
            return
        except OSError as exc:
            metrics.HANDSHAKE_FAILURES.labels("io_error").inc()
            if self.limiter.allow("handshake io"):
                log.warning("handshake with %s failed: %s", pending.peer, exc.strerror or exc)
            self._drop_pending(fd)
            return
        self._forget_pending(fd)
        self._hand_over(slot, pending, features)

    def _hand_over(self, slot: CpeSlot, pending: Pending, features: hs.Feature) -> None:
        """Give the connection and the CPE's TUN to its worker; the old session ends there, atomically."""
        handle = self.workers[slot.worker]
        if handle.chan is None:  # worker restarting: the CPE retries in a moment
            metrics.HANDSHAKE_FAILURES.labels("worker_unavailable").inc()
            pending.conn.close()
            return
        vnet = bool(features & hs.Feature.VNET_HDR)
        quiet = bool(features & hs.Feature.QUIET_BGW)
        message = self._session_message("attach", slot, vnet=vnet, quiet=quiet)
        if not self._send_to_worker(handle, slot, pending, message):
            return
        self._session_up(handle, slot, slot.generation, vnet, pending.peer, "")

    @staticmethod
    def _session_message(op: str, slot: CpeSlot, **extra: Any) -> dict[str, Any]:
        """What a worker needs to run the CPE's next session (a new generation of its slot)."""
        slot.generation += 1
        return {
            "op": op,
            "cpe": slot.entry.id,
            "gen": slot.generation,
            **extra,
            "prefixes": [str(p) for p in slot.entry.prefixes],
            "shape_mbit": slot.entry.shape_mbit,
        }

    @staticmethod
    def _reject(conn: socket.socket, reason: str) -> None:
        with contextlib.suppress(OSError):
            conn.send(hs.encode_reject(reason), socket.MSG_DONTWAIT)
        conn.close()

    # --- configuration -----------------------------------------------------------------------------
    def _worker_of(self, cpe_id: str) -> int:
        return zlib.crc32(cpe_id.encode()) % self.nworkers

    def _progress(self, done: int, total: int, what: str) -> None:
        if done % PROGRESS_EVERY == 0:
            sdnotify.keepalive(f"{what} {done}/{total}")

    def _sync_slots(self, entries: tuple[CpeEntry, ...]) -> None:
        """Add, change and remove CPEs to match ``entries``, touching only those that differ."""
        wanted = {e.id: e for e in entries}
        removed = [slot for cpe_id, slot in self.slots.items() if cpe_id not in wanted]
        for n, slot in enumerate(removed, 1):
            self._remove_slot(slot)
            self._progress(n, len(removed), "removing CPEs")
        added = [e for e in entries if e.id not in self.slots]
        changed = [e for e in entries if e.id in self.slots and self.slots[e.id].entry != e]
        for n, entry in enumerate(added, 1):
            own = self._covers_own_address(entry)
            if own:
                log.error("CPE %s refused: its prefix %s holds this BGW's address %s", entry.id, *own)
                continue
            try:
                fd, index = open_tun(tun_name(entry.id), self.cfg.tunnel.mtu, self.group, self.ipr)
            except (TunError, OSError, NetlinkError) as exc:
                log.error("CPE %s: cannot set up its TUN device: %s", entry.id, exc)
                continue
            try:
                add_routes(index, entry.prefixes, self.ipr)
            except (OSError, NetlinkError) as exc:  # e.g. an IPv6 prefix on a host with IPv6 off
                log.error("CPE %s refused: the kernel refuses a route of its prefixes: %s", entry.id, exc)
                delete_link(index, self.ipr)
                os.close(fd)
                continue
            self.slots[entry.id] = CpeSlot(entry, fd, index, self._worker_of(entry.id))
            self._progress(n, len(added), "adding CPEs")
            if len(added) <= 20:
                log.info(
                    "CPE %s configured: TUN %s, prefixes %s",
                    entry.id,
                    tun_name(entry.id),
                    ", ".join(map(str, entry.prefixes)),
                )
        if len(added) > 20:
            log.info("%d CPEs configured", len(added))
        for entry in changed:
            self._change_slot(self.slots[entry.id], entry)

    def _remove_slot(self, slot: CpeSlot) -> None:
        del self.slots[slot.entry.id]
        if slot.up:
            self._detach(slot, "cpe_removed: no longer in the configuration")
        # Deleting the link stops every fd of it (the worker's too) at once; its routes go with it.
        delete_link(slot.index, self.ipr)
        os.close(slot.tun_fd)
        metrics.SESSION_UP.labels(slot.entry.id).set(0)
        log.info("CPE %s removed", slot.entry.id)

    def _detach(self, slot: CpeSlot, reason: str) -> None:
        handle = self.workers[slot.worker]
        if handle.chan is not None:
            with contextlib.suppress(OSError):
                channel.send(handle.chan, {"op": "detach", "cpe": slot.entry.id, "reason": reason})
        handle.cpes.discard(slot.entry.id)
        self._session_down(slot, reason)

    def _local_addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            return [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in self.ipr.get_addr()]
        except (OSError, NetlinkError, ValueError):
            return []

    def _covers_own_address(self, entry: CpeEntry) -> tuple[str, str] | None:
        for net in entry.prefixes:
            for addr in self.own_addresses:
                if addr in net and not addr.is_loopback:
                    return str(net), str(addr)
        return None

    def _change_slot(self, slot: CpeSlot, entry: CpeEntry) -> None:
        own = self._covers_own_address(entry)
        if own:
            log.error("CPE %s: change refused, its prefix %s holds this BGW's address %s", entry.id, *own)
            return
        old = slot.entry
        if old.prefixes != entry.prefixes:
            try:
                add_routes(slot.index, [p for p in entry.prefixes if p not in old.prefixes], self.ipr)
            except (OSError, NetlinkError) as exc:
                log.error("CPE %s: change refused, the kernel refuses a route: %s", entry.id, exc)
                return
            remove_tun_routes(slot.index, [p for p in old.prefixes if p not in entry.prefixes], self.ipr)
        slot.entry = entry
        if old.prefixes != entry.prefixes:
            handle = self.workers[slot.worker]
            if slot.up and handle.chan is not None:
                prefixes = [str(p) for p in entry.prefixes]
                channel.send(handle.chan, {"op": "prefixes", "cpe": entry.id, "prefixes": prefixes})
        if old.secret != entry.secret and slot.up:
            self._detach(slot, "credentials_changed: the CPE's secret was changed")
        log.info("CPE %s updated", entry.id)

    def reload(self) -> None:
        assert self.cfg.bgw is not None
        new = load_for_reload(
            self.cfg,
            {
                "tunnel.port": self.cfg.tunnel.port,
                "bgw.listen_address": self.cfg.bgw.listen_address,
                "tunnel.workers": self.cfg.tunnel.workers,
            },
        )
        if new is None or new.bgw is None:
            return
        if (new.tls is None) != (self.cfg.tls is None):
            log.error("reload refused: changing tunnel.encryption needs a restart")
            return
        try:
            self.cfg = new
            netsetup.apply_logged(new)
            self.own_addresses = self._local_addresses()
            self._sync_slots(new.bgw.cpes)
            for handle in self.workers:
                if handle.chan is not None:
                    channel.send(handle.chan, self._settings_message())
        except Exception:  # a reload never takes the BGW down; what was applied stays applied
            log.exception("reload failed part-way; the BGW keeps running")
            return
        log.info("config reloaded: %d CPE(s)", len(self.slots))
