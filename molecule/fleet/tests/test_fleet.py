"""One BGW serving three CPEs, each with its own client and prefix, deployed by site.yml."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from mtcheck import (
    AGENT_UNIT,
    handler_changed,
    host,
    ipj,
    metric,
    metrics,
    molecule_inventory,
    molecule_inventory_without,
    ok,
    peer_address_seen,
    run_site,
    start_unit,
    stop_unit,
    tcp_upload,
    wait_ping,
)

BGW, SERVER = host("mtf-bgw1"), host("mtf-server")
N = (1, 2, 3)
CPES = {n: host(f"mtf-cpe{n}") for n in N}
CLIENTS = {n: host(f"mtf-client{n}") for n in N}
SERVER4, SERVER6 = "172.16.0.2", "fd00:172::2"


def test_bgw_serves_every_cpe():
    for n in N:
        assert BGW.interface(f"mt-cpe{n}").exists
        routes = ipj(BGW, f"route show 192.168.{10 + n}.0/24")
        assert routes and routes[0]["dev"] == f"mt-cpe{n}"
    m = metrics(BGW)
    for n in N:
        assert metric(m, "mptcp_tunnel_session_up", cpe=f"cpe{n}") == 1


@pytest.mark.parametrize("n", N)
def test_every_client_reaches_the_server(n):
    client = CLIENTS[n]
    wait_ping(client, SERVER4)
    wait_ping(client, SERVER6)
    assert peer_address_seen(client, SERVER, SERVER4) == f"192.168.{10 + n}.2"
    seen6 = peer_address_seen(client, SERVER, SERVER6)
    assert ipaddress.ip_address(seen6) == ipaddress.ip_address(f"fd00:{10 + n}::2")


def test_clients_in_parallel():
    """Sessions are independent: one CPE's bulk flow aggregates while other CPEs' clients ping."""
    for n in (2, 3):  # long enough to cover a retried transfer (2 x 11 s)
        start_unit(CLIENTS[n], "mt-ping", f"ping -c 150 -i 0.2 -W 2 {SERVER4}")
    try:
        mbps, _ = tcp_upload(CLIENTS[1], SERVER, SERVER4, CPES[1], floor_mbps=10.0)
    finally:
        for n in (2, 3):
            stop_unit(CLIENTS[n], "mt-ping")
    print(f"cpe1 subflows: {metric(metrics(CPES[1]), 'mptcp_tunnel_subflows'):.0f}")
    # more than the fixed link alone carries (10 Mbit/s shaped): both of cpe1's links are used
    assert mbps > 10.0
    for n in (2, 3):
        ok(CLIENTS[n], f"ping -c 3 -i 0.2 -W 2 {SERVER4}")


def test_customers_cannot_reach_each_other():
    """The BGW's firewall: one customer's LAN may not reach another's through the BGW."""
    wait_ping(CLIENTS[1], SERVER4)
    wait_ping(CLIENTS[2], SERVER4)

    def dropped() -> int:
        out = json.loads(ok(BGW, "nft -j list chain inet mptcp_tunnel forward"))
        return sum(
            e["counter"]["packets"]
            for r in out["nftables"]
            if "rule" in r
            for e in r["rule"]["expr"]
            if "counter" in e
        )

    before = dropped()
    assert CLIENTS[1].run("ping -c 3 -i 0.2 -W 1 192.168.12.2").rc != 0
    assert CLIENTS[1].run("ping -6 -c 3 -i 0.2 -W 1 fd00:12::2").rc != 0
    assert dropped() - before >= 6


def _udp_received(marker: str) -> bool:
    return SERVER.run(f"grep -q {marker} /tmp/mt-udp-got").rc == 0


def test_cpe_cannot_use_another_cpes_prefix():
    """cpe2 sends with a source from cpe1's prefix: the BGW drops (and counts) it."""
    cpe2 = CPES[2]
    SERVER.run("rm -f /tmp/mt-udp-got")
    start_unit(
        SERVER, "mt-udp-recv", "socat -u UDP4-RECV:6000,reuseaddr OPEN:/tmp/mt-udp-got,creat,append"
    )
    cpe2.run("ip addr del 192.168.11.99/32 dev lo")
    ok(cpe2, "ip addr add 192.168.11.99/32 dev lo")
    try:
        drops_before = metric(metrics(BGW), "mptcp_tunnel_spoofed_drops_total", cpe="cpe2")
        # control: from cpe2's own prefix the datagram arrives
        ok(
            cpe2,
            f"sh -c 'echo legit-from-cpe2 | socat -u - UDP4-SENDTO:{SERVER4}:6000,bind=192.168.12.1'",
        )
        deadline = time.monotonic() + 10
        while not _udp_received("legit-from-cpe2"):
            assert time.monotonic() < deadline, (
                "the control datagram from cpe2's own prefix never arrived"
            )
            time.sleep(0.2)
        for _ in range(5):
            ok(
                cpe2,
                f"sh -c 'echo spoofed-by-cpe2 | socat -u - UDP4-SENDTO:{SERVER4}:6000,bind=192.168.11.99'",
            )
        time.sleep(2)
        assert not _udp_received("spoofed-by-cpe2"), (
            "a datagram with cpe1's source crossed cpe2's session"
        )
        drops = metric(metrics(BGW), "mptcp_tunnel_spoofed_drops_total", cpe="cpe2") - drops_before
        assert drops >= 5
        # cpe2's session survives and still carries its own traffic
        ok(CLIENTS[2], f"ping -c 2 -W 2 {SERVER4}")
    finally:
        cpe2.run("ip addr del 192.168.11.99/32 dev lo")
        stop_unit(SERVER, "mt-udp-recv")


@pytest.mark.parametrize(
    ("limit", "extra", "message"),
    [
        (
            "mtf-bgw1",
            {"mptcp_tunnel_cpe_prefixes": ["192.168.11.0/24"]},
            "overlaps 192.168.11.0/24 of CPE",
        ),
        (
            "mtf-cpe1",
            {"mptcp_tunnel_cpe_bgw": "bgw-nowhere"},
            "assigned to BGW bgw-nowhere, which is not in the inventory",
        ),
        (
            "mtf-cpe1",
            {
                "mptcp_tunnel_cpe_links": [
                    {
                        "name": "fixed",
                        "kind": "fixed",
                        "interface": "wan_nope",
                        "address": "10.1.1.1",
                        "table": 101,
                    }
                ]
            },
            "needs interface wan_nope",
        ),
        (
            "mtf-cpe1",
            {"mptcp_tunnel_cpe_prefixes": ["192.168.11.1/24"]},
            "bad entries: 192.168.11.1/24",
        ),
    ],
    ids=["overlapping-prefixes", "unknown-bgw", "missing-interface", "host-bits"],
)
def test_preflight_fails_early_and_clearly(tmp_path, limit, extra, message):
    """Broken inventories stop in preflight with one clear message, before any role changes a host."""
    inventory = molecule_inventory_without(tmp_path)
    config = BGW.file("/etc/mptcp-tunnel/config.yaml").content_string
    play = run_site(inventory, "--limit", limit, "-e", json.dumps(extra), expect_rc=2)
    assert message in " ".join(play.stdout.split()), play.stdout[-3000:]
    # site.yml's pre_tasks check the inventory before any role (kernel, certificates) touches a host
    assert "TASK [mptcp_kernel" not in play.stdout and "TASK [mptcp_pki" not in play.stdout
    assert BGW.file("/etc/mptcp-tunnel/config.yaml").content_string == config


def test_removing_a_cpe_from_the_inventory_removes_its_state(tmp_path):
    """Last: re-run site.yml on the BGW with cpe3 gone from the inventory."""
    pid_before = BGW.run(f"systemctl show -P MainPID {AGENT_UNIT}").stdout.strip()
    reconnects = {n: metric(metrics(CPES[n]), "mptcp_tunnel_reconnects_total") for n in (1, 2)}
    inventory = molecule_inventory_without(tmp_path, "mtf-cpe3")
    play = run_site(inventory, "--limit", "bgw")
    restarted = handler_changed(play.stdout, "mptcp_tunnel : Restart mptcp-tunnel")
    assert "cpe3" not in BGW.file("/etc/mptcp-tunnel/config.yaml").content_string
    deadline = time.monotonic() + 15
    while BGW.interface("mt-cpe3").exists:
        assert time.monotonic() < deadline, "mt-cpe3 still exists on the BGW"
        time.sleep(0.5)
    assert ipj(BGW, "route show 192.168.13.0/24") == []
    assert ipj(BGW, "-6 route show fd00:13::/64") == []
    assert CLIENTS[3].run(f"ping -c 2 -W 1 {SERVER4}").rc != 0
    assert handler_changed(play.stdout, "mptcp_tunnel : Reload mptcp-tunnel")
    for n in (1, 2):
        wait_ping(CLIENTS[n], SERVER4)
    if restarted:  # only when the agent's code changed since converge (a developer editing it)
        print(
            "the agent's wheel changed since converge: restarted, so sessions were re-established"
        )
        return
    # a reload (SIGHUP), not a restart: the other CPEs' sessions were not touched
    assert BGW.run(f"systemctl show -P MainPID {AGENT_UNIT}").stdout.strip() == pid_before
    for n in (1, 2):
        assert metric(metrics(CPES[n]), "mptcp_tunnel_reconnects_total") == reconnects[n]


def test_adding_the_cpe_back_is_one_inventory_entry():
    """After the removal above: cpe3 back in the inventory, the next BGW run serves it again.

    cpe3's agent kept retrying with backoff all along; nothing is done on the CPE. This also
    leaves the fleet as converge made it, so `molecule verify` can be run again.
    """
    play = run_site(molecule_inventory(), "--limit", "bgw")
    assert handler_changed(play.stdout, "mptcp_tunnel : Reload mptcp-tunnel")
    assert "cpe3" in BGW.file("/etc/mptcp-tunnel/config.yaml").content_string
    wait_ping(CLIENTS[3], SERVER4, within_s=90)  # the CPE's backoff may be at its maximum
    assert peer_address_seen(CLIENTS[3], SERVER, SERVER4) == "192.168.13.2"
    assert metric(metrics(BGW), "mptcp_tunnel_session_up", cpe="cpe3") == 1
