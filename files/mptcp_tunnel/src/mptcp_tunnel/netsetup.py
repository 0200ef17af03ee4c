"""Host network state the tunnel needs, applied idempotently over netlink (pyroute2).

- MPTCP path-manager limits (subflows, add_addr_accepted).
- One MPTCP endpoint per access link (CPE): flag ``subflow``, plus ``backup`` for the cellular link
  under the ``backup`` policy (and ``overflow`` while it stands by, and once its data cap is spent).
  A changed backup flag is switched in place (MPTCP_PM_CMD_SET_FLAGS), so the running connection
  keeps its subflows.
- Source-based policy routing per link: ``from <address> lookup <table>`` and a default route in that
  table through the link, so each subflow leaves by its own link.
- ``cpe.link_share``: a tbf as the root qdisc of each link's interface at that share of the link's
  declared upstream rate, so the link's own buffer (modem, DSLAM) stays empty and TCP Small Queues
  push back on the subflow that is full, not on the connection. The agent's tbf has its own handle
  (``4d54:``): it replaces only the kernel's default qdisc or its own, and removes only its own.

The agent owns the MPTCP endpoint table of its host: endpoints that no link asks for are removed.
Used by ``mptcp-tunnel setup-network``, by the agent at start and on SIGHUP, and by the Ansible role.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from mptcp_tunnel.config import AgentConfig, Link

log = logging.getLogger("mptcp_tunnel.netsetup")

RULE_PRIORITY_BASE = 1000  # before the main table's rule (32766)

LIMIT_HANDLE = 0x4D540000  # "MT": the agent's tbf on a link's interface (cpe.link_share)
TC_H_ROOT = 0xFFFFFFFF
# The burst may reach the link's buffer at once; below the link's rate it never stands there. A
# small one (two frames) kept 3-9 KB queued in the tbf itself under an upload, where TCP Small Queues
# let each subflow park two segments (lab, 28 Nov: ping p50 +7-18 ms against +2-4 ms with 15 KB).
LIMIT_BURST_MIN = 16 * 1024  # bytes (a GSO packet larger than the burst is segmented)
LIMIT_BURST_S = 0.002  # at rates above 65 Mbit/s: 2 ms of the rate
LIMIT_QUEUE_S = 0.05  # the tbf's own queue; TCP Small Queues keep a subflow's share of it to a few packets
LIMIT_RATE_SLACK = 0.01  # a tbf within 1 % of the wanted rate is left alone

FLAG_SIGNAL = 1
FLAG_SUBFLOW = 2
FLAG_BACKUP = 4
FLAG_FULLMESH = 8
_CMD_ADD, _CMD_DEL, _CMD_GET, _CMD_SET_LIMITS, _CMD_GET_LIMITS, _CMD_SET_FLAGS = 1, 2, 3, 5, 6, 7


class NetworkSetupError(Exception):
    pass


class _PmMsg(genlmsg):  # type: ignore[misc]
    """mptcp_pm generic netlink message (pyroute2's own maps IF_IDX as a string, so ours)."""

    prefix = "MPTCP_PM_ATTR_"
    nla_map = (
        ("MPTCP_PM_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ATTR_ADDR", "pm_addr"),
        ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
        ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
    )

    class pm_addr(nla):  # type: ignore[misc]  # noqa: N801 (pyroute2 naming)
        prefix = "MPTCP_PM_ADDR_ATTR_"
        nla_map = (
            ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
            ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
            ("MPTCP_PM_ADDR_ATTR_ADDR4", "ip4addr"),
            ("MPTCP_PM_ADDR_ATTR_ADDR6", "ip6addr"),
            ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
            ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
        )


@dataclass(frozen=True)
class Endpoint:
    address: str
    flags: int
    ifindex: int
    id: int = 0


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class PathManager:
    """The kernel path manager's endpoints and limits (genl family ``mptcp_pm``)."""

    def __init__(self) -> None:
        self._sock = GenericNetlinkSocket()
        try:
            self._sock.bind("mptcp_pm", _PmMsg)
        except NetlinkError as exc:
            self._sock.close()
            raise NetworkSetupError(f"kernel has no MPTCP path manager (netlink: {exc})") from None

    def close(self) -> None:
        self._sock.close()

    def _request(self, cmd: int, attrs: list[Any], dump: bool = False) -> Any:
        msg = _PmMsg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = attrs
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        return self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags)

    def limits(self) -> tuple[int, int]:
        (reply,) = self._request(_CMD_GET_LIMITS, [], dump=False)
        return reply.get_attr("MPTCP_PM_ATTR_SUBFLOWS"), reply.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS")

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        self._request(
            _CMD_SET_LIMITS,
            [
                ("MPTCP_PM_ATTR_SUBFLOWS", subflows),
                ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", add_addr_accepted),
            ],
        )

    def endpoints(self) -> list[Endpoint]:
        out = []
        for msg in self._request(_CMD_GET, [], dump=True):
            addr = msg.get_attr("MPTCP_PM_ATTR_ADDR")
            out.append(
                Endpoint(
                    address=addr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4")
                    or addr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"),
                    flags=addr.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0,
                    ifindex=addr.get_attr("MPTCP_PM_ADDR_ATTR_IF_IDX") or 0,
                    id=addr.get_attr("MPTCP_PM_ADDR_ATTR_ID") or 0,
                )
            )
        return out

    def _addr_attrs(self, ep: Endpoint, with_ifindex: bool) -> list[Any]:
        v6 = ":" in ep.address
        attrs: list[Any] = [
            ("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET6 if v6 else socket.AF_INET),
            ("MPTCP_PM_ADDR_ATTR_ADDR6" if v6 else "MPTCP_PM_ADDR_ATTR_ADDR4", ep.address),
            ("MPTCP_PM_ADDR_ATTR_FLAGS", ep.flags),
        ]
        if ep.id:
            attrs.append(("MPTCP_PM_ADDR_ATTR_ID", ep.id))
        if with_ifindex and ep.ifindex:
            attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", ep.ifindex))
        return [("MPTCP_PM_ATTR_ADDR", {"attrs": attrs}, 0x8000)]  # NLA_F_NESTED

    def add(self, ep: Endpoint) -> None:
        self._request(_CMD_ADD, self._addr_attrs(ep, with_ifindex=True))

    def delete(self, ep: Endpoint) -> None:
        self._request(
            _CMD_DEL,
            [("MPTCP_PM_ATTR_ADDR", {"attrs": [("MPTCP_PM_ADDR_ATTR_ID", ep.id)]}, 0x8000)],
        )

    def set_flags(self, ep: Endpoint) -> None:
        self._request(_CMD_SET_FLAGS, self._addr_attrs(ep, with_ifindex=False))


@contextmanager
def _netlink() -> Iterator[tuple[IPRoute, PathManager]]:
    pm = PathManager()
    try:
        with IPRoute() as ipr:
            yield ipr, pm
    finally:
        pm.close()


def endpoint_flags(
    cfg: AgentConfig, link: Link, overflowing: bool = False, capped: frozenset[str] = frozenset()
) -> int:
    """``backup``: cellular always backup; ``overflow``: backup until the agent lets it join; a
    cellular link whose data cap is spent (``capped``): backup whatever the policy."""
    assert cfg.cpe is not None
    policy = cfg.cpe.policy
    backup = link.kind == "cellular" and (
        policy == "backup" or (policy == "overflow" and not overflowing) or link.name in capped
    )
    return FLAG_SUBFLOW | (FLAG_BACKUP if backup else 0)


def apply(
    cfg: AgentConfig,
    check: bool = False,
    down: frozenset[str] = frozenset(),
    overflowing: bool = False,
    capped: frozenset[str] = frozenset(),
) -> Report:
    """Bring limits, endpoints and policy routing in line with ``cfg``; with ``check``, only report.

    A link whose interface is missing is reported as a problem and skipped; the rest is applied.
    Links named in ``down`` (found dead by the agent's link monitor) keep their routing but get no
    endpoint: removing it closes their subflow at once, and adding it back opens a fresh one.
    """
    report = Report()
    for ifname in cfg.tunnel.gro_interfaces:
        _apply_gro(ifname, report, check)
    try:
        with _netlink() as (ipr, pm):
            _apply_limits(cfg, pm, report, check)
            if cfg.cpe is not None:
                ifindex = {}
                for link in cfg.cpe.links:
                    found = ipr.link_lookup(ifname=link.interface)
                    if not found:
                        report.problems.append(f"link {link.name}: interface {link.interface} does not exist")
                        continue
                    ifindex[link.name] = found[0]
                    _apply_link_limit(ipr, link, found[0], cfg.cpe.link_share, report, check)
                    try:
                        _apply_routing(ipr, link, found[0], report, check)
                    except NetlinkError:
                        if link.name not in down:
                            raise
                    if link.name in down:
                        # A link without carrier takes no routes; they are set when it is back.
                        mine = f"link {link.name}:"
                        report.problems = [p for p in report.problems if not p.startswith(mine)]
                wanted = [
                    Endpoint(
                        str(link.address), endpoint_flags(cfg, link, overflowing, capped), ifindex[link.name]
                    )
                    for link in cfg.cpe.links
                    if link.name in ifindex and link.name not in down
                ]
                _apply_endpoints(pm, wanted, report, check)
    except NetlinkError as exc:
        raise NetworkSetupError(f"netlink refused a change: {exc}") from None
    return report


SIOCETHTOOL = 0x8946
ETHTOOL_GGRO = 0x2B
ETHTOOL_SGRO = 0x2C


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    """One ETHTOOL_[GS]* value request (struct ethtool_value behind struct ifreq's data pointer)."""
    value = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("=II", value.raw)[1])


def _apply_gro(ifname: str, report: Report, check: bool) -> None:
    """GRO on a LAN-facing interface: forwarded bulk reaches the TUN as super-packets (offload mode)."""
    try:
        if _ethtool_value(ifname, ETHTOOL_GGRO):
            return
        if not check:
            _ethtool_value(ifname, ETHTOOL_SGRO, 1)
    except OSError as exc:
        report.problems.append(f"GRO on {ifname}: {exc.strerror or exc}")
        return
    report.changes.append(f"turn GRO on for {ifname}")


def _apply_limits(cfg: AgentConfig, pm: PathManager, report: Report, check: bool) -> None:
    want = (cfg.mptcp.subflows, cfg.mptcp.add_addr_accepted)
    have = pm.limits()
    if have != want:
        report.changes.append(
            f"mptcp limits subflows {want[0]} add_addr_accepted {want[1]} (was {have[0]} {have[1]})"
        )
        if not check:
            pm.set_limits(*want)


def _apply_endpoints(pm: PathManager, wanted: list[Endpoint], report: Report, check: bool) -> None:
    have = {ep.address: ep for ep in pm.endpoints()}
    wanted_by_addr = {ep.address: ep for ep in wanted}
    for addr, ep in have.items():
        if addr not in wanted_by_addr:
            report.changes.append(f"delete mptcp endpoint {addr} id {ep.id}")
            if not check:
                pm.delete(ep)
    for addr, want in wanted_by_addr.items():
        cur = have.get(addr)
        if cur is None:
            report.changes.append(f"add mptcp endpoint {addr} flags {_flag_names(want.flags)}")
            if not check:
                pm.add(want)
        elif cur.ifindex != want.ifindex or (cur.flags & ~FLAG_BACKUP) != (want.flags & ~FLAG_BACKUP):
            report.changes.append(f"replace mptcp endpoint {addr} flags {_flag_names(want.flags)}")
            if not check:
                pm.delete(cur)
                pm.add(want)
        elif cur.flags != want.flags:
            # Only the backup bit differs: switch it in place, the subflow stays up.
            report.changes.append(f"set mptcp endpoint {addr} flags {_flag_names(want.flags)}")
            if not check:
                pm.set_flags(Endpoint(addr, want.flags, 0, cur.id))


def _flag_names(flags: int) -> str:
    names = [
        n
        for bit, n in (
            (FLAG_SIGNAL, "signal"),
            (FLAG_SUBFLOW, "subflow"),
            (FLAG_BACKUP, "backup"),
            (FLAG_FULLMESH, "fullmesh"),
        )
        if flags & bit
    ]
    return ",".join(names) or "none"


def _apply_routing(ipr: IPRoute, link: Link, ifindex: int, report: Report, check: bool) -> None:
    family = socket.AF_INET if link.address.version == 4 else socket.AF_INET6
    host_len = 32 if family == socket.AF_INET else 128
    priority = RULE_PRIORITY_BASE + link.table % 1000
    rules = ipr.get_rules(family=family)
    has_rule = any(
        r.get_attr("FRA_TABLE") == link.table
        and r.get_attr("FRA_SRC") == str(link.address)
        and r["src_len"] == host_len
        for r in rules
    )
    if not has_rule:
        report.changes.append(f"add rule from {link.address} lookup {link.table}")
        if not check:
            ipr.rule(
                "add",
                family=family,
                src=str(link.address),
                src_len=host_len,
                table=link.table,
                priority=priority,
            )
    gateway = str(link.gateway) if link.gateway else None
    routes = ipr.get_routes(family=family, table=link.table)
    current = [r for r in routes if r["dst_len"] == 0]
    ok = any(r.get_attr("RTA_OIF") == ifindex and r.get_attr("RTA_GATEWAY") == gateway for r in current)
    if not ok:
        via = f"via {gateway} " if gateway else ""
        report.changes.append(f"set default {via}dev {link.interface} table {link.table}")
        if not check:
            kwargs: dict[str, Any] = {
                "dst": "default" if family == socket.AF_INET else "::/0",
                "oif": ifindex,
                "table": link.table,
                "family": family,
            }
            if gateway:
                kwargs["gateway"] = gateway
            try:
                ipr.route("replace", **kwargs)
            except NetlinkError as exc:
                if exc.code != errno.ENETUNREACH:
                    raise
                report.problems.append(f"link {link.name}: gateway {gateway} is not on {link.interface}")


def link_limit_bps(link: Link, share: float) -> int:
    """The rate of a link's tbf, bits/s (0: none)."""
    return round(share * link.rate_mbit * 1e6) if share else 0


def _root_qdisc(ipr: IPRoute, ifindex: int) -> Any:
    for qdisc in ipr.get_qdiscs(index=ifindex):
        if qdisc["parent"] == TC_H_ROOT:
            return qdisc
    return None


def _apply_link_limit(
    ipr: IPRoute, link: Link, ifindex: int, share: float, report: Report, check: bool
) -> None:
    """cpe.link_share: the agent's tbf at the share of the link's upstream rate, or none."""
    want = link_limit_bps(link, share)
    root = _root_qdisc(ipr, ifindex)
    handle = root["handle"] if root is not None else 0
    kind = root.get_attr("TCA_KIND") if root is not None else None
    if handle not in (0, LIMIT_HANDLE):
        if want:  # someone else's qdisc (an operator's SQM, a lab's emulation): never replaced
            report.problems.append(
                f"link {link.name}: {link.interface} already has a root qdisc ({kind} {handle >> 16:x}:)"
                " the agent did not set; link_share not applied there"
            )
        return
    if not want:
        if handle == LIMIT_HANDLE:
            report.changes.append(f"remove the rate limit on {link.interface}")
            if not check:
                ipr.tc("del", index=ifindex, handle=LIMIT_HANDLE, parent=TC_H_ROOT)
        return
    if handle == LIMIT_HANDLE and kind == "tbf":
        parms = root.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
        if abs(parms["rate"] * 8 - want) <= LIMIT_RATE_SLACK * want:
            return
    report.changes.append(f"limit {link.interface} to {want / 1e6:.2f} Mbit/s (link {link.name})")
    if not check:
        ipr.tc(
            "replace",
            "tbf",
            ifindex,
            handle=LIMIT_HANDLE,
            rate=f"{want // 1000}kbit",
            burst=max(LIMIT_BURST_MIN, round(want / 8 * LIMIT_BURST_S)),
            latency=f"{round(LIMIT_QUEUE_S * 1e6)}us",
        )


def recreate_endpoint(
    cfg: AgentConfig, link: Link, overflowing: bool = False, capped: frozenset[str] = frozenset()
) -> None:
    """Delete and re-add a link's endpoint: the kernel then opens a new subflow on it for every
    established connection (it never retries a subflow that died on its own)."""
    with _netlink() as (ipr, pm):
        found = ipr.link_lookup(ifname=link.interface)
        for ep in pm.endpoints():
            if ep.address == str(link.address):
                pm.delete(ep)
        if found:
            pm.add(Endpoint(str(link.address), endpoint_flags(cfg, link, overflowing, capped), found[0]))


def apply_logged(
    cfg: AgentConfig,
    known_problems: frozenset[str] = frozenset(),
    down: frozenset[str] = frozenset(),
    overflowing: bool = False,
    capped: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """apply() for a running agent: changes are logged, new problems too; nothing is fatal.

    Returns the current problems, to pass back next time so a lasting problem is logged once.
    """
    try:
        report = apply(cfg, down=down, overflowing=overflowing, capped=capped)
    except (NetworkSetupError, OSError) as exc:
        log.error("network setup failed: %s", exc)
        return known_problems
    for change in report.changes:
        log.info("network: %s", change)
    for problem in report.problems:
        if problem not in known_problems:
            log.warning("network: %s", problem)
    for solved in known_problems - set(report.problems):
        log.info("network: solved: %s", solved)
    return frozenset(report.problems)
