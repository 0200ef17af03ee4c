import ipaddress
import random

from packets import ipv4, ipv6

from mptcp_tunnel.backoff import Backoff
from mptcp_tunnel.srcfilter import SourceFilter


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    b.reset()
    assert b.next_delay() <= 0.5


def test_source_filter_accepts_own_prefixes_only() -> None:
    f = SourceFilter([ipaddress.ip_network("192.168.10.0/24"), ipaddress.ip_network("fd00:10::/64")])
    assert f.allows(ipv4(src="192.168.10.77"))
    assert not f.allows(ipv4(src="192.168.11.2"))
    assert f.allows(ipv6(src=ipaddress.IPv6Address("fd00:10::5").packed))
    assert not f.allows(ipv6(src=ipaddress.IPv6Address("fd00:11::5").packed))


def test_source_filter_skips_the_vnet_header() -> None:
    f = SourceFilter([ipaddress.ip_network("10.0.0.0/8")], vnet_hdr_len=10)
    assert f.allows(bytes(10) + ipv4(src="10.9.8.7"))
    assert not f.allows(bytes(10) + ipv4(src="11.9.8.7"))
