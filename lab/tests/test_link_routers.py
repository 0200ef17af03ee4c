"""The opt-in link routers (``Lab(link_routers=True)``, ``MT_LAB_LINK_ROUTERS=1``): each access
link's rate limit runs in a router namespace between the CPE and the BGW, where TCP Small Queues on
the sender cannot see it. A lab of its own (another prefix) beside the session's lab, no agents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mtlab import Lab, LabError, shaping, topology
from mtlab.measure import iperf3, ping_rtts

LINKS = {"fixed": ("10.1.0.1", "10.1.0.2"), "cellular": ("10.2.0.1", "10.2.0.2")}


@pytest.fixture(scope="module")
def routed(lab: Lab) -> Iterator[Lab]:
    the_lab = Lab(prefix=lab.prefix.rstrip("-") + "r-", link_routers=True)
    try:
        the_lab.up(agents=False)
    except LabError as exc:
        the_lab.down()
        pytest.fail(f"lab with link routers did not come up: {exc}", pytrace=False)
    try:
        yield the_lab
    finally:
        the_lab.down()
        assert not the_lab.leftovers(), the_lab.leftovers()


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_the_rate_limit_is_in_the_router_not_on_the_ends(routed: Lab, name: str) -> None:
    router = routed.ns(topology.LINK_ROUTERS[name])
    before = shaping.tbf_state(router, topology.ROUTER_BGW_IF)["packets"]
    local, remote = LINKS[name]
    rate = routed.links[name].rate_mbit
    got = iperf3(routed, "cpe", "bgw", remote, bind=local, seconds=5, omit=2)
    assert 0.90 * rate <= got.mbps <= 1.0 * rate, f"{name}: {got.mbps:.2f} of {rate} Mbit/s"
    assert shaping.tbf_state(router, topology.ROUTER_BGW_IF)["packets"] > before + 1000
    for end in (topology.wire(name).a, topology.wire(name).b):
        with pytest.raises(RuntimeError, match="no tbf"):
            shaping.tbf_state(routed.ns(end.role), end.ifname)


@pytest.mark.parametrize("name", ["fixed", "cellular"])
def test_the_download_is_limited_too_and_the_delay_is_kept(routed: Lab, name: str) -> None:
    local, remote = LINKS[name]
    rate = routed.links[name].rate_mbit
    got = iperf3(routed, "cpe", "bgw", remote, bind=local, seconds=5, omit=2, reverse=True)
    assert 0.90 * rate <= got.mbps <= 1.0 * rate, f"{name}: {got.mbps:.2f} of {rate} Mbit/s"
    want = 2 * routed.links[name].delay_ms
    rtt = min(ping_rtts(routed, "cpe", remote, count=20), default=float("inf"))
    assert abs(rtt - want) <= 1.5, f"{name}: lowest RTT {rtt} ms through the router"
