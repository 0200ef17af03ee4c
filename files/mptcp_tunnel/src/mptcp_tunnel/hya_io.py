"""HYA baseline mode, datapath: TUN <-> one UDP socket per access link (``mode: hya``).

The same TUN front-end as the MPTCP mode (CPE: ``tunnel.tun_name`` with ``cpe.routes``; BGW:
``mt-<id>`` for its first configured CPE with that CPE's prefixes), but every inner packet is
sent on its own, numbered, over ONE link picked by the proportional scheduler, and the receiver
restores the order with the JUGGLER-style buffer (:mod:`mptcp_tunnel.hya_core`). Nothing is
retransmitted: a packet lost on a link is a hole the buffer skips after ``ooo_timeout_ms``.

Each link's socket is bound to our address on that link and connected to the peer's address
on it, so the kernel routes it over that link (on-link peer, or the policy routing that
``setup-network`` installs for the CPE's link addresses) and only the peer's datagrams arrive.
This mode exists for the benchmarks; it has no authentication and no source filtering.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import socket
import threading
import time

from mptcp_tunnel import metrics, netsetup, sdnotify
from mptcp_tunnel.config import AgentConfig, IPNetwork
from mptcp_tunnel.hya_core import HyaReceiver, HyaSender, HyaSettings
from mptcp_tunnel.tun import open_tun, sync_routes

log = logging.getLogger("mptcp_tunnel.hya")

SOCKET_BUFFER = 4 * 1024 * 1024
READ_BUDGET = 256  # packets per source per loop turn, so no source starves the others
PROBE_INTERVAL_S = 2.0
IP_MTU_DISCOVER = 10  # <linux/in.h>; not exported by Python's socket module
IP_PMTUDISC_DONT = 0
MAX_WAIT_S = 0.5  # the stop event is checked at least this often
_DROPPABLE = (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EMSGSIZE, errno.EHOSTUNREACH)


def _tun_plan(cfg: AgentConfig) -> tuple[str, str, tuple[IPNetwork, ...]]:
    """(peer label for metrics, TUN name, prefixes routed into it) for this role."""
    if cfg.role == "cpe":
        assert cfg.cpe is not None
        return cfg.cpe.id, cfg.tunnel.tun_name, cfg.cpe.routes
    assert cfg.bgw is not None
    if not cfg.bgw.cpes:
        raise ValueError("bgw.cpes: HYA mode needs one CPE")
    if len(cfg.bgw.cpes) > 1:
        log.warning("HYA mode serves one CPE; using %s, ignoring the rest", cfg.bgw.cpes[0].id)
    cpe = cfg.bgw.cpes[0]
    return cpe.id, f"mt-{cpe.id}"[:15], cpe.prefixes


def _link_socket(local: str, remote: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        # Let the kernel fragment rather than refuse a datagram above the path MTU.
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.bind((local, port))
        sock.connect((remote, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HyaDatapath:
    """The event loop: TUN -> scheduler -> link sockets; link sockets -> reorder -> TUN."""

    def __init__(self, tun_fd: int, socks: list[socket.socket], settings: HyaSettings) -> None:
        self.tun_fd = tun_fd
        self.socks = socks
        self.sender = HyaSender(settings.weights, epoch=random.getrandbits(16))
        self.receiver = HyaReceiver(
            ooo_timeout=settings.ooo_timeout_ms / 1000.0,
            inseq_timeout=settings.inseq_timeout_ms / 1000.0,
            max_held=settings.max_held,
        )
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.tx_drops = self.rx_drops = 0
        self.per_link_tx = [0] * len(socks)

    def run(self, stop: threading.Event) -> None:
        poller = select.epoll()
        try:
            poller.register(self.tun_fd, select.EPOLLIN)
            by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
            for s in self.socks:
                poller.register(s.fileno(), select.EPOLLIN)
            next_probe = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_probe:
                    self._probe()
                    next_probe = now + PROBE_INTERVAL_S
                deadline = self.receiver.next_deadline()
                wait = MAX_WAIT_S if deadline is None else max(0.0, deadline - now)
                for fd, _ in poller.poll(min(wait, MAX_WAIT_S, next_probe - now)):
                    if fd == self.tun_fd:
                        self._from_tun()
                    else:
                        self._from_link(by_fd[fd])
                self._deliver(time.monotonic())
        finally:
            poller.close()

    def _probe(self) -> None:
        datagram = self.sender.probe()
        for sock in self.socks:
            try:
                sock.send(datagram)
            except OSError as exc:
                if exc.errno not in _DROPPABLE:
                    raise

    def _from_tun(self) -> None:
        for _ in range(READ_BUDGET):
            try:
                packet = os.read(self.tun_fd, 65536)
            except BlockingIOError:
                return
            if not packet:
                return
            link, datagram = self.sender.send(packet)
            try:
                self.socks[link].send(datagram)
            except OSError as exc:
                if exc.errno not in _DROPPABLE:
                    raise
                self.tx_drops += 1
                continue
            self.tx_packets += 1
            self.tx_bytes += len(packet)
            self.per_link_tx[link] += 1

    def _from_link(self, index: int) -> None:
        sock = self.socks[index]
        now = time.monotonic()
        for _ in range(READ_BUDGET):
            try:
                datagram = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ECONNREFUSED: the peer is not up yet
                if exc.errno not in _DROPPABLE:
                    raise
                return
            self.receiver.receive(datagram, now)

    def _deliver(self, now: float) -> None:
        for packet in self.receiver.poll(now):
            try:
                os.write(self.tun_fd, packet)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINVAL):
                    raise
                self.rx_drops += 1
                continue
            self.rx_packets += 1
            self.rx_bytes += len(packet)


def run_hya(cfg: AgentConfig, settings: HyaSettings, stop: threading.Event) -> int:
    """Run the HYA datapath until ``stop`` is set. Returns an exit code (0 clean, 1 error)."""
    try:
        peer, tun_name, prefixes = _tun_plan(cfg)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if not settings.links:
        log.error("hya.links: no links configured")
        return 1
    if cfg.role == "cpe":
        netsetup.apply_logged(cfg)  # policy routing from each link address, as in MPTCP mode
    mtu = settings.effective_tun_mtu(cfg.tunnel.mtu)
    tun_fd = open_tun(tun_name, mtu, vnet=False)[0]
    socks: list[socket.socket] = []
    try:
        for link in settings.links:
            try:
                socks.append(_link_socket(link.local, link.remote, settings.port))
            except OSError as exc:
                log.error(
                    "hya link %s -> %s port %d: %s",
                    link.local,
                    link.remote,
                    settings.port,
                    exc.strerror,
                )
                return 1
        sync_routes(tun_name, prefixes)
        log.info(
            "HYA mode: %s (mtu %d), links %s, ratio %d:%d, ooo %.1f ms, inseq %.1f ms",
            tun_name,
            mtu,
            ", ".join(f"{k.local}->{k.remote}" for k in settings.links),
            settings.ratio_fixed,
            settings.ratio_cellular,
            settings.ooo_timeout_ms,
            settings.inseq_timeout_ms,
        )
        metrics.SESSION_UP.labels(cpe=peer).set(1)
        metrics.SUBFLOWS.labels(cpe=peer).set(len(socks))
        sdnotify.notify("READY=1")
        datapath = HyaDatapath(tun_fd, socks, settings)
        published: dict[str, int] = {}
        reporter = threading.Thread(
            target=_report_metrics, args=(datapath, peer, stop, published), daemon=True
        )
        reporter.start()
        datapath.run(stop)
        reporter.join()
        _publish(datapath, peer, published)
        st = datapath.receiver.buffer.stats
        log.info(
            "HYA stopped: tx %d pkts (per link %s, %d dropped), rx %d pkts; reorder: in-order %d,"
            " reordered %d, lost %d, late %d, dup %d, frame errors %s",
            datapath.tx_packets,
            datapath.per_link_tx,
            datapath.tx_drops,
            datapath.rx_packets,
            st.in_order,
            st.reordered,
            st.lost,
            st.late,
            st.duplicates,
            datapath.receiver.errors or "none",
        )
        return 0
    except OSError as exc:
        log.error("HYA datapath failed: %s", exc)
        return 1
    finally:
        metrics.SESSION_UP.labels(cpe=peer).set(0)
        for sock in socks:
            sock.close()
        os.close(tun_fd)


def _publish(datapath: HyaDatapath, peer: str, last: dict[str, int]) -> None:
    now = {
        "tx_p": datapath.tx_packets,
        "tx_b": datapath.tx_bytes,
        "rx_p": datapath.rx_packets,
        "rx_b": datapath.rx_bytes,
    }
    metrics.PACKETS.labels(cpe=peer, direction="tx").inc(now["tx_p"] - last.get("tx_p", 0))
    metrics.BYTES.labels(cpe=peer, direction="tx").inc(now["tx_b"] - last.get("tx_b", 0))
    metrics.PACKETS.labels(cpe=peer, direction="rx").inc(now["rx_p"] - last.get("rx_p", 0))
    metrics.BYTES.labels(cpe=peer, direction="rx").inc(now["rx_b"] - last.get("rx_b", 0))
    last.update(now)


def _report_metrics(datapath: HyaDatapath, peer: str, stop: threading.Event, last: dict[str, int]) -> None:
    """Copy the datapath's plain counters into Prometheus once a second (off the hot path)."""
    while not stop.wait(1.0):
        _publish(datapath, peer, last)
