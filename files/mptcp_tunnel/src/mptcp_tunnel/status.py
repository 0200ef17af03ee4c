"""What ``mptcp-tunnel status`` shows: a snapshot of the running agent as JSON, and its table.

Pure functions: the agent gathers the facts (subflows from getsockopt, link states, counters) and
``cpe_snapshot`` shapes them; ``render`` turns any snapshot into the human table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mptcp_tunnel.cap import format_bytes
from mptcp_tunnel.config import Link
from mptcp_tunnel.mptcp import SubflowInfo

SCHEMA = 1


def cpe_snapshot(
    *,
    cpe_id: str,
    policy: str,
    session_up: bool,
    session_via: str | None,
    links: Iterable[Link],
    link_up: dict[str, bool],
    link_reason: dict[str, str],
    backup: dict[str, bool],
    subflows: list[SubflowInfo],
    tunnel_bytes: dict[str, int],
    policy_state: dict[str, Any] | None = None,
    caps: list[dict[str, Any]] | None = None,
    shaper: dict[str, Any] | None = None,
) -> dict[str, Any]:
    by_address = {str(link.address): link.name for link in links}
    rows = []
    for sf in subflows:
        link = by_address.get(sf.local)
        rows.append({"link": link, **subflow_row(sf), "backup": backup.get(link, False) if link else False})
    return {
        "schema": SCHEMA,
        "role": "cpe",
        "id": cpe_id,
        "policy": policy,
        "policy_state": policy_state or {},
        "session": {"up": session_up, "via": session_via, "bytes": tunnel_bytes},
        "links": [
            {
                "name": link.name,
                "kind": link.kind,
                "interface": link.interface,
                "address": str(link.address),
                "up": link_up.get(link.name, False),
                "backup": backup.get(link.name, False),
                "last_change": link_reason.get(link.name, ""),
                "subflows": sum(1 for r in rows if r["link"] == link.name and r["state"] == "established"),
            }
            for link in links
        ],
        "subflows": rows,
        "caps": caps or [],
        "shaper": shaper or {},
    }


def subflow_row(sf: SubflowInfo) -> dict[str, Any]:
    """One subflow as both roles show it (JSON-safe: the BGW's workers send it as it is)."""
    return {
        "local": sf.local,
        "remote": sf.remote,
        "state": sf.state,
        "rtt_ms": round(sf.rtt_us / 1000, 1),
        "cwnd": sf.cwnd,
        "bytes_sent": sf.bytes_sent,
        "bytes_received": sf.bytes_received,
        "bytes_retrans": sf.bytes_retrans,
        "retransmits": sf.total_retrans,
    }


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), *(fmt.format(*r) for r in rows)]


def render(snap: dict[str, Any]) -> str:
    """The human view of a snapshot (either role)."""
    if snap.get("role") == "bgw":
        lines = [f"BGW, {len(snap.get('cpes', []))} CPE(s) configured"]
        rows = [
            [
                c["id"],
                "up" if c["up"] else "down",
                str(c["subflows"]),
                _bytes(c["tx_bytes"]),
                _bytes(c["rx_bytes"]),
            ]
            for c in snap.get("cpes", [])
        ]
        lines += _table(["cpe", "session", "subflows", "tx", "rx"], rows)
        sf_rows = [
            [
                c["id"],
                f"{sf['local']} -> {sf['remote']}",
                sf["state"],
                f"{sf['rtt_ms']:.1f}",
                str(sf["cwnd"]),
                _bytes(sf["bytes_sent"]),
                _bytes(sf["bytes_received"]),
                str(sf["retransmits"]),
                f"{c['subflows_age_s']:.0f} s",
            ]
            for c in snap.get("cpes", [])
            for sf in c.get("subflow_details") or []
        ]
        if sf_rows:
            head = ["cpe", "subflow", "state", "rtt ms", "cwnd", "sent", "received", "retrans", "read"]
            lines += ["", *_table(head, sf_rows)]
        return "\n".join(lines) + "\n"
    s = snap["session"]
    ps = snap.get("policy_state") or {}
    overflow = ""
    if "cellular_active" in ps:
        overflow = (
            f" (cellular {'joined' if ps['cellular_active'] else 'standing by'}, demand"
            f" {ps['demand_mbps']} of {ps['fixed_capacity_mbps']} Mbit/s fixed)"
        )
    lines = [
        f"CPE {snap['id']}  policy {snap['policy']}{overflow}  session "
        + (f"up via {s['via']}" if s["up"] else "down")
        + f"  tunnel tx {_bytes(s['bytes'].get('tx', 0))} rx {_bytes(s['bytes'].get('rx', 0))}",
    ]
    sh = snap.get("shaper") or {}
    if "share" in sh:
        lines.append(
            f"shaper {sh['share']:g} of {' + '.join(sh['links'])}: up {sh['up_mbps']} Mbit/s,"
            f" down {sh['down_mbps']} Mbit/s (at the BGW)"
        )
    if sh.get("link_limits_mbps"):
        limits = ", ".join(f"{name} {mbps} Mbit/s" for name, mbps in sh["link_limits_mbps"].items())
        lines.append(f"links limited upstream: {limits}")
    lines.append("")
    link_rows = [
        [
            lk["name"],
            lk["kind"],
            lk["interface"],
            lk["address"],
            "up" if lk["up"] else "DOWN",
            "yes" if lk["backup"] else "no",
            str(lk["subflows"]),
            lk["last_change"] or "-",
        ]
        for lk in snap["links"]
    ]
    lines += _table(
        ["link", "kind", "interface", "address", "state", "backup", "subflows", "last change"], link_rows
    )
    lines.append("")
    sf_rows = [
        [
            sf["link"] or "?",
            f"{sf['local']} -> {sf['remote']}",
            sf["state"],
            "yes" if sf["backup"] else "no",
            f"{sf['rtt_ms']:.1f}",
            str(sf["cwnd"]),
            _bytes(sf["bytes_sent"]),
            _bytes(sf["bytes_received"]),
            str(sf["retransmits"]),
        ]
        for sf in snap["subflows"]
    ]
    head = ["subflow", "addresses", "state", "backup", "rtt ms", "cwnd", "sent", "received", "retrans"]
    lines += _table(head, sf_rows) if sf_rows else ["no subflows"]
    caps = snap.get("caps") or []
    if caps:
        lines.append("")
        cap_rows = [
            [
                c["link"],
                format_bytes(c["used_bytes"]),
                format_bytes(c["limit_bytes"], 0),
                f"{100 * c['used_bytes'] / c['limit_bytes']:.0f} %" if c["limit_bytes"] else "-",
                format_bytes(c["remaining_bytes"]),
                f"{c['period_start'][:16].replace('T', ' ')} .. {c['period_end'][:16].replace('T', ' ')}",
                "SPENT (backup only)" if c["spent"] else "no",
            ]
            for c in caps
        ]
        lines += _table(["cap", "used", "limit", "used %", "remaining", "period", "spent"], cap_rows)
    return "\n".join(lines) + "\n"


def bgw_snapshot(
    subflows: Mapping[str, tuple[float, list[dict[str, Any]]]] | None = None, now: float = 0.0
) -> dict[str, Any]:
    """The BGW's view, from its metrics registry (the control process owns every session's state),
    and each active session's subflows as its worker last read them (``subflows``: CPE id ->
    (monotonic time of the reading, rows of ``subflow_row``)).
    """
    from mptcp_tunnel import metrics

    cpes: dict[str, dict[str, Any]] = {}

    def entry(cpe: str) -> dict[str, Any]:
        return cpes.setdefault(cpe, {"id": cpe, "up": False, "subflows": 0, "tx_bytes": 0, "rx_bytes": 0})

    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            cpe = sample.labels.get("cpe")
            if cpe is None:
                continue
            if sample.name == "mptcp_tunnel_session_up":
                entry(cpe)["up"] = sample.value >= 1
            elif sample.name == "mptcp_tunnel_subflows":
                entry(cpe)["subflows"] = int(sample.value)
            elif sample.name == "mptcp_tunnel_bytes_total":
                entry(cpe)[f"{sample.labels['direction']}_bytes"] = int(sample.value)
    for cpe, (read_at, rows) in dict(subflows or {}).items():
        if cpe in cpes:
            cpes[cpe]["subflow_details"] = rows
            cpes[cpe]["subflows_age_s"] = round(max(0.0, now - read_at), 1)
    return {"schema": SCHEMA, "role": "bgw", "cpes": sorted(cpes.values(), key=lambda c: c["id"])}
