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

from mptcp_tunnel.config import Link
from mptcp_tunnel.engine.loop import IN, EventLoop
from mptcp_tunnel.linkstate import LinkEvent, LinkMonitor

log = logging.getLogger("mptcp_tunnel.linkwatch")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
ICMP6_FILTER = 1  # <netinet/icmp6.h>: which ICMPv6 types a raw socket receives


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
    ) -> None:
        self.links = {link.interface: link for link in links}
        self.monitor = monitor
        self.on_event = on_event
        self.on_carrier_back = on_carrier_back
        self.rtnl = IPRoute()
        self.rtnl.bind(groups=RTMGRP_LINK)
        self.probers: list[_Prober] = []
        if monitor.settings.probe_interval_s > 0:
            base = os.getpid() & 0xFF00
            for i, link in enumerate(links):
                try:
                    self.probers.append(_Prober(link, target, base | i))
                except OSError as exc:
                    log.warning("link %s: no probes (%s): only its carrier is watched", link.name, exc)
        self.loop: EventLoop | None = None
        self._initial_carrier()

    def _initial_carrier(self) -> None:
        now = time.monotonic()
        for ifname, link in self.links.items():
            found = self.rtnl.link_lookup(ifname=ifname)
            flags = self.rtnl.get_links(found[0])[0]["flags"] if found else 0
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
        self._emit(self.monitor.poll(now))

    def _reply_handler(self, prober: _Prober) -> Callable[[int], None]:
        return lambda _events: self._on_reply(prober)

    def _on_reply(self, prober: _Prober) -> None:
        if prober.answered():
            self._emit(self.monitor.probe_reply(prober.link.name, time.monotonic()))

    def _on_rtnl(self, _events: int) -> None:
        try:
            messages = self.rtnl.get()
        except OSError as exc:
            log.warning("rtnetlink: %s", exc)
            return
        now = time.monotonic()
        for msg in messages:
            name = msg.get_attr("IFLA_IFNAME")
            link = self.links.get(name)
            if link is None:
                continue
            present = msg["event"] != "RTM_DELLINK" and _carrier(msg["flags"])
            before = self.monitor.has_carrier(link.name)
            self._emit(self.monitor.carrier(link.name, present, now))
            if present and not before:
                self.on_carrier_back(link)  # routes first, so that the probes can answer


def _carrier(flags: int) -> bool:
    return bool(flags & IFF_UP and flags & IFF_LOWER_UP)
