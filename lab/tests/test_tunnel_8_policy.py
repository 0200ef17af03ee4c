"""Policy `overflow` (issue 9): fixed first, cellular joins under sustained demand and leaves again;
a policy change is a reload that keeps the MPTCP connection."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from mtlab import Lab, address
from mtlab.measure import iperf3

RECONNECTS = "mptcp_tunnel_reconnects_total"
ACTIVE = "mptcp_tunnel_policy_cellular_active"


def _overflow_cfg(lab: Lab) -> dict[str, Any]:
    cfg = lab.agent_config("cpe")
    cfg["cpe"]["policy"] = "overflow"
    cfg["cpe"]["links"][0]["rate_mbit"] = lab.links["fixed"].rate_mbit
    cfg["cpe"]["overflow"] = {
        "join_at": 0.8,
        "join_after_s": 2,
        "leave_at": 0.5,
        "leave_after_s": 4,
    }
    return cfg


def _moved(lab: Lab, before: dict[str, dict[str, int]]) -> dict[str, int]:
    """Bytes each link carried downstream since ``before``."""
    return {k: lab.link_bytes(k)["down"] - before[k]["down"] for k in before}


def _snapshot(lab: Lab) -> dict[str, Any]:
    sock = str(lab.state_dir / "cpe.sock")
    res = lab.exec("cpe", [lab.agent_bin(), "status", "--socket", sock, "--json"])
    snap: dict[str, Any] = json.loads(res.stdout)
    return snap


@pytest.mark.timeout(150)
def test_overflow_cellular_joins_only_above_the_fixed_capacity(tunnel: Lab) -> None:
    lab = tunnel
    lab.stop_agent("cpe")
    lab.start_agent("cpe", _overflow_cfg(lab))
    try:
        lab.wait_tunnel(30)
        time.sleep(2)
        snap = _snapshot(lab)
        assert snap["policy"] == "overflow" and not snap["policy_state"]["cellular_active"]
        assert [lk["backup"] for lk in snap["links"]] == [False, True]
        server = address("client", "eth0")
        # demand below the fixed link: 5 of 10 Mbit/s -> cellular stays out
        before = {k: lab.link_bytes(k) for k in ("fixed", "cellular")}
        low = iperf3(lab, "server", "client", server, seconds=8, omit=0, bitrate="5M")
        below = _moved(lab, before)
        print(f"5 Mbit/s demand: {low.mbps:.1f} Mbit/s, link bytes {below}")
        assert below["fixed"] > 3_000_000
        assert below["cellular"] < 0.03 * below["fixed"], f"cellular carried at low demand: {below}"
        assert lab.metrics("cpe")[ACTIVE] == 0
        # demand above: a bulk flow -> cellular joins after the hold and carries its share
        before = {k: lab.link_bytes(k) for k in ("fixed", "cellular")}
        high = iperf3(lab, "server", "client", server, seconds=12, omit=0)
        above = _moved(lab, before)
        print(f"bulk demand: {high.mbps:.1f} Mbit/s, link bytes {above}")
        assert "policy overflow: cellular joins" in lab.log("agent-cpe")
        assert above["cellular"] > 2_000_000, f"cellular did not join: {above}"
        assert high.mbps > 10.5, "no more than the fixed link alone carries"
        # idle again -> cellular leaves after leave_after_s
        lab.wait_metric(ACTIVE, 0, 15)
        assert "policy overflow: cellular leaves" in lab.log("agent-cpe")
        assert _snapshot(lab)["links"][1]["backup"] is True
    finally:
        lab.stop_agent("cpe")
        lab.start_agent("cpe")
        lab.wait_tunnel(30)


@pytest.mark.timeout(90)
def test_policy_change_is_a_reload_without_reconnect(tunnel: Lab) -> None:
    lab = tunnel
    lab.wait_tunnel(30)
    before = lab.metrics("cpe").get(RECONNECTS, 0)
    cfg = lab.agent_config("cpe")
    cfg["cpe"]["policy"] = "backup"
    lab.write_agent_config("cpe", cfg)
    pid = lab.pid("agent-cpe")
    assert pid is not None
    try:
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "policy changed: aggregate -> backup" not in lab.log("agent-cpe"):
            assert time.monotonic() < deadline, "no reload logged"
            time.sleep(0.2)
        time.sleep(1.5)
        snap = _snapshot(lab)
        assert snap["policy"] == "backup"
        assert [lk["backup"] for lk in snap["links"]] == [False, True]
        established = [sf for sf in snap["subflows"] if sf["state"] == "established"]
        assert len(established) == 2, "a subflow was lost by the reload"
        before_bytes = {k: lab.link_bytes(k) for k in ("fixed", "cellular")}
        iperf3(lab, "server", "client", address("client", "eth0"), seconds=5, omit=0)
        moved = _moved(lab, before_bytes)
        assert moved["cellular"] < 0.03 * moved["fixed"], f"backup cellular carried data: {moved}"
        assert lab.metrics("cpe").get(RECONNECTS, 0) == before, "the reload reconnected"
        assert lab.pid("agent-cpe") == pid
    finally:
        lab.write_agent_config("cpe", lab.agent_config("cpe"))
        os.kill(pid, signal.SIGHUP)
        time.sleep(1)
