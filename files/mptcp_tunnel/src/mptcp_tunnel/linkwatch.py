"""The I/O side of link monitoring: netlink carrier events and ICMP echo probes per access link.

Feeds ``linkstate.LinkMonitor`` from an event loop: an rtnetlink socket subscribed to link changes
(pyroute2) and, per link, a raw ICMP socket bound to the link's address and interface, so its echo
requests leave by that link (source-based policy routing, like the link's subflow) and only that
link's replies come back. The target is the BGW's service address: what the subflow needs to reach.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from mptcp_tunnel.config import Link
from mptcp_tunnel.engine.loop import IN, EventLoop, Timer
from mptcp_tunnel.linkstate import LinkEvent, LinkMonitor

log = logging.getLogger("mptcp_tunnel.linkwatch")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
ICMP6_FILTER = 1  # <netinet/icmp6.h>: which ICMPv6 types a raw socket receives
RTM_NEWLINK, RTM_DELLINK = 16, 17
_NLMSGHDR = struct.Struct("=IHHII")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class _Prober:
    """Echo requests over one link; answers are matched by identifier and sequence number."""

    def __init__(self, link: Link, target: str, ident: int) -> None:
        self.link = link
        self.v6 = link.address.version == 6
        self.target = target
        self.ident = ident
        self.seq = 0
        if self.v6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            # Only echo replies (the kernel computes the ICMPv6 checksum itself).
            block_all = bytearray(b"\xff" * 32)
            block_all[ICMP6_ECHOREPLY >> 5] &= ~(1 << (ICMP6_ECHOREPLY & 31)) & 0xFF
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, bytes(block_all))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, link.interface.encode())
        self.sock.bind((str(link.address), 0))

    def send(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        kind = ICMP6_ECHO if self.v6 else ICMP_ECHO
        head = struct.pack("!BBHHH", kind, 0, 0, self.ident, self.seq)
        payload = b"mptcp-tunnel probe"
        if not self.v6:
            head = struct.pack("!BBHHH", kind, 0, _checksum(head + payload), self.ident, self.seq)
        with contextlib.suppress(OSError):  # no route (carrier lost): the probe is simply lost
            self.sock.sendto(head + payload, (self.target, 0))

    def answered(self) -> int:
        """Read what arrived; returns how many were answers to our probes."""
        n = 0
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                return n
            if not self.v6:
                data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets deliver the IP header
            if len(data) < 8:
                continue
            kind, _code, _sum, ident, _seq = struct.unpack_from("!BBHHH", data)
            if kind == (ICMP6_ECHOREPLY if self.v6 else ICMP_ECHOREPLY) and ident == self.ident:
                n += 1

    def close(self) -> None:
        self.sock.close()


class LinkWatch:
    """Registers carrier and probe sockets in ``loop`` and reports ``LinkEvent``s to ``on_event``."""

    def __init__(
        self,
        links: tuple[Link, ...],
        target: str,
        monitor: LinkMonitor,
        on_event: Callable[[LinkEvent], None],
        on_carrier_back: Callable[[Link], None],
        stalled: Callable[[list[str], float], frozenset[str]] = lambda _links, _after: frozenset(),
    ) -> None:
        self.links = {link.interface: link for link in links}
        self.monitor = monitor
        self.on_event = on_event
        self.on_carrier_back = on_carrier_back
        self.stalled = stalled  # which of these links' subflows hold data unacknowledged this long
        # A plain rtnetlink socket for the events (pyroute2 0.9's IPRoute, once used for a request,
        # dropped link events in a test here); pyroute2 parses the messages.
        self.rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.rtnl.bind((0, RTMGRP_LINK))
        self.rtnl.setblocking(False)
        self.probers: list[_Prober] = []
        if monitor.settings.probe_interval_s > 0:
            base = os.getpid() & 0xFF00
            for i, link in enumerate(links):
                try:
                    self.probers.append(_Prober(link, target, base | i))
                except OSError as exc:
                    log.warning("link %s: no probes (%s): only its carrier is watched", link.name, exc)
        self.loop: EventLoop | None = None
        self._check: Timer | None = None  # a verdict due between two probes
        self._initial_carrier()

    def _initial_carrier(self) -> None:
        now = time.monotonic()
        with IPRoute() as ipr:
            for ifname, link in self.links.items():
                found = ipr.link_lookup(ifname=ifname)
                flags = ipr.get_links(found[0])[0]["flags"] if found else 0
                self._emit(self.monitor.carrier(link.name, _carrier(flags), now))

    def attach(self, loop: EventLoop) -> None:
        """Start watching in ``loop`` (each session has a loop of its own)."""
        self.loop = loop
        self.monitor.resume(time.monotonic())
        loop.register(self.rtnl.fileno(), IN, self._on_rtnl)
        for prober in self.probers:
            loop.register(prober.sock.fileno(), IN, self._reply_handler(prober))
        if self.probers:
            loop.call_every(self.monitor.settings.probe_interval_s, self._probe)

    def detach(self) -> None:
        if self.loop is None:
            return
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self.loop.unregister(self.rtnl.fileno())
        for prober in self.probers:
            self.loop.unregister(prober.sock.fileno())
        self.loop = None

    def close(self) -> None:
        self.detach()
        for prober in self.probers:
            prober.close()
        self.rtnl.close()

    def _emit(self, events: list[LinkEvent]) -> None:
        for ev in events:
            self.on_event(ev)

    def _probe(self) -> None:
        if self.loop is None:
            return
        now = time.monotonic()
        for prober in self.probers:
            prober.send()
            self.monitor.probe_sent(prober.link.name, now)
        self._verdict(now)

    def _verdict(self, now: float) -> None:
        """Poll the monitor (asking the subflows about suspect links), and again before the next probe
        when a verdict falls due in between (``LinkMonitor.due``), or soon while a link is suspect: its
        subflow may confirm the silence a little later than the probes."""
        monitor = self.monitor
        suspects = monitor.suspects(now)
        stalled = self.stalled(suspects, monitor.settings.stalled_after_s) if suspects else frozenset()
        self._emit(monitor.poll(now, stalled))
        if self._check is not None or self.loop is None:
            return
        interval = monitor.settings.probe_interval_s
        due = monitor.due(now) or now + interval
        if any(monitor.is_up(name) for name in suspects):  # still suspect after the poll
            due = min(due, now + interval / 4)
        if due < now + interval:
            self._check = self.loop.call_later(due - now, self._on_check)

    def _on_check(self) -> None:
        self._check = None
        if self.loop is not None:
            self._verdict(time.monotonic())

    def _reply_handler(self, prober: _Prober) -> Callable[[int], None]:
        return lambda _events: self._on_reply(prober)

    def _on_reply(self, prober: _Prober) -> None:
        if prober.answered():
            self._emit(self.monitor.probe_reply(prober.link.name, time.monotonic()))

    def _on_rtnl(self, _events: int) -> None:
        for _ in range(64):  # bounded work per readiness event
            try:
                data = self.rtnl.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: events were lost; the probes still decide
                log.warning("rtnetlink: %s", exc.strerror or exc)
                return
            now = time.monotonic()
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind = _NLMSGHDR.unpack_from(data, off)[:2]
                if length < _NLMSGHDR.size:
                    break
                if kind in (RTM_NEWLINK, RTM_DELLINK):
                    self._link_message(data[off : off + length], kind, now)
                off += (length + 3) & ~3

    def _link_message(self, raw: bytes, kind: int, now: float) -> None:
        try:
            msg = ifinfmsg(raw)
            msg.decode()
            name = msg.get_attr("IFLA_IFNAME")
            flags = int(msg["flags"])
        except Exception:  # a message we cannot parse is not worth stopping for
            return
        link = self.links.get(name)
        if link is None:
            return
        present = kind != RTM_DELLINK and _carrier(flags)
        before = self.monitor.has_carrier(link.name)
        self._emit(self.monitor.carrier(link.name, present, now))
        if present and not before:
            self.on_carrier_back(link)  # routes first, so that the probes can answer


def _carrier(flags: int) -> bool:
    return bool(flags & IFF_UP and flags & IFF_LOWER_UP)
