"""Where the lab's links are limited. By default (``Lab(link_routers=True)``) each access link's
rate limit runs in a router namespace between the CPE and the BGW, where TCP Small Queues on the
sender cannot see it; ``Lab(link_routers=False)`` (``MT_LAB_LINK_ROUTERS=0``) keeps the older
emulation, a tbf on each end's own interface. One lab of each kind (other prefixes) beside the
session's lab, no agents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from run_bench import linkctl

from mtlab import Lab, LabError, shaping, topology
from mtlab import failover as fo
from mtlab.lab import default_link_routers
from mtlab.measure import iperf3_rate_within, ping_rtts

LINKS = {"fixed": ("10.1.0.1", "10.1.0.2"), "cellular": ("10.2.0.1", "10.2.0.2")}


@pytest.fixture(scope="module", params=[True, False], ids=["routers", "ends"])
def emulated(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Lab]:
    routers: bool = request.param
    prefix = lab.prefix.rstrip("-") + ("r-" if routers else "e-")
    the_lab = Lab(prefix=prefix, link_routers=routers)
    try:
        the_lab.up(agents=False)
    except LabError as exc:
        the_lab.down()
        pytest.fail(f"lab (link_routers={routers}) did not come up: {exc}", pytrace=False)
    try:
        yield the_lab
    finally:
        the_lab.down()
        assert not the_lab.leftovers(), the_lab.leftovers()


def test_the_session_lab_has_link_routers_unless_told_otherwise(lab: Lab) -> None:
    """The default: every lab test and benchmark runs behind the routers."""
    assert lab.link_routers is default_link_routers()
    for name, role in topology.LINK_ROUTERS.items():
        assert topology.exists(lab.ns(role)) is lab.link_routers, name
        if lab.link_routers:
            assert lab.rate_stages(name) == [
                (lab.ns(role), topology.ROUTER_BGW_IF),
                (lab.ns(role), topology.ROUTER_CPE_IF),
            ]


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_the_upload_is_limited_where_the_lab_says(emulated: Lab, name: str) -> None:
    upload_stage = emulated.rate_stages(name)[0]
    before = shaping.tbf_state(*upload_stage)["packets"]
    local, remote = LINKS[name]
    rate = emulated.links[name].rate_mbit
    got, seen = iperf3_rate_within(
        emulated, "cpe", "bgw", remote, 0.90 * rate, rate, bind=local, seconds=5, omit=2
    )
    assert 0.90 * rate <= got.mbps <= 1.0 * rate, f"{name}: {seen} of {rate} Mbit/s"
    assert shaping.tbf_state(*upload_stage)["packets"] > before + 1000
    ends = [
        (emulated.ns(end.role), end.ifname)
        for end in (topology.wire(name).a, topology.wire(name).b)
    ]
    if emulated.link_routers:
        for ns, ifname in ends:  # nothing on the ends: TSQ sees no queue
            with pytest.raises(RuntimeError, match="no tbf"):
                shaping.tbf_state(ns, ifname)
    else:
        assert emulated.rate_stages(name) == ends
        for role in topology.LINK_ROUTERS.values():
            assert not topology.exists(emulated.ns(role))


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_the_download_is_limited_too_and_the_delay_is_kept(emulated: Lab, name: str) -> None:
    local, remote = LINKS[name]
    rate = emulated.links[name].rate_mbit
    got, seen = iperf3_rate_within(
        emulated,
        "cpe",
        "bgw",
        remote,
        0.90 * rate,
        rate,
        bind=local,
        seconds=5,
        omit=2,
        reverse=True,
    )
    assert 0.90 * rate <= got.mbps <= 1.0 * rate, f"{name}: {seen} of {rate} Mbit/s"
    want = 2 * emulated.links[name].delay_ms
    rtt = min(ping_rtts(emulated, "cpe", remote, count=20), default=float("inf"))
    assert abs(rtt - want) <= 1.5, f"{name}: lowest RTT {rtt} ms"


def test_the_benchmarks_direct_path_crosses_the_fixed_link(emulated: Lab) -> None:
    """The `latency` benchmark's `fixed-only` contender: client and server routed over the fixed
    link without agents. Behind a router the replies need a route back through the CPE side."""
    server = topology.address("server", "eth0")
    linkctl.direct_routes(emulated, add=True)
    try:
        rtts = ping_rtts(emulated, "client", server, count=20)
        rate = emulated.links["fixed"].rate_mbit
        got, seen = iperf3_rate_within(
            emulated, "client", "server", server, 0.85 * rate, rate, seconds=4, omit=1, reverse=True
        )
    finally:
        linkctl.direct_routes(emulated, add=False)
    want = 2 * emulated.links["fixed"].delay_ms
    assert len(rtts) >= 18 and abs(min(rtts) - want) <= 1.5, rtts
    assert 0.85 * rate <= got.mbps <= rate, f"{seen} of {rate} Mbit/s"
    lost = ping_rtts(emulated, "client", server, count=3)
    assert not lost, f"the direct routes were not removed: {lost}"


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_a_link_whose_carrier_returns_answers_at_once(emulated: Lab, name: str) -> None:
    """After a carrier loss both ends have forgotten their neighbours. A real next hop answers ARP
    at once; Linux delays each proxy ARP reply by a random 0-0.8 s unless ``proxy_delay`` is 0,
    which held the first ping after a repair up to 1.5 s and the fixed link's return (probes,
    then the new subflow) with it (29 Nov). The first ping over the link after each of four
    repairs must take its RTT only."""
    remote = LINKS[name][1]  # on the link's own /30: the ping leaves by that link
    want = 2 * emulated.links[name].delay_ms
    firsts = []
    for _ in range(4):
        fo.break_link(emulated, "carrier", name)
        fo.repair_link(emulated, "carrier", name)
        firsts += ping_rtts(emulated, "cpe", remote, count=1) or [float("inf")]
    # Slack for a busy host: the delay a proxy reply used to get is 0-800 ms, twice per round.
    assert max(firsts) <= want + 150, f"{name}: first RTT after each repair {firsts} ms"
