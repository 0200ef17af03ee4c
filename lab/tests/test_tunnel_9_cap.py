"""The cellular data cap (issue 9): a small daily cap on cellular under policy aggregate is spent
by a bulk transfer; from then on cellular carries (almost) nothing, also after the CPE agent
restarts (the usage is kept in its state directory), except while the fixed link is cut."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from mtlab import Lab, address
from mtlab.capping import (
    CELL_CAP_LIMIT,
    CELL_CAP_SPENT,
    CELL_CAP_USED,
    cap_config,
    link_bytes,
    moved,
    wait_subflows,
)
from mtlab.measure import iperf3

CAP = 4_000_000  # 4 MB: cellular (5 Mbit/s) spends it in ~7-8 s of a bulk download
FIXED_UP = 'mptcp_tunnel_link_up{link="fixed"}'


def _snapshot(lab: Lab) -> dict[str, Any]:
    sock = str(lab.state_dir / "cpe.sock")
    res = lab.exec("cpe", [lab.agent_bin(), "status", "--socket", sock, "--json"])
    snap: dict[str, Any] = json.loads(res.stdout)
    return snap


def _download(lab: Lab, seconds: int) -> tuple[float, dict[str, int]]:
    before = link_bytes(lab)
    r = iperf3(lab, "server", "client", address("client", "eth0"), seconds=seconds, omit=0)
    return r.mbps, moved(lab, before)


def _cellular_idle(lab: Lab, label: str) -> None:
    """A bulk download leaves cellular (almost) unused: probes and MPTCP signalling only."""
    for attempt in (1, 2):  # one retry: right after a change MP_PRIO may still be in flight
        mbps, m = _download(lab, 6)
        print(f"{label}: {mbps:.2f} Mbit/s, link bytes {m}")
        if m["cellular"] < 0.03 * m["fixed"]:
            break
        assert attempt == 1, f"{label}: cellular carried data with its cap spent: {m}"
    assert m["fixed"] > 5_000_000, f"{label}: the fixed link did not carry the download: {m}"
    assert mbps < lab.links["fixed"].rate_mbit, f"{label}: more than the fixed link alone carries"


@pytest.mark.timeout(300)
def test_a_spent_cap_keeps_cellular_for_failover_only(tunnel: Lab) -> None:
    lab = tunnel
    lab.stop_agent("cpe")
    cfg = cap_config(lab, "4MB")
    lab.start_agent("cpe", cfg)
    try:
        lab.wait_tunnel(30)
        wait_subflows(lab)
        m0 = lab.metrics("cpe")
        assert m0[CELL_CAP_LIMIT] == CAP and m0[CELL_CAP_SPENT] == 0
        assert m0[CELL_CAP_USED] < 0.2 * CAP
        # Before: aggregate, both links carry the download until the cap is spent.
        mbps, m = _download(lab, 15)
        print(f"spending the cap: {mbps:.2f} Mbit/s, link bytes {m}")
        assert m["cellular"] > CAP * 0.9, f"cellular did not carry its share before the cap: {m}"
        lab.wait_metric(CELL_CAP_SPENT, 1, 5)
        log = lab.log("agent-cpe")
        assert "cellular cap spent: " in log and "of 4 MB used in period from " in log
        assert "backup flag set" in log
        used = lab.metrics("cpe")[CELL_CAP_USED]
        assert used >= CAP
        snap = _snapshot(lab)
        assert [lk["backup"] for lk in snap["links"]] == [False, True]
        assert snap["caps"][0]["link"] == "cellular" and snap["caps"][0]["spent"] is True
        assert snap["caps"][0]["used_bytes"] >= CAP and snap["caps"][0]["remaining_bytes"] == 0
        # After: fixed only.
        _cellular_idle(lab, "spent")
        # A restart keeps the usage (the file in state_dir) and the cap spent from the start.
        at = len(lab.log("agent-cpe"))
        lab.restart_agent("cpe")
        lab.wait_tunnel(30)
        restarted = lab.log("agent-cpe")[at:]
        assert "cellular cap: " in restarted
        assert ": spent, the link carries traffic only while the others are down" in restarted
        m1 = lab.metrics("cpe")
        assert m1[CELL_CAP_SPENT] == 1 and m1[CELL_CAP_USED] >= used
        wait_subflows(lab)
        _cellular_idle(lab, "spent, after a restart")
        # The fixed link cut: cellular carries everything, as in a failover.
        lab.cut("fixed")
        lab.wait_metric(FIXED_UP, 0, 10)
        mbps, m = _download(lab, 8)
        print(f"fixed cut: {mbps:.2f} Mbit/s, link bytes {m}")
        assert m["cellular"] > 2_500_000, f"cellular did not take over with the fixed link cut: {m}"
        assert mbps > 0.5 * lab.links["cellular"].rate_mbit
        # Repaired: back off cellular.
        lab.restore("fixed")
        lab.wait_metric(FIXED_UP, 1, 15)
        wait_subflows(lab)
        _cellular_idle(lab, "fixed repaired")
        assert lab.metrics("cpe")[CELL_CAP_SPENT] == 1
    finally:
        lab.restore("fixed")
        lab.stop_agent("cpe")
        lab.start_agent("cpe")
        lab.wait_tunnel(30)


@pytest.mark.timeout(120)
def test_raising_the_cap_is_a_reload_that_brings_cellular_back(tunnel: Lab) -> None:
    """Runs after the first test: the usage file still says spent (same lab, same state_dir)."""
    lab = tunnel
    lab.stop_agent("cpe")
    lab.start_agent("cpe", cap_config(lab, "4MB"))
    try:
        lab.wait_tunnel(30)
        wait_subflows(lab)
        if lab.metrics("cpe").get(CELL_CAP_SPENT) != 1:  # run alone: spend it first
            _download(lab, 12)
            lab.wait_metric(CELL_CAP_SPENT, 1, 5)
        pid = lab.pid("agent-cpe")
        reconnects = lab.metrics("cpe").get("mptcp_tunnel_reconnects_total", 0)
        lab.write_agent_config("cpe", cap_config(lab, "1GB"))
        assert pid is not None
        os.kill(pid, signal.SIGHUP)
        lab.wait_metric(CELL_CAP_SPENT, 0, 10)
        assert "cellular cap no longer spent: " in lab.log("agent-cpe")
        time.sleep(1.5)
        assert [lk["backup"] for lk in _snapshot(lab)["links"]] == [False, False]
        mbps, m = _download(lab, 8)
        print(f"cap raised: {mbps:.2f} Mbit/s, link bytes {m}")
        assert m["cellular"] > 2_000_000, f"cellular did not come back: {m}"
        assert lab.pid("agent-cpe") == pid
        assert lab.metrics("cpe").get("mptcp_tunnel_reconnects_total", 0) == reconnects
    finally:
        lab.stop_agent("cpe")
        lab.start_agent("cpe")
        lab.wait_tunnel(30)
