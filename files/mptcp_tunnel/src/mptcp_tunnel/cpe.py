"""CPE role: keep one authenticated MPTCP session to the BGW, reconnecting with backoff.

The session runs in the same engine as the BGW's (``engine.session`` in an ``engine.loop``), with one
worker: this process. Connecting and the handshake are blocking, with timeouts; nothing else is.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from mptcp_tunnel import exitcodes, metrics, netsetup, sdnotify, shaping, status
from mptcp_tunnel import handshake as hs
from mptcp_tunnel.backoff import Backoff
from mptcp_tunnel.capio import CapTracker
from mptcp_tunnel.config import AgentConfig, ConfigError, CpeSettings, Link, load_for_reload
from mptcp_tunnel.engine.loop import EventLoop
from mptcp_tunnel.engine.session import Buffers, Session
from mptcp_tunnel.exchange import HANDSHAKE_TIMEOUT_S, Rejected, client_handshake, client_tls
from mptcp_tunnel.framing import ControlType
from mptcp_tunnel.linkmetrics import SubflowMetrics
from mptcp_tunnel.linkstate import LinkEvent, LinkMonitor
from mptcp_tunnel.linkwatch import LinkWatch
from mptcp_tunnel.mptcp import (
    MptcpFallback,
    SubflowInfo,
    mptcp_info,
    mptcp_socket,
    set_congestion_control,
    subflow_infos,
)
from mptcp_tunnel.overflow import OverflowPolicy
from mptcp_tunnel.runtime import TICK_S, Runtime
from mptcp_tunnel.tls import TlsChannel, TlsError, client_context
from mptcp_tunnel.tun import TunError, offload_supported, open_tun, sync_routes

log = logging.getLogger("mptcp_tunnel.cpe")

CONNECT_TIMEOUT_S = 3.0
RECONCILE_S = 5.0  # re-apply routing/endpoints (a link going down flushes its routes)
# The kernel never retries a subflow that died (a reset, a NAT that forgot it): a link that is up and has
# had no subflow at this many ticks in a row gets its endpoint re-created, which opens a new one (a
# join in progress is listed, so this does not cut it short), and again every as many ticks after.
SUBFLOW_MISSING_TICKS = 2
# SHAPE_RATE goes out when the rates change and again at the next two ticks (_learn_overhead calls
# _reshape each tick): a control frame the full socket could not take is lost, and the BGW applies
# only changes.
SHAPE_SENDS = 3


class ConnectFailed(Exception):
    pass


class CpeAgent:
    def __init__(self, cfg: AgentConfig, runtime: Runtime) -> None:
        assert cfg.cpe is not None
        self.cfg = cfg
        self.rt = runtime
        self.backoff = Backoff(cfg.cpe.reconnect_initial_s, cfg.cpe.reconnect_max_s)
        self.problems: frozenset[str] = frozenset()
        self.missing_subflow: dict[str, int] = {}
        self.last_reconcile = 0.0
        self.loop = EventLoop()
        self.buffers = Buffers(cfg.tunnel.batch_bytes)
        self.offer = hs.Feature.QUIET_BGW  # the BGW's ACKs of our keepalives tell us it is alive
        self.ticks = 0
        self.tls_ctx = client_context(cfg.tls) if cfg.tls is not None else None
        self.monitor = LinkMonitor([link.name for link in cfg.cpe.links], cfg.cpe.failover, time.monotonic())
        self.watch: LinkWatch | None = None
        self.session: Session | None = None
        self.session_via: str | None = None
        self.link_reason: dict[str, str] = {}
        self.subflow_metrics = SubflowMetrics([link.name for link in cfg.cpe.links])
        self.tunnel_bytes = {"tx": 0, "rx": 0}
        self.overflow = self._overflow_policy(cfg)
        self.caps = CapTracker(cfg.cpe)
        self.shaped: shaping.ShapeRates | None = None  # cpe.shape_share: the session's rates now
        self.shape_sends = 0
        self.overhead = {"up": shaping.Overhead(), "down": shaping.Overhead()}
        runtime.on_reload = self.reload

    @property
    def cpe(self) -> CpeSettings:
        assert self.cfg.cpe is not None
        return self.cfg.cpe

    @staticmethod
    def _overflow_policy(cfg: AgentConfig) -> OverflowPolicy | None:
        assert cfg.cpe is not None
        metrics.POLICY_CELLULAR_ACTIVE.set(0 if cfg.cpe.policy in ("backup", "overflow") else 1)
        if cfg.cpe.policy != "overflow":
            return None
        capacity = sum(link.rate_mbit for link in cfg.cpe.links if link.kind == "fixed") * 1e6
        return OverflowPolicy(cfg.cpe.overflow, capacity)

    @property
    def overflowing(self) -> bool:
        return self.overflow is not None and self.overflow.active

    def _apply(self) -> None:
        """Routing and endpoints as configured, minus the endpoints of links found down."""
        self.problems = netsetup.apply_logged(
            self.cfg,
            self.problems,
            down=self.monitor.excluded,
            overflowing=self.overflowing,
            capped=self.caps.spent,
        )
        self._reshape()

    def _reshape(self) -> None:
        """cpe.shape_share: shape at the share of the carrying links' rates, upstream here and
        downstream at the BGW (SHAPE_RATE). Without it, a session that had it goes back to
        tunnel.shape_mbit, and the BGW to its own setting."""
        session = self.session
        if session is None or session.ended:
            return
        share = self.cpe.shape_share
        if not share:
            if self.shaped is not None:
                self.shaped = None
                session.set_shape(self.cfg.tunnel.shape_mbit * 1e6)
                session.send_control(ControlType.SHAPE_RATE, shaping.encode_rate(0))
                log.info("shaper: cpe.shape_share off")
            return
        standby = self._backup()
        links = shaping.carrying(self.cpe.links, self.monitor.is_up, lambda link: standby[link.name])
        up, down = self.overhead["up"], self.overhead["down"]
        rates = shaping.rates(links, share, up.factor, down.factor)
        if rates is None:
            return  # every link down: nothing flows, the last rates stand
        if shaping.moved(self.shaped, rates):
            self.shaped = rates
            self.shape_sends = SHAPE_SENDS
            session.set_shape(rates.up_bps)
            metrics.SHAPE_RATE.labels("up").set(rates.up_bps)
            metrics.SHAPE_RATE.labels("down").set(rates.down_bps)
            factors = f"line/stream bytes up {up.factor:.3f}, down {down.factor:.3f}"
            log.info("shaper: %s; %s", rates.describe(), factors)
        if self.shape_sends and self.shaped is not None:
            self.shape_sends -= 1
            session.send_control(ControlType.SHAPE_RATE, shaping.encode_rate(self.shaped.down_bps))

    def _policy_tick(self) -> None:
        if self.overflow is None:
            return
        decision = self.overflow.sample(time.monotonic(), self.tunnel_bytes["tx"], self.tunnel_bytes["rx"])
        if decision is None:
            return
        log.info("policy overflow: %s", decision.reason)
        metrics.POLICY_CELLULAR_ACTIVE.set(1 if decision.cellular_active else 0)
        metrics.POLICY_CHANGES.labels("join" if decision.cellular_active else "leave").inc()
        self._apply()  # flips the cellular endpoints' backup flag in place (MP_PRIO)

    def _cap_tick(self) -> None:
        before = self.caps.spent
        self.caps.tick()
        if self.caps.spent != before:
            self._apply()  # the capped link's backup flag changes in place (MP_PRIO)

    def run(self) -> int:
        self.watch = LinkWatch(
            self.cpe.links,
            str(self.cpe.bgw_address),
            self.monitor,
            self._on_link_event,
            self._on_carrier_back,
            self._stalled,
        )
        for link in self.cpe.links:
            metrics.LINK_UP.labels(link.name).set(1 if self.monitor.is_up(link.name) else 0)
        self._apply()
        offload = self.cfg.tunnel.offload
        if offload != "off":
            if offload_supported():
                self.offer |= hs.Feature.VNET_HDR
            elif offload == "on":
                raise TunError("tunnel.offload is on but this kernel's TUN driver refuses offload")
        tun_fd, _index = open_tun(self.cfg.tunnel.tun_name, self.cfg.tunnel.mtu)
        self.loop.wake_on_signals()
        try:
            sync_routes(self.cfg.tunnel.tun_name, self.cpe.routes)
            sdnotify.notify("READY=1")
            log.info(
                "CPE %s up: TUN %s, BGW %s port %d",
                self.cpe.id,
                self.cfg.tunnel.tun_name,
                self.cpe.bgw_address,
                self.cfg.tunnel.port,
            )
            return self._loop(tun_fd)
        finally:
            os.close(tun_fd)
            self.loop.close()
            self.watch.close()
            self.caps.close()

    def _loop(self, tun_fd: int) -> int:
        attempt = 0
        while not self.rt.stop.is_set():
            if attempt:
                metrics.RECONNECTS.inc()
                # Links may have flapped while we were away: their policy routes must be back first.
                self._apply()
            attempt += 1
            try:
                sock, link_name, features, tls, leftover = self.connect()
            except MptcpFallback as exc:
                metrics.FALLBACKS.inc()
                log.error("refusing to run as plain TCP: %s (is MPTCP blocked on the path?)", exc)
                return exitcodes.FALLBACK
            except (ConnectFailed, Rejected) as exc:
                delay = self.backoff.next_delay()
                log.warning("cannot reach the BGW: %s; retrying in %.1f s", exc, delay)
                self.rt.sleep(delay)
                continue
            self.backoff.reset()
            vnet = bool(features & hs.Feature.VNET_HDR)
            session = Session(
                self.loop,
                self.buffers,
                sock,
                tun_fd,
                self.cpe.id,
                self.cfg.tunnel,
                vnet=vnet,
                acked_liveness=bool(features & hs.Feature.QUIET_BGW),
                source_filter=None,
                owns_tun=False,
                on_end=lambda _s: None,
                tls=tls,
                rx_tail=leftover,
            )
            session.start()
            self.session, self.session_via = session, link_name
            self.shaped = None
            for overhead in self.overhead.values():
                overhead.restart()  # a new session's counters (the factors learned so far stay)
            self._reshape()
            metrics.SESSION_UP.labels(self.cpe.id).set(1)
            metrics.SESSION_OFFLOAD.labels(self.cpe.id).set(1 if vnet else 0)
            if self.offer & hs.Feature.VNET_HDR and not vnet:
                log.warning("TUN offload not negotiated (the BGW does not offer it): per-packet mode")
            log.info(
                "session up via the %s link (%s, %s, %s)",
                link_name,
                "TLS 1.3" if tls is not None else "NO encryption",
                "offload" if vnet else "per-packet",
                "quiet BGW" if session.acked_liveness else "keepalives both ways",
            )
            self._run_session(session)
            self.session = None
            metrics.SESSION_UP.labels(self.cpe.id).set(0)
            metrics.SESSION_OFFLOAD.labels(self.cpe.id).set(0)
            metrics.SESSIONS_ENDED.labels(self.cpe.id, session.reason.split(":")[0]).inc()
            if session.reason.startswith("fallback"):
                log.error("session ended: %s", session.reason)
                return exitcodes.FALLBACK
            if not self.rt.stop.is_set():
                delay = self.backoff.next_delay()
                log.warning("session ended: %s; reconnecting in %.1f s", session.reason, delay)
                self.rt.sleep(delay)
        log.info("stopped")
        return exitcodes.OK

    def _run_session(self, session: Session) -> None:
        """Drive the loop until the session ends or we are told to stop."""
        self.loop.call_every(TICK_S, lambda: self._tick(session))
        assert self.watch is not None
        self.watch.attach(self.loop)
        self.loop.run(lambda: session.ended or self.rt.stop.is_set())
        self.watch.detach()
        if not session.ended:
            session.end("local_stop: agent stopping")
        self._flush_stats(session)
        # A new loop for the next session: the old one's timers belong to the old session.
        self.loop.close()
        self.loop = EventLoop()
        self.loop.wake_on_signals()

    def _tick(self, session: Session) -> None:
        if session.ended:
            return
        self.ticks += 1
        infos = session.housekeeping(time.monotonic(), check_info=True)
        if session.ended:
            return
        metrics.SUBFLOWS.labels(self.cpe.id).set(session.subflows)  # established ones (housekeeping)
        self._flush_stats(session)
        if infos is not None:  # read by housekeeping (check_info)
            self.subflow_metrics.update(infos, self._link_of(), self._backup())
            self._learn_overhead(session, infos)
            self._bring_back_subflows(infos)
        self._policy_tick()
        self._cap_tick()
        self.rt.tick()
        self.reconcile()

    def _flush_stats(self, session: Session) -> None:
        deltas = session.take_deltas()
        if deltas is not None:
            metrics.apply_session_stats(self.cpe.id, deltas)
            self.tunnel_bytes["tx"] += deltas[1]
            self.tunnel_bytes["rx"] += deltas[3]

    def _stalled(self, links: list[str], after_s: float) -> frozenset[str]:
        """Of ``links``, those whose established subflow holds data without an ACK for ``after_s``."""
        session = self.session
        if session is None or session.ended:
            return frozenset()
        try:
            infos = subflow_infos(session.sock)
        except OSError:
            return frozenset()
        link_of = self._link_of()
        return frozenset(
            link_of[sf.local]
            for sf in infos
            if sf.state == "established"
            and sf.local in link_of
            and link_of[sf.local] in links
            and sf.unacked > 0
            and sf.last_ack_recv_ms >= after_s * 1000
        )

    def _link_of(self) -> dict[str, str]:
        return {str(link.address): link.name for link in self.cpe.links}

    def _backup(self) -> dict[str, bool]:
        capped = self.caps.spent
        return {
            link.name: bool(
                netsetup.endpoint_flags(self.cfg, link, self.overflowing, capped) & netsetup.FLAG_BACKUP
            )
            for link in self.cpe.links
        }

    def snapshot(self) -> dict[str, Any]:
        """For ``mptcp-tunnel status`` (called from the control thread: reads only)."""
        session = self.session
        subflows: list[SubflowInfo] = []
        if session is not None and not session.ended:
            try:
                subflows = subflow_infos(session.sock)
            except (OSError, ValueError):
                subflows = []
        return status.cpe_snapshot(
            cpe_id=self.cpe.id,
            policy=self.cpe.policy,
            session_up=session is not None and not session.ended,
            session_via=self.session_via,
            links=self.cpe.links,
            link_up={link.name: self.monitor.is_up(link.name) for link in self.cpe.links},
            link_reason=dict(self.link_reason),
            backup=self._backup(),
            subflows=subflows,
            tunnel_bytes=dict(self.tunnel_bytes),
            policy_state=self._policy_state(),
            caps=[st.as_dict() for st in self.caps.statuses()],
            shaper=self._shaper_state(),
        )

    def _learn_overhead(self, session: Session, infos: list[SubflowInfo]) -> None:
        """Once a tick: the subflows' bytes on the line against the tunnel's stream, each way."""
        rates = self.shaped
        if rates is None:
            return
        up = sum(shaping.line_bytes(sf.bytes_sent, sf.segs_out, ":" in sf.local) for sf in infos)
        down = sum(shaping.line_bytes(sf.bytes_received, sf.segs_in, ":" in sf.local) for sf in infos)
        busy = shaping.BUSY_SHARE * TICK_S / 8
        self.overhead["up"].sample(up, session.written, busy * rates.up_bps)
        self.overhead["down"].sample(down, session.received, busy * rates.down_bps)
        self._reshape()

    def _shaper_state(self) -> dict[str, Any]:
        rates = self.shaped
        state: dict[str, Any] = {}
        if rates is not None:
            state = {
                "share": self.cpe.shape_share,
                "links": list(rates.links),
                "up_mbps": round(rates.up_bps / 1e6, 2),
                "down_mbps": round(rates.down_bps / 1e6, 2),
                "line_per_stream_byte": {d: round(o.factor, 3) for d, o in self.overhead.items()},
            }
        if self.cpe.link_share:
            state["link_limits_mbps"] = {
                link.name: round(netsetup.link_limit_bps(link, self.cpe.link_share) / 1e6, 2)
                for link in self.cpe.links
            }
        return state

    def _policy_state(self) -> dict[str, Any]:
        if self.overflow is None:
            return {}
        return {
            "cellular_active": self.overflow.active,
            "demand_mbps": round(self.overflow.demand_bps / 1e6, 2),
            "fixed_capacity_mbps": round(self.overflow.capacity / 1e6, 2),
        }

    def reconcile(self) -> None:
        """Every RECONCILE_S: repair routing and endpoints (lost subflows: _bring_back_subflows)."""
        now = time.monotonic()
        if now - self.last_reconcile < RECONCILE_S:
            return
        self.last_reconcile = now
        self._apply()

    def _bring_back_subflows(self, infos: list[SubflowInfo]) -> None:
        """Each tick: re-create the endpoint of a link that is up and has had no subflow for
        SUBFLOW_MISSING_TICKS ticks in a row."""
        local = {sf.local for sf in infos}
        for link in self.cpe.links:
            if str(link.address) in local or not self.monitor.is_up(link.name):
                self.missing_subflow.pop(link.name, None)
                continue
            streak = self.missing_subflow.get(link.name, 0) + 1
            self.missing_subflow[link.name] = streak
            if streak % SUBFLOW_MISSING_TICKS == 0:
                if streak == SUBFLOW_MISSING_TICKS:
                    log.info("no subflow on the %s link: asking the kernel for a new one", link.name)
                try:
                    netsetup.recreate_endpoint(self.cfg, link, self.overflowing, self.caps.spent)
                except (netsetup.NetworkSetupError, OSError) as exc:
                    log.warning("cannot re-create the %s endpoint: %s", link.name, exc)

    def _on_link_event(self, ev: LinkEvent) -> None:
        """A link went down or came back: its endpoint goes out or back in, at once."""
        survivors = [lk for lk in self.cpe.links if lk.name != ev.link and self.monitor.is_up(lk.name)]
        others = [lk.name for lk in survivors]
        # Did only standby (backup) links survive? Asked before _apply changes the flags.
        flags = [netsetup.endpoint_flags(self.cfg, lk, self.overflowing, self.caps.spent) for lk in survivors]
        standby_takes_over = not ev.up and bool(flags) and all(f & netsetup.FLAG_BACKUP for f in flags)
        metrics.LINK_UP.labels(ev.link).set(1 if ev.up else 0)
        metrics.LINK_CHANGES.labels(ev.link, "up" if ev.up else "down").inc()
        stamp = time.strftime("%H:%M:%S")
        self.link_reason[ev.link] = f"{stamp} {'up' if ev.up else 'down'}: {ev.reason}"
        if ev.up:
            log.info("link %s up (%s): endpoint restored, a new subflow joins", ev.link, ev.reason)
        elif others:
            log.warning(
                "link %s down (%s): failover, its subflow is closed, traffic on %s",
                ev.link,
                ev.reason,
                ", ".join(others),
            )
        else:
            log.warning("link %s down (%s): every link is down, endpoints kept", ev.link, ev.reason)
        self._apply()
        if ev.up:
            self.missing_subflow.pop(ev.link, None)
        elif standby_takes_over:
            self._restart_congestion_control()

    def _restart_congestion_control(self) -> None:
        """An idle standby subflow now carries everything: spare it BBR's ProbeRTT (mptcp.restart_bbr),
        here and, by a PATH_CHANGE frame, at the BGW."""
        session = self.session
        if session is None or session.ended:
            return
        restarted = session.path_changed(time.monotonic())
        what = "congestion control restarted (BBR)" if restarted else "congestion control kept (not BBR)"
        log.info("standby link took over: %s; BGW asked to do the same", what)

    def _on_carrier_back(self, link: Link) -> None:
        log.info("link %s: carrier back, probing before use", link.name)
        self._apply()  # the link's policy routes went with its carrier: probes need them

    def connect(self) -> tuple[socket.socket, str, hs.Feature, TlsChannel | None, bytes]:
        """Connect from each link's address in turn (primary first) and authenticate."""
        errors = []
        # Links found down are tried last (the primary first among the rest).
        for link in sorted(self.cpe.links, key=lambda lk: not self.monitor.is_up(lk.name)):
            family = socket.AF_INET if link.address.version == 4 else socket.AF_INET6
            if self.cpe.bgw_address.version != link.address.version:
                continue
            sock = mptcp_socket(family)
            try:
                sock.settimeout(CONNECT_TIMEOUT_S)
                set_congestion_control(sock, self.cfg.tunnel.congestion_control)
                sock.bind((str(link.address), 0))
                sock.connect((str(self.cpe.bgw_address), self.cfg.tunnel.port))
                mptcp_info(sock)  # raises MptcpFallback if MP_CAPABLE did not survive the path
                sock.settimeout(HANDSHAKE_TIMEOUT_S)
                if self.tls_ctx is not None:
                    features, tls, leftover = client_tls(sock, self.cpe, self.tls_ctx, self.offer)
                else:
                    features, tls, leftover = client_handshake(sock, self.cpe, self.offer), None, b""
                sock.settimeout(None)
                return sock, link.name, features, tls, leftover
            except (MptcpFallback, Rejected):
                sock.close()
                raise
            except (OSError, hs.HandshakeError, TlsError) as exc:
                sock.close()
                errors.append(f"{link.name}: {getattr(exc, 'strerror', None) or exc}")
        raise ConnectFailed("; ".join(errors))

    def reload(self) -> None:
        new = load_for_reload(self.cfg, {"tunnel.tun_name": self.cfg.tunnel.tun_name})
        if new is None or new.cpe is None:
            return
        if (new.tls is None) != (self.cfg.tls is None):
            log.error("reload refused: changing tunnel.encryption needs a restart")
            return
        if new.tls is not None:
            try:  # load_for_reload loaded it once already; a file may have changed since
                self.tls_ctx = client_context(new.tls)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                return
        if new.cpe.policy != self.cpe.policy or new.cpe.overflow != self.cpe.overflow:
            log.info("policy changed: %s -> %s (the connection stays up)", self.cpe.policy, new.cpe.policy)
            self.overflow = self._overflow_policy(new)
        self.cfg = new
        self.caps.reconfigure(new.cpe)
        self.backoff = Backoff(new.cpe.reconnect_initial_s, new.cpe.reconnect_max_s)
        self._apply()
        sync_routes(new.tunnel.tun_name, new.cpe.routes)
        log.info(
            "config reloaded (BGW address, port, secret and certificates apply from the next connection)"
        )
