"""Fleet filters for the mptcp_tunnel role: which CPEs a BGW serves, and prefix sanity checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def mptcp_tunnel_bgw_cpes(
    hostvars: Mapping[str, Any], cpe_hosts: Iterable[str], bgw: str
) -> list[dict[str, Any]]:
    """The `bgw.cpes` list of BGW `bgw`: every CPE host whose mptcp_tunnel_cpe_bgw is `bgw`."""
    cpes: list[dict[str, Any]] = []
    for host in cpe_hosts:
        hv = hostvars[host]
        if str(hv.get("mptcp_tunnel_cpe_bgw", "")) != bgw:
            continue
        if "mptcp_tunnel_cpe_secret" not in hv:
            raise AnsibleFilterError(f"CPE {host}: mptcp_tunnel_cpe_secret is not set")
        prefixes = [str(p) for p in hv.get("mptcp_tunnel_cpe_prefixes", [])]
        cpes.append(
            {
                "id": str(hv.get("mptcp_tunnel_cpe_id", host)),
                "secret": str(hv["mptcp_tunnel_cpe_secret"]),
                "prefixes": prefixes,
            }
        )
    return cpes


def mptcp_tunnel_orphan_cpes(
    hostvars: Mapping[str, Any], cpe_hosts: Iterable[str], bgw_hosts: Iterable[str]
) -> list[str]:
    """CPE hosts whose mptcp_tunnel_cpe_bgw is missing or names no host of the BGW group."""
    bgws = set(bgw_hosts)
    problems = []
    for host in cpe_hosts:
        bgw = hostvars[host].get("mptcp_tunnel_cpe_bgw")
        if bgw is None:
            problems.append(f"CPE {host} has no mptcp_tunnel_cpe_bgw")
        elif str(bgw) not in bgws:
            problems.append(f"CPE {host} is assigned to BGW {bgw!s}, which is not in the inventory")
    return problems


def mptcp_tunnel_prefix_problems(cpes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems in a BGW's CPE list: bad or missing prefixes, overlaps, duplicate ids."""
    problems: list[str] = []
    seen_ids: set[str] = set()
    owned: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for cpe in cpes:
        cid = str(cpe["id"])
        if cid in seen_ids:
            problems.append(f"CPE id {cid} is used twice")
        seen_ids.add(cid)
        if not cpe.get("prefixes"):
            problems.append(f"CPE {cid} has no LAN prefixes (mptcp_tunnel_cpe_prefixes)")
        for text in cpe.get("prefixes", []):
            try:
                net = ipaddress.ip_network(str(text), strict=True)
            except ValueError as exc:
                problems.append(f"CPE {cid}: {text!r} is not a network prefix ({exc})")
                continue
            for other_id, other in owned:
                if net.version == other.version and net.overlaps(other):
                    problems.append(f"prefix {net} of CPE {cid} overlaps {other} of CPE {other_id}")
            owned.append((cid, net))
    return problems


def mptcp_tunnel_is_prefix(text: Any) -> bool:
    try:
        ipaddress.ip_network(str(text), strict=True)
    except ValueError:
        return False
    return True


def mptcp_tunnel_is_address(text: Any) -> bool:
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True


def mptcp_tunnel_bad_prefixes(items: Iterable[Any]) -> list[str]:
    """The entries of `items` that are not network prefixes (host bits set count as bad)."""
    return [str(i) for i in items if not mptcp_tunnel_is_prefix(i)]


def mptcp_tunnel_bad_addresses(items: Iterable[Any]) -> list[str]:
    """The entries of `items` that are not IP addresses."""
    return [str(i) for i in items if not mptcp_tunnel_is_address(i)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "mptcp_tunnel_bgw_cpes": mptcp_tunnel_bgw_cpes,
            "mptcp_tunnel_prefix_problems": mptcp_tunnel_prefix_problems,
            "mptcp_tunnel_orphan_cpes": mptcp_tunnel_orphan_cpes,
            "mptcp_tunnel_is_prefix": mptcp_tunnel_is_prefix,
            "mptcp_tunnel_is_address": mptcp_tunnel_is_address,
            "mptcp_tunnel_bad_prefixes": mptcp_tunnel_bad_prefixes,
            "mptcp_tunnel_bad_addresses": mptcp_tunnel_bad_addresses,
        }
