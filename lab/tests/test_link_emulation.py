"""The emulated access links themselves (no agents): rate, delay, loss, runtime changes, cut."""

from __future__ import annotations

import threading
import time

import pytest
from pyroute2 import IPRoute

from mtlab import Lab, LabError, topology
from mtlab.measure import iperf3, iperf3_rate_within, median_rtt, ping_rtts

LINKS = {"fixed": ("10.1.0.1", "10.1.0.2"), "cellular": ("10.2.0.1", "10.2.0.2")}


def test_topology_matches_plan(lab: Lab) -> None:
    for role in topology.ROLES:
        assert topology.exists(lab.ns(role))
    for w in topology.WIRES:
        for end in (w.a, w.b):
            with IPRoute(netns=lab.ns(end.role)) as ipr:
                idx = ipr.link_lookup(ifname=end.ifname)
                assert idx, f"{end.ifname} missing in {end.role}"
                assert ipr.get_links(idx[0])[0].get_attr("IFLA_MTU") == 1500
                have = {
                    f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in ipr.get_addr(index=idx[0])
                    if a.get_attr("IFA_ADDRESS")
                    and not a.get_attr("IFA_ADDRESS").startswith("fe80")
                }
            assert have == set(end.addrs), f"{end.role} {end.ifname}: {have}"
    for role, dst in (
        ("client", "192.168.10.1"),
        ("client", "fd00:10::1"),
        ("server", "172.16.0.1"),
        ("server", "fd00:172::1"),
    ):
        assert lab.ping(role, dst), f"{role} cannot reach {dst}"
    for role in topology.ROUTERS:
        fwd = lab.exec(
            role, ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
        ).stdout.split()
        assert fwd == ["1", "1"], f"forwarding off in {role}"


@pytest.mark.parametrize("name", ["fixed", "cellular"])
@pytest.mark.parametrize("reverse", [False, True], ids=["up", "down"])
def test_rate_is_about_95pct_of_tbf(lab: Lab, name: str, reverse: bool) -> None:
    local, remote = LINKS[name]
    rate = lab.links[name].rate_mbit
    got, seen = iperf3_rate_within(
        lab, "cpe", "bgw", remote, 0.90 * rate, rate, bind=local, seconds=5, omit=2, reverse=reverse
    )
    assert 0.90 * rate <= got.mbps <= 1.0 * rate, f"{name}: {seen} of {rate} Mbit/s"


def rtt_near(lab: Lab, dst: str, want_ms: float, count: int = 20) -> float:
    """The emulated RTT to ``dst``: the lowest of ``count`` pings, measured again once (after 2 s)
    if it is more than 1 ms off.

    The delay is a userspace program woken for every packet, twice per direction: on a quiet VM
    each wake-up from idle can add 0.1-0.3 ms, which moved a 20-ping *median* 1.1-1.2 ms above the
    setting in 3 of the last 4 full lab runs (one in CI), each time on the cellular link. The
    lowest ping is the emulated path with the least wake-up noise; the RTT test bounds the median
    separately. When the kernel is busy elsewhere (e.g. tearing down hundreds of TUN devices) a
    second look shows whether it is the emulation.
    """
    rtt = min(ping_rtts(lab, "cpe", dst, count=count), default=float("inf"))
    if abs(rtt - want_ms) > 1.0:
        time.sleep(2)
        rtt = min(ping_rtts(lab, "cpe", dst, count=count), default=float("inf"))
    return rtt


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_rtt_is_twice_the_one_way_delay(lab: Lab, name: str) -> None:
    want = 2 * lab.links[name].delay_ms
    rtt = rtt_near(lab, LINKS[name][1], want)
    assert abs(rtt - want) <= 1.0, f"{name}: lowest RTT {rtt} ms"
    typical = median_rtt(lab, "cpe", LINKS[name][1])
    assert want <= typical <= want + 2.0, f"{name}: median RTT {typical} ms (jitter above 2 ms)"


def _udp_loss(lab: Lab, reverse: bool) -> tuple[float, int]:
    """(lost %, packets) of 8 s of 2000 datagrams/s over the fixed link with 5 % loss set.

    iperf3 3.12 opens a UDP stream with one datagram each way and gives up after 30 s when either
    is lost ("unable to read from stream socket"), which 5 % loss does to about one run in ten.
    So the loss is set 0.6 s after the client starts, once the stream is up (about 0.3 s in at
    50 ms RTT; the loss then takes effect around 0.4 s into the first 1 s interval), and only the
    receiver's 8 later intervals count: the receiving side is always the iperf3 client (-R).
    """
    receiver, sender = ("cpe", "bgw") if reverse else ("bgw", "cpe")
    addr = {"cpe": "10.1.0.1", "bgw": "10.1.0.2"}
    lab.set_link("fixed", loss_pct=0.0)
    timer = threading.Timer(0.6, lab.set_link, ("fixed",), {"loss_pct": 5.0})
    timer.start()
    try:
        got = iperf3(
            lab,
            receiver,
            sender,
            addr[sender],
            bind=addr[receiver],
            seconds=9,
            omit=0,
            udp=True,
            bitrate="6400K",
            length=400,
            reverse=True,
        )
    finally:
        timer.cancel()
        timer.join()
    counted = [i["sum"] for i in got.raw["intervals"] if i["sum"]["start"] >= 0.99]
    lost = sum(int(s["lost_packets"]) for s in counted)
    packets = sum(int(s["packets"]) for s in counted)
    return (100.0 * lost / packets if packets else 0.0), packets


@pytest.mark.parametrize("reverse", [False, True], ids=["up", "down"])
def test_loss_matches_setting(default_links: Lab, reverse: bool) -> None:
    lab = default_links
    seen = []
    # one retry: on a loaded machine the receiving iperf3 can overflow its socket buffer
    # (extra, non-emulated loss)
    for _attempt in (1, 2):
        try:
            lost, packets = _udp_loss(lab, reverse)
        except LabError as exc:
            seen.append(str(exc))
            continue
        seen.append(f"{lost:.2f} % of {packets}")
        if packets > 15000 and 4.5 <= lost <= 5.5:
            return
    pytest.fail(f"5 % loss set, measured: {seen}")


def test_runtime_change_of_rate_and_delay(default_links: Lab) -> None:
    lab = default_links
    lab.set_link("cellular", rate_mbit=20, delay_ms=10)
    assert abs(rtt_near(lab, "10.2.0.2", 20.0) - 20.0) <= 1.0
    got, seen = iperf3_rate_within(
        lab, "cpe", "bgw", "10.2.0.2", 18.0, 20.0, bind="10.2.0.1", seconds=6, omit=2
    )
    assert 18.0 <= got.mbps <= 20.0, f"20 Mbit/s set, measured {seen} Mbit/s"
    lab.set_link("cellular", rate_mbit=5, delay_ms=25)
    assert abs(rtt_near(lab, "10.2.0.2", 50.0) - 50.0) <= 1.0


def test_cut_and_restore(default_links: Lab) -> None:
    lab = default_links
    lab.cut("fixed")
    assert not lab.ping("cpe", "10.1.0.2", count=2, timeout=1)
    assert lab.ping("cpe", "10.2.0.2"), "cutting fixed must not touch cellular"
    lab.restore("fixed")
    assert lab.ping("cpe", "10.1.0.2", count=1, timeout=2)
