"""TUN devices: creation (ioctl) and configuration (pyroute2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptcp_tunnel.config import IPNetwork

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
IN6_ADDR_GEN = "IFLA_INET6_ADDR_GEN_MODE"
TX_QUEUE_LEN = 5000  # 1000 overflows as soon as the agent lags behind a burst


class TunError(Exception):
    pass


def open_tun(name: str, mtu: int, vnet_hdr: bool = False) -> int:
    """Create TUN ``name`` (gone again when the fd closes), bring it up; return a non-blocking fd."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {exc.strerror}") from None
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        # No IPv6 link-local on the tunnel (addr_gen_mode none): otherwise it chatters RS/MLD into it.
        with contextlib.suppress(NetlinkError):  # IPv6 disabled on this host: nothing to silence
            ipr.link("set", index=idx, af_spec={"attrs": [("AF_INET6", {"attrs": [(IN6_ADDR_GEN, 1)]})]})
        ipr.link("set", index=idx, mtu=mtu, txqlen=TX_QUEUE_LEN, state="up")
    return fd


def sync_routes(name: str, prefixes: Iterable[IPNetwork]) -> None:
    """Make ``prefixes`` exactly the main-table routes into TUN ``name`` (idempotent)."""
    wanted = {str(net) for net in prefixes}
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, oif=idx, table=RT_TABLE_MAIN):
                dst = f"{route.get_attr('RTA_DST') or _any(family)}/{route['dst_len']}"
                if route["proto"] != RTPROT_KERNEL and dst not in wanted:
                    ipr.route("del", dst=dst, oif=idx, family=family)
        for net in prefixes:
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            ipr.route("replace", dst=str(net), oif=idx, family=family)


def _any(family: int) -> str:
    return "0.0.0.0" if family == socket.AF_INET else "::"
