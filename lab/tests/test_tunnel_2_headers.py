"""Packets cross the tunnel untouched: addresses, ports, TTL (only routers decrement); no NAT."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from mtlab import Lab, address

PROBE_PORT = {"tcp": 9101, "udp": 9102}


@pytest.fixture(scope="module")
def probes(tunnel: Lab) -> Iterator[Lab]:
    for proto, port in PROBE_PORT.items():
        for family in ("4", "6"):
            tunnel.serve(
                "server",
                tunnel.python(
                    "mtlab.probes", f"{proto}-server", "--family", family, "--port", str(port)
                ),
                name=f"probe-{proto}{family}",
                ready="ready",
            )
    yield tunnel
    for proto in PROBE_PORT:
        for family in ("4", "6"):
            tunnel.stop(f"probe-{proto}{family}")


def _client(lab: Lab, proto: str, family: int) -> dict[str, object]:
    res = lab.exec(
        "client",
        lab.python(
            "mtlab.probes",
            f"{proto}-client",
            "--host",
            address("server", "eth0", family),
            "--port",
            str(PROBE_PORT[proto]),
        ),
        timeout=30,
    )
    data: dict[str, object] = json.loads(res.stdout)
    return data


def _default_ttl(lab: Lab, family: int) -> int:
    key = "ipv4/ip_default_ttl" if family == 4 else "ipv6/conf/eth0/hop_limit"
    return int(lab.exec("client", ["cat", f"/proc/sys/net/{key}"]).stdout)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_server_sees_client_address_and_port(probes: Lab, family: int) -> None:
    got = _client(probes, "tcp", family)
    local, seen = got["local"], got["seen"]
    assert isinstance(local, list) and isinstance(seen, list)
    assert local[0] == address("client", "eth0", family), "client used an unexpected source"
    assert seen == local, f"server saw {seen}, client was {local}: address or port rewritten"


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_ttl_decremented_only_by_the_two_routers(probes: Lab, family: int) -> None:
    got = _client(probes, "udp", family)
    reply = got["reply"]
    assert isinstance(reply, dict)
    assert reply["peer"] == got["local"], f"UDP source rewritten: {reply['peer']} vs {got['local']}"
    assert reply["ttl"] == _default_ttl(probes, family) - 2, f"TTL/hop limit {reply['ttl']}"


def test_no_nat_rules_in_the_routers(tunnel: Lab) -> None:
    for role in ("cpe", "bgw"):
        ruleset = tunnel.exec(role, ["nft", "list", "ruleset"]).stdout
        assert " nat" not in ruleset and "masquerade" not in ruleset and "snat" not in ruleset, (
            f"NAT in {role}: {ruleset}"
        )
