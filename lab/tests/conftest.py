"""Lab test fixtures: ONE lab for the whole session, always torn down.

Needs root, iperf3, ping, nft, iptables, curl and the Python package ``netfilterqueue``: a
missing piece fails the session with a message naming it (these tests never skip silently).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the benchmarks' helpers some lab tests drive (run_bench.linkctl, .loadgen, .lockout)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mtlab import Lab, LabError  # noqa: E402

TOOLS = ("ip", "iperf3", "ping", "nft", "iptables", "ip6tables", "curl", "mptcpize")
DEFAULT_TIMEOUT_S = 180


# Run last: tearing down hundreds of TUN devices keeps kernel workers busy for a minute after the
# test ends, long enough to push the link-emulation tests' 20-ping median RTT 1 ms late (CI, twice).
RUN_LAST = ("test_fleet_bgw.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: the rest keep their order


def _missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (run as root: the lab creates network namespaces)")
    missing += [f"command {t}" for t in TOOLS if shutil.which(t) is None]
    if importlib.util.find_spec("netfilterqueue") is None:
        missing.append("Python package netfilterqueue (make setup)")
    return missing


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    missing = _missing()
    if missing:
        pytest.fail("lab tests cannot run, missing: " + "; ".join(missing), pytrace=False)
    the_lab = Lab()
    try:
        the_lab.up(agents=False)
    except LabError as exc:
        pytest.fail(f"lab did not come up: {exc}", pytrace=False)
    try:
        yield the_lab
    finally:
        the_lab.down()
        left = the_lab.leftovers()
        assert not left, f"lab teardown left: {left}"


@pytest.fixture(scope="session")
def tunnel(lab: Lab) -> Lab:
    """The lab with both agents running and traffic crossing the tunnel."""
    try:
        lab.agent_bin()
        lab.start_agents(wait=True, timeout=40)
    except LabError as exc:
        pytest.fail(f"agents did not bring the tunnel up: {exc}", pytrace=False)
    return lab


@pytest.fixture
def default_links(lab: Lab) -> Iterator[Lab]:
    """Restores the default link parameters (and un-cuts) after a test that changes them."""
    yield lab
    for name in ("fixed", "cellular"):
        lab.stop_trace(name)
        lab.restore(name)
    lab.set_link("fixed", rate_mbit=10, delay_ms=25, loss_pct=0, queue_ms=50)
    lab.set_link("cellular", rate_mbit=5, delay_ms=25, loss_pct=0, queue_ms=50)
