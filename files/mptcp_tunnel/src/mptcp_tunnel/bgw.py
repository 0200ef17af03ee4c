"""BGW role: accept one authenticated MPTCP session per CPE; one TUN device per configured CPE."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass

from mptcp_tunnel import exitcodes, metrics, netsetup, sdnotify
from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import AgentConfig, CpeEntry, load_for_reload
from mptcp_tunnel.exchange import HANDSHAKE_TIMEOUT_S, read_message
from mptcp_tunnel.mptcp import MptcpFallback, mptcp_info, mptcp_socket, set_congestion_control
from mptcp_tunnel.runtime import Runtime
from mptcp_tunnel.session import Session
from mptcp_tunnel.srcfilter import SourceFilter
from mptcp_tunnel.tun import open_tun, sync_routes

log = logging.getLogger("mptcp_tunnel.bgw")

MAX_PENDING_HANDSHAKES = 64  # beyond this, new connections are closed at once (flood guard)


def tun_name(cpe_id: str) -> str:
    return f"mt-{cpe_id}"


@dataclass
class CpeSlot:
    entry: CpeEntry
    tun_fd: int
    source_filter: SourceFilter
    session: Session | None = None


class BgwAgent:
    def __init__(self, cfg: AgentConfig, runtime: Runtime) -> None:
        self.cfg = cfg
        self.rt = runtime
        self.slots: dict[str, CpeSlot] = {}
        self.lock = threading.Lock()
        self.handshake_slots = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)
        runtime.on_reload = self.reload

    def run(self) -> int:
        assert self.cfg.bgw is not None
        netsetup.apply_logged(self.cfg)
        listen = self.cfg.bgw.listen_address
        listener = mptcp_socket(socket.AF_INET if listen.version == 4 else socket.AF_INET6)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_congestion_control(listener, self.cfg.tunnel.congestion_control)  # inherited on accept
            try:
                listener.bind((str(listen), self.cfg.tunnel.port))
            except OSError as exc:
                log.error("cannot listen on %s port %d: %s", listen, self.cfg.tunnel.port, exc.strerror)
                return exitcodes.RUNTIME_ERROR
            listener.listen(128)
            listener.settimeout(1.0)
            self._sync_slots(self.cfg.bgw.cpes)
            sdnotify.notify("READY=1")
            log.info(
                "BGW listening on %s port %d for %d CPE(s)",
                listen,
                self.cfg.tunnel.port,
                len(self.slots),
            )
            while not self.rt.stop.is_set():
                self.rt.tick()
                self._poll_sessions()
                try:
                    conn, peer = listener.accept()
                except TimeoutError:
                    continue
                if not self.handshake_slots.acquire(blocking=False):
                    metrics.HANDSHAKE_FAILURES.labels("too_many_pending").inc()
                    conn.close()
                    continue
                threading.Thread(
                    target=self._admit_guarded, args=(conn, peer[0]), daemon=True, name=f"admit-{peer[0]}"
                ).start()
        finally:
            listener.close()
            self._sync_slots(())
        log.info("stopped")
        return exitcodes.OK

    def _poll_sessions(self) -> None:
        with self.lock:
            slots = list(self.slots.values())
        for slot in slots:
            session = slot.session
            if session is None:
                continue
            session.poll_info()
            if session.ended.is_set():
                log.warning("CPE %s: session ended: %s", slot.entry.id, session.reason)
                session.join()
                with self.lock:
                    if slot.session is session:
                        slot.session = None

    def _admit_guarded(self, conn: socket.socket, peer: str) -> None:
        try:
            self._admit(conn, peer)
        except Exception:  # a bug must cost one connection, never the listener
            log.exception("internal error while admitting %s", peer)
            conn.close()
        finally:
            self.handshake_slots.release()

    def _admit(self, conn: socket.socket, peer: str) -> None:
        """Handshake with a new connection; on success it becomes the CPE's session."""
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                mptcp_info(conn)
            except MptcpFallback:
                metrics.FALLBACKS.inc()
                raise hs.HandshakeError(
                    "fallback", "peer connected with plain TCP, MPTCP is required"
                ) from None
            server_nonce = hs.new_nonce()
            conn.sendall(hs.encode_challenge(server_nonce))
            mtype, body = read_message(conn)
            if mtype != hs.MsgType.HELLO:
                raise hs.HandshakeError("bad_message", f"expected HELLO, got {mtype.name}")
            hello = hs.decode_hello(body)
            with self.lock:
                slot = self.slots.get(hello.cpe_id)
            if slot is None:
                raise hs.HandshakeError("unknown_cpe", f"no CPE {hello.cpe_id!r} is configured")
            hs.verify_hello(hello, slot.entry.secret, server_nonce)
            features = hs.Feature.NONE  # TUN offload is not offered yet
            conn.sendall(hs.encode_welcome(hello, slot.entry.secret, server_nonce, features))
            conn.settimeout(None)
        except hs.HandshakeError as exc:
            metrics.HANDSHAKE_FAILURES.labels(exc.reason).inc()
            log.warning("refused connection from %s: %s", peer, exc)
            self._reject(
                conn,
                "authentication failed" if exc.reason in ("unknown_cpe", "auth_failed") else str(exc),
            )
            return
        except OSError as exc:
            metrics.HANDSHAKE_FAILURES.labels("io_error").inc()
            log.warning("handshake with %s failed: %s", peer, exc.strerror or exc)
            conn.close()
            return
        self._attach(slot, conn, peer)

    def _attach(self, slot: CpeSlot, conn: socket.socket, peer: str) -> None:
        with self.lock:
            if self.slots.get(slot.entry.id) is not slot:  # removed by a reload meanwhile
                conn.close()
                return
            old, slot.session = slot.session, None
        if old is not None:
            old.close("replaced: the CPE reconnected")
            old.join()
        session = Session(conn, slot.tun_fd, slot.entry.id, self.cfg.tunnel, source_filter=slot.source_filter)
        with self.lock:
            slot.session = session
        session.start()
        log.info("CPE %s: session up from %s", slot.entry.id, peer)

    @staticmethod
    def _reject(conn: socket.socket, reason: str) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(hs.encode_reject(reason))
        conn.close()

    def _sync_slots(self, entries: tuple[CpeEntry, ...]) -> None:
        """Create, update and remove per-CPE TUN devices, routes and sessions to match ``entries``."""
        wanted = {e.id: e for e in entries}
        with self.lock:
            removed = [s for cpe_id, s in self.slots.items() if cpe_id not in wanted]
            for slot in removed:
                del self.slots[slot.entry.id]
        for slot in removed:
            if slot.session is not None:
                slot.session.close("cpe_removed: no longer in the configuration")
                slot.session.join()
            os.close(slot.tun_fd)  # the device and its routes disappear with it
            metrics.SESSION_UP.labels(slot.entry.id).set(0)
            log.info("CPE %s removed", slot.entry.id)
        for entry in wanted.values():
            with self.lock:
                existing = self.slots.get(entry.id)
            if existing is None:
                fd = open_tun(tun_name(entry.id), self.cfg.tunnel.mtu)
                slot = CpeSlot(entry, fd, SourceFilter(entry.prefixes))
                with self.lock:
                    self.slots[entry.id] = slot
                log.info(
                    "CPE %s configured: TUN %s, prefixes %s",
                    entry.id,
                    tun_name(entry.id),
                    ", ".join(map(str, entry.prefixes)),
                )
            elif existing.entry != entry:
                slot = existing
                slot.entry = entry
                slot.source_filter = SourceFilter(entry.prefixes)
                if slot.session is not None:
                    slot.session.source_filter = slot.source_filter
                log.info("CPE %s updated", entry.id)
            sync_routes(tun_name(entry.id), entry.prefixes)

    def reload(self) -> None:
        assert self.cfg.bgw is not None
        new = load_for_reload(
            self.cfg, {"tunnel.port": self.cfg.tunnel.port, "bgw.listen_address": self.cfg.bgw.listen_address}
        )
        if new is None or new.bgw is None:
            return
        self.cfg = new
        netsetup.apply_logged(new)
        self._sync_slots(new.bgw.cpes)
        log.info("config reloaded: %d CPE(s)", len(self.slots))
