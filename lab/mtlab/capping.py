"""The cellular data cap in the lab: a CPE config with a small daily cap, and bytes per link.

A daily period ends at 00:00 in the cap's time zone; a test or benchmark that ran across it would
see the cap come back halfway. ``far_from_midnight_zone`` picks, from a few zones, the one whose
local time is furthest from a midnight right now, so a run of a few minutes stays in one period.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from .lab import Lab

ZONES = ("UTC", "Asia/Tokyo", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati")
CELL_CAP_SPENT = 'mptcp_tunnel_cap_spent{link="cellular"}'
CELL_CAP_USED = 'mptcp_tunnel_cap_used_bytes{link="cellular"}'
CELL_CAP_LIMIT = 'mptcp_tunnel_cap_limit_bytes{link="cellular"}'


def far_from_midnight_zone(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)

    def margin(name: str) -> float:
        local = now.astimezone(ZoneInfo(name))
        minutes = local.hour * 60 + local.minute
        return min(minutes, 24 * 60 - minutes)

    return max(ZONES, key=margin)


def cap_config(lab: Lab, cap: str, policy: str = "aggregate") -> dict[str, Any]:
    """The lab's CPE config with a daily ``cap`` on cellular, its usage kept in the lab's state."""
    cfg = lab.agent_config("cpe")
    cfg["cpe"]["policy"] = policy
    if policy == "overflow":
        cfg["cpe"]["links"][0]["rate_mbit"] = lab.links["fixed"].rate_mbit
    cfg["cpe"]["links"][1]["cap"] = {
        "bytes": cap,
        "period": "daily",
        "timezone": far_from_midnight_zone(),
    }
    cfg["cpe"]["state_dir"] = str(lab.state_dir / "cap")
    return cfg


def link_bytes(lab: Lab) -> dict[str, int]:
    """Both directions of each access link, from its interface counters."""
    out = {}
    for name in ("fixed", "cellular"):
        b = lab.link_bytes(name)
        out[name] = b["up"] + b["down"]
    return out


def moved(lab: Lab, before: dict[str, int]) -> dict[str, int]:
    now = link_bytes(lab)
    return {k: now[k] - before[k] for k in before}


def wait_subflows(lab: Lab, count: int = 2, timeout: float = 20.0) -> None:
    key = 'mptcp_tunnel_subflows{cpe="cpe1"}'
    lab.wait_metric(key, float(count), timeout)
