"""Failover and recovery (issue 9): the fixed link blackholed or without carrier, both directions,
and a link flapping 100 times under a transfer. Measured at the receiver in 0.1 s bins."""

from __future__ import annotations

import threading
import time

import pytest

from mtlab import Lab
from mtlab.failover import BIN_S, break_link, finish_flow, measure, repair_link, start_flow


@pytest.mark.timeout(240)
@pytest.mark.parametrize("direction", ["down", "up"])
@pytest.mark.parametrize("kind", ["cut", "carrier"])
def test_failover_and_failback_are_fast(tunnel: Lab, kind: str, direction: str) -> None:
    tunnel.wait_tunnel(30)
    pids = (tunnel.pid("agent-cpe"), tunnel.pid("agent-bgw"))
    log_start = len(tunnel.log("agent-cpe"))
    # The inner flow runs cubic, as every benchmark's end hosts do (this lab machine defaults to
    # BBR). One retry: the inner flow's loss recovery after the capacity falls sometimes costs
    # another 0.2-0.5 s (27 of 28 cubic runs within 1 s on 27 Nov; README, Known limits).
    for _attempt in (1, 2):
        run = measure(tunnel, kind, direction, cc="cubic")
        print(run.as_point())
        if (
            run.recover_s is not None
            and run.recover_s <= 1.0
            and run.failback_s is not None
            and run.failback_s <= 2.0
            and run.fixed_back_s is not None
            and run.fixed_back_s <= 2.0
            and run.worst_after_repair_mbps >= 0.5 * run.cell_mbps
        ):
            break
        tunnel.wait_tunnel(30)
    assert run.cell_mbps >= 0.85 * tunnel.links["cellular"].rate_mbit, "cellular alone was slow"
    assert run.before_mbps > 1.5 * run.cell_mbps, "both links did not carry before the failure"
    assert run.recover_s is not None and run.recover_s <= 1.0, f"failover took {run.recover_s} s"
    assert run.failback_s is not None and run.failback_s <= 2.0, f"failback took {run.failback_s} s"
    # ... and the fixed link itself carries half its rate before the failure again
    assert run.fixed_back_s is not None and run.fixed_back_s <= 2.0, f"fixed back after {run}"
    # The old bug: ~6 s after a repair the tunnel stalled for 4-5 s.
    assert run.worst_after_repair_mbps >= 0.5 * run.cell_mbps, f"stalled after the repair: {run}"
    assert (tunnel.pid("agent-cpe"), tunnel.pid("agent-bgw")) == pids
    log = tunnel.log("agent-cpe")[log_start:]
    assert "link fixed down (" in log and "link fixed up (" in log
    if kind == "cut" and direction == "up":
        # under an upload the fixed subflow holds unacknowledged data: its ACK clock confirms the
        # probes' silence after 0.4 of down_after_ms (linkstate.LinkMonitor.poll)
        assert "its subflow's data unacknowledged" in log


@pytest.mark.timeout(240)
def test_a_backup_link_takes_over_a_blackholed_upload_within_a_second(tunnel: Lab) -> None:
    """`backup`: the cellular subflow stood idle for longer than BBR's 10 s min-RTT window, so its
    first acknowledgements would put it into ProbeRTT (4 packets for 0.2 s: 0.7 Mbit/s instead of
    4.5) just as it takes over. Both agents run BBR here (whatever the host's default) and restart
    it when the standby link takes over: the CPE itself, the BGW on the CPE's PATH_CHANGE frame."""
    lab = tunnel
    configs = {role: lab.agent_config(role) for role in ("bgw", "cpe")}
    for cfg in configs.values():
        cfg["tunnel"]["congestion_control"] = "bbr"
    configs["cpe"]["cpe"]["policy"] = "backup"
    restarts = 'mptcp_tunnel_cc_restarts_total{cpe="cpe1"}'
    try:
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            lab.start_agent(role, configs[role])
        lab.wait_tunnel(30)
        time.sleep(3)  # + the flow's 8 s before the failure: the standby subflow's min RTT is stale
        log_start = len(lab.log("agent-cpe"))
        fixed, cellular = lab.links["fixed"].rate_mbit, lab.links["cellular"].rate_mbit
        for _attempt in (1, 2):  # one retry, as for `aggregate` above
            before = lab.metrics("bgw").get(restarts, 0)
            run = measure(lab, "cut", "up", cc="cubic")
            print(run.as_point())
            if (
                run.cell_mbps >= 0.85 * cellular
                and run.recover_s is not None
                and run.recover_s <= 1.0
                and run.failback_s is not None
                and run.failback_s <= 2.0
            ):
                break
            lab.wait_tunnel(30)
        assert run.before_mbps < 1.2 * fixed, "cellular carried before the failure"
        assert run.cell_mbps >= 0.85 * cellular, "cellular alone was slow"
        assert run.recover_s is not None and run.recover_s <= 1.0, f"failover: {run.recover_s} s"
        assert run.failback_s is not None and run.failback_s <= 2.0, f"failback: {run.failback_s} s"
        log = lab.log("agent-cpe")[log_start:]
        assert "standby link took over: congestion control restarted (BBR)" in log, log[-2000:]
        assert lab.metrics("bgw").get(restarts, 0) >= before + 1, "the BGW did not restart its BBR"
    finally:
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            lab.start_agent(role)
        lab.wait_tunnel(30)


def _flapping_transfer(tunnel: Lab) -> tuple[int, list[float]]:
    """A 75 s download while the fixed link flaps 100 times (0.2 s down, alternately carrier and
    blackhole); returns the flaps done and the receiver's rate in each second, Mbit/s."""
    flaps = 0
    stop = threading.Event()

    def flap() -> None:
        nonlocal flaps
        kinds = ("carrier", "cut")
        while flaps < 100 and not stop.is_set():
            kind = kinds[flaps % 2]
            break_link(tunnel, kind)
            time.sleep(0.2)
            repair_link(tunnel, kind)
            flaps += 1
            time.sleep(0.3 if flaps % 10 else 2.0)  # now and then long enough to come back

    start_flow(tunnel, "down", 75, tag="flap", cc="cubic")  # the end hosts' CC of every benchmark
    th = threading.Thread(target=flap)
    try:
        time.sleep(3)
        th.start()
        th.join(timeout=100)
        stop.set()
        bins = finish_flow(tunnel, 60, tag="flap")
    finally:
        stop.set()
        th.join()
        repair_link(tunnel, "carrier")
        tunnel.restore("fixed")
    rates = [b * 8 / BIN_S / 1e6 for _, b in bins]
    print(f"{flaps} flaps, {sum(b for _, b in bins) / 1e6:.0f} MB moved, {len(bins) * BIN_S:.0f} s")
    return flaps, [round(sum(rates[i : i + 10]) / 10, 2) for i in range(0, len(rates) - 10, 10)]


@pytest.mark.timeout(300)
def test_a_link_flapping_100_times_under_a_transfer(tunnel: Lab) -> None:
    tunnel.wait_tunnel(30)
    pids = (tunnel.pid("agent-cpe"), tunnel.pid("agent-bgw"))
    downs = 'mptcp_tunnel_link_changes_total{link="fixed",state="down"}'
    subflows = 'mptcp_tunnel_subflows{cpe="cpe1"}'
    changes_before = tunnel.metrics("cpe").get(downs, 0)
    # The transfer goes on throughout: no second without data (the old bug stalled it for seconds).
    # One retry: the inner flow's loss recovery leaves gaps of 0.2-0.5 s (zero bins, then a burst);
    # with a BBR flow the lowest second read 0.25-2.69 Mbit/s in 7 runs on 27 Nov, once below 0.5.
    for _attempt in (1, 2):
        flaps, per_s = _flapping_transfer(tunnel)
        print("slowest seconds, Mbit/s:", sorted(per_s)[:5])
        if flaps == 100 and min(per_s) > 0.5:
            break
        tunnel.wait_tunnel(30)
    assert flaps == 100
    assert min(per_s) > 0.5, f"a second without data; Mbit/s per second: {per_s}"
    assert (tunnel.pid("agent-cpe"), tunnel.pid("agent-bgw")) == pids, "an agent restarted"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = tunnel.metrics("cpe")
        if m.get(subflows) == 2 and m.get('mptcp_tunnel_link_up{link="fixed"}') == 1:
            break
        time.sleep(0.5)
    assert m.get(subflows) == 2, "both subflows are not back after the flapping"
    assert m.get(downs, 0) > changes_before
