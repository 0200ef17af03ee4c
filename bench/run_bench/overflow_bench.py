"""Scenario ``overflow`` (issue 9): which links carry the bytes under policy ``overflow``.

The CPE runs ``cpe.policy: overflow`` (the shipped thresholds, the fixed link's ``rate_mbit`` =
the lab's rate). Per demand (an iperf3 download paced at that rate; ``bulk`` = unpaced) the bytes
each access link carried downstream (interface counters) and the tunnel's goodput are recorded,
plus when cellular joined or left (the agent's log). Target: cellular carries (almost) nothing
below the fixed capacity, its share above it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mtlab import Lab, LabError, address
from mtlab.measure import iperf3

from run_bench.contenders import Agents, link_settings
from run_bench.results import Progress, ScenarioResult

DEMANDS = ("3M", "6M", "8M", "bulk")  # fixed link 10 Mbit/s


def overflow(
    lab: Lab,
    agents: Agents,
    s: object,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    seconds = 10 if getattr(s, "quick", False) else 20
    res = ScenarioResult("overflow", {"seconds": seconds, "demands": list(DEMANDS)})
    res.links = link_settings(lab)
    cfg = lab.agent_config("cpe")
    cfg["cpe"]["policy"] = "overflow"
    cfg["cpe"]["links"][0]["rate_mbit"] = lab.links["fixed"].rate_mbit
    agents.start_cpe_config(cfg, "mptcp-policy-overflow")
    agents.wait_subflows()
    for demand in DEMANDS:
        # Start from "cellular out": wait for a leave after the previous (bulk) point.
        deadline = time.monotonic() + 30
        while lab.metrics("cpe").get("mptcp_tunnel_policy_cellular_active") != 0:
            if time.monotonic() > deadline:
                raise LabError("overflow: cellular did not leave within 30 s of idle")
            time.sleep(0.5)
        log_at = len(lab.log("agent-cpe"))
        before = {k: lab.link_bytes(k)["down"] for k in ("fixed", "cellular")}
        r = iperf3(
            lab,
            "server",
            "client",
            address("client", "eth0"),
            seconds=seconds,
            omit=0,
            bitrate=None if demand == "bulk" else demand,
        )
        moved = {k: lab.link_bytes(k)["down"] - before[k] for k in before}
        total = sum(moved.values()) or 1
        events = [
            line.split("policy overflow: ", 1)[1]
            for line in lab.log("agent-cpe")[log_at:].splitlines()
            if "policy overflow: " in line
        ]
        res.add_point(
            "mptcp-tunnel",
            [r.mbps],
            x_name="demand",
            x=0.0 if demand == "bulk" else float(demand.rstrip("M")),
            demand=demand,
            fixed_bytes=moved["fixed"],
            cellular_bytes=moved["cellular"],
            cellular_share=round(moved["cellular"] / total, 4),
            policy_events=events,
        )
        cell_mb = moved["cellular"] / 1e6
        progress.step(
            f"overflow demand {demand}: {r.mbps:.2f} Mbit/s, cellular {cell_mb:.2f} MB"
            f" ({moved['cellular'] / total:.1%})"
        )
        save(res)
    res.notes.append("x = paced demand in Mbit/s (0 = bulk, unpaced); downstream link bytes")
    return res
