"""The lab's addressing plan (DESIGN.md, a contract) and building/removing it with pyroute2."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

ROLES = ("client", "cpe", "bgw", "server")
ROUTERS = ("cpe", "bgw")
MTU = 1500
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class End:
    role: str
    ifname: str
    addrs: tuple[str, ...]  # "address/prefixlen"


@dataclass(frozen=True)
class Wire:
    name: str
    a: End
    b: End


WIRES = (
    Wire(
        "client-lan",
        End("cpe", "lan0", ("192.168.10.1/24", "fd00:10::1/64")),
        End("client", "eth0", ("192.168.10.2/24", "fd00:10::2/64")),
    ),
    Wire(
        "fixed", End("cpe", "wan_fixed", ("10.1.0.1/30",)), End("bgw", "fixed0", ("10.1.0.2/30",))
    ),
    Wire(
        "cellular", End("cpe", "wan_cell", ("10.2.0.1/30",)), End("bgw", "cell0", ("10.2.0.2/30",))
    ),
    Wire(
        "server-lan",
        End("bgw", "lan0", ("172.16.0.1/24", "fd00:172::1/64")),
        End("server", "eth0", ("172.16.0.2/24", "fd00:172::2/64")),
    ),
)
ACCESS_LINKS = ("fixed", "cellular")

# Each access link runs through a router namespace that holds the link's rate limit, as a modem
# or a DSLAM would (the default; ``Lab(link_routers=False)`` or ``MT_LAB_LINK_ROUTERS=0`` put the
# tbf on the ends instead). A tbf on the sender's own interface is seen by TCP Small Queues, which
# keep the subflow's backlog in its socket: no delay and no loss from the "link", so slow start
# overshoots and windows never correct (README, "The shaper's bimodal uploads"). The router's
# ip_rcv drops the packet's socket reference before its tbf. Transparent: the link's two ends keep
# their addresses; the router answers ARP for each of them on the other side (proxy ARP) and
# forwards by host routes.
LINK_ROUTERS = {"fixed": "lfixed", "cellular": "lcell"}  # access link -> router role
ROUTER_CPE_IF, ROUTER_BGW_IF = "to_cpe", "to_bgw"  # the router's sides
ROUTER_ADDRS = ("10.250.0.1/32", "10.250.0.2/32")  # its own (ARP needs a source), never routed
ALL_ROLES = ROLES + tuple(LINK_ROUTERS.values())

# (role, destination, gateway)
ROUTES = (
    ("client", "0.0.0.0/0", "192.168.10.1"),
    ("client", "::/0", "fd00:10::1"),
    ("server", "0.0.0.0/0", "172.16.0.1"),
    ("server", "::/0", "fd00:172::1"),
)

SYSCTLS_ALL = {
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
}
SYSCTLS_ROUTER = {
    # the tunnel's MPTCP connection is long-lived and often idle between bursts: without this,
    # every idle period collapses its subflows' cwnd (RFC 2861) and each new inner flow starts
    # on a tunnel that is itself in slow start
    "net/ipv4/tcp_slow_start_after_idle": "0",
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv6/conf/default/forwarding": "1",
}


def wire(name: str) -> Wire:
    for w in WIRES:
        if w.name == name:
            return w
    raise KeyError(f"no such link {name!r} (have: {', '.join(w.name for w in WIRES)})")


def address(role: str, ifname: str | None = None, family: int = 4) -> str:
    """First address (without prefix length) of ``role`` (on ``ifname``) in ``family``."""
    for w in WIRES:
        for end in (w.a, w.b):
            if end.role == role and (ifname is None or end.ifname == ifname):
                for a in end.addrs:
                    ip = a.split("/")[0]
                    if (":" in ip) == (family == 6):
                        return ip
    raise KeyError(f"no IPv{family} address for {role} {ifname or ''}")


def exists(ns: str) -> bool:
    return ns in netns.listnetns()


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with the calling thread inside ``ns`` (for /proc/sys/net writes)."""
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


def set_sysctls(ns: str, values: dict[str, str]) -> None:
    with in_netns(ns):
        for key, value in values.items():
            with open(f"/proc/sys/{key}", "w") as fh:
                fh.write(value)


def netns_inode(ns: str) -> int | None:
    try:
        return os.stat(os.path.join(netns.NETNS_RUN_DIR, ns)).st_ino
    except OSError:
        return None


def build(names: dict[str, str], link_routers: bool = False) -> None:
    """Create namespaces, veths, addresses, routes and sysctls. ``names``: role -> netns (the link
    routers' too when ``link_routers``)."""
    roles = ALL_ROLES if link_routers else ROLES
    for role in roles:
        netns.create(names[role])
    for role in roles:
        with IPRoute(netns=names[role]) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        set_sysctls(names[role], SYSCTLS_ALL | (SYSCTLS_ROUTER if role in ROUTERS else {}))
    for w in WIRES:
        if link_routers and w.name in LINK_ROUTERS:
            _wire_via_router(names, w, LINK_ROUTERS[w.name])
        else:
            _veth(names, w.a, w.b)
    for role, dst, gw in ROUTES:
        with IPRoute(netns=names[role]) as ipr:
            family = 10 if ":" in dst else 2
            ipr.route("add", dst=dst, gateway=gw, family=family)
    for role in ROUTERS:
        enable_gro(names[role], LAN_IFNAME)


LAN_IFNAME = "lan0"


def _veth(names: dict[str, str], a: End, b: End) -> None:
    with IPRoute(netns=names[a.role]) as ipr:
        ipr.link(
            "add",
            ifname=a.ifname,
            kind="veth",
            peer={"ifname": b.ifname, "net_ns_fd": names[b.role]},
        )
    for end in (a, b):
        with IPRoute(netns=names[end.role]) as ipr:
            idx = ipr.link_lookup(ifname=end.ifname)[0]
            ipr.link("set", index=idx, mtu=MTU)
            for cidr in end.addrs:
                ip, plen = cidr.split("/")
                ipr.addr("add", index=idx, address=ip, prefixlen=int(plen), flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")


def _wire_via_router(names: dict[str, str], w: Wire, router: str) -> None:
    """``w.a`` - router - ``w.b``: the router forwards between the two ends by host routes and
    answers ARP for each on the other side."""
    _veth(names, w.a, End(router, ROUTER_CPE_IF, (ROUTER_ADDRS[0],)))
    _veth(names, End(router, ROUTER_BGW_IF, (ROUTER_ADDRS[1],)), w.b)
    ns = names[router]
    sysctls = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0"}
    for dev in (ROUTER_CPE_IF, ROUTER_BGW_IF):
        sysctls |= {
            f"net/ipv4/conf/{dev}/proxy_arp": "1",
            f"net/ipv4/conf/{dev}/rp_filter": "0",
            # Answer at once, as the real next hop would: Linux delays each proxy ARP reply by a
            # random 0-0.8 s (proxy_delay); after a carrier loss (neighbour caches flushed) the
            # first packet over the link waited up to 1.5 s, and the agent's probes with it.
            f"net/ipv4/neigh/{dev}/proxy_delay": "0",
        }
    set_sysctls(ns, sysctls)
    a_ip, b_ip = (end.addrs[0].split("/")[0] for end in (w.a, w.b))
    with IPRoute(netns=ns) as ipr:
        to_a = ipr.link_lookup(ifname=ROUTER_CPE_IF)[0]
        to_b = ipr.link_lookup(ifname=ROUTER_BGW_IF)[0]
        ipr.route("add", dst=f"{a_ip}/32", oif=to_a)
        ipr.route("add", dst=f"{b_ip}/32", oif=to_b)
        # the CPE's subflows and probes may go to any BGW address through this link
        ipr.route("add", dst="0.0.0.0/0", gateway=b_ip, oif=to_b, flags=RTNH_F_ONLINK)


RTNH_F_ONLINK = 4


def enable_gro(ns: str, ifname: str) -> None:
    """GRO on a router's LAN side: forwarded bulk traffic then reaches the TUN as super-packets.

    veth does no GRO unless asked; with it, the agent reads ~64 KB per TUN read instead of one MTU.
    """
    subprocess.run(
        ["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "gro", "on"],
        check=True,
        capture_output=True,
    )


def remove(ns: str) -> None:
    try:
        netns.remove(ns)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    except NetlinkError:  # pragma: no cover - pyroute2 variants
        pass


def link_stats(ns: str, ifname: str) -> dict[str, int]:
    """Kernel counters (IFLA_STATS64) of ``ifname`` in ``ns``."""
    with IPRoute(netns=ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        stats = link.get_attr("IFLA_STATS64")
        return {k: int(stats[k]) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
