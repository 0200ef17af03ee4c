"""Scenario ``cap`` (issue 9): what a cellular data cap does to the links' bytes and the throughput.

The CPE runs ``cpe.policy: aggregate`` with a daily cap on cellular sized so that the first bulk
download (``seconds`` long) does not spend it. Phases, each one unpaced iperf3 download through the
tunnel: ``before`` (the cap not yet spent), ``spending`` (downloads until the agent says spent),
``spent``, ``spent, fixed cut`` (the fixed link blackholed: cellular must carry everything),
``spent, fixed repaired``. Per phase: the tunnel's goodput and each access link's bytes in both
directions (interface counters), and the agent's cap figures afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from mtlab import Lab, LabError, address
from mtlab.capping import (
    CELL_CAP_SPENT,
    CELL_CAP_USED,
    cap_config,
    link_bytes,
    moved,
    wait_subflows,
)
from mtlab.measure import iperf3

from run_bench.contenders import Agents, link_settings
from run_bench.results import Progress, ScenarioResult

PHASES = ("before", "spending", "spent", "spent, fixed cut", "spent, fixed repaired")
FIXED_UP = 'mptcp_tunnel_link_up{link="fixed"}'


def cap(
    lab: Lab,
    agents: Agents,
    s: object,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    seconds = 10 if getattr(s, "quick", False) else 20
    cell_mbit = lab.links["cellular"].rate_mbit
    # 1.5x what cellular carries in one download: the first is "before", the second spends it.
    cap_mb = round(1.5 * seconds * cell_mbit / 8)
    res = ScenarioResult(
        "cap", {"seconds": seconds, "cap": f"{cap_mb}MB", "period": "daily", "policy": "aggregate"}
    )
    res.links = link_settings(lab)
    cfg = cap_config(lab, f"{cap_mb}MB")
    shutil.rmtree(cfg["cpe"]["state_dir"], ignore_errors=True)  # a fresh period's usage
    agents.start_cpe_config(cfg, "mptcp-cap")
    wait_subflows(lab)
    try:
        for phase in PHASES:
            if phase == "spent, fixed cut":
                lab.cut("fixed")
                lab.wait_metric(FIXED_UP, 0, 10)
            elif phase == "spent, fixed repaired":
                lab.restore("fixed")
                lab.wait_metric(FIXED_UP, 1, 15)
                wait_subflows(lab)
            runs = 4 if phase == "spending" else 1
            before = link_bytes(lab)
            t0 = time.monotonic()
            rates = []
            for _ in range(runs):
                r = iperf3(
                    lab, "server", "client", address("client", "eth0"), seconds=seconds, omit=0
                )
                rates.append(r.mbps)
                if phase != "spending" or lab.metrics("cpe").get(CELL_CAP_SPENT) == 1:
                    break
            m = moved(lab, before)
            mc = lab.metrics("cpe")
            if phase == "before" and mc.get(CELL_CAP_SPENT) == 1:
                raise LabError("cap: spent during the first download (cellular faster than set?)")
            if phase == "spending" and mc.get(CELL_CAP_SPENT) != 1:
                raise LabError(f"cap: not spent after {runs} downloads")
            total = sum(m.values()) or 1
            res.add_point(
                "mptcp-tunnel",
                rates,
                phase=phase,
                seconds=round(time.monotonic() - t0, 1),
                fixed_bytes=m["fixed"],
                cellular_bytes=m["cellular"],
                cellular_share=round(m["cellular"] / total, 4),
                cap_used_bytes=int(mc.get(CELL_CAP_USED, 0)),
                cap_spent=bool(mc.get(CELL_CAP_SPENT)),
            )
            progress.step(
                f"cap {phase}: {sum(rates) / len(rates):.2f} Mbit/s, cellular"
                f" {m['cellular'] / 1e6:.2f} MB ({m['cellular'] / total:.1%}),"
                f" used {mc.get(CELL_CAP_USED, 0) / 1e6:.1f} of {cap_mb} MB"
            )
            save(res)
    finally:
        lab.restore("fixed")
    spent_line = next(
        (ln for ln in lab.log("agent-cpe").splitlines() if "cellular cap spent: " in ln), ""
    )
    res.notes.append(f"agent: {spent_line.split(': ', 1)[-1]}" if spent_line else "no spent line")
    res.notes.append("bytes: both directions of each access link (interface counters)")
    return res
