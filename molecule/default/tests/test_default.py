"""client - cpe1 =(fixed 10 Mbit/s, cellular 5 Mbit/s)= bgw1 - server, deployed by site.yml."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from mtcheck import (
    AGENT_UNIT,
    NETWORK_UNIT,
    handler_changed,
    host,
    iperf3,
    ipj,
    metric,
    metrics,
    molecule_inventory,
    molecule_inventory_without,
    ok,
    peer_address_seen,
    run_site,
    tcp_upload,
    wait_ping,
)

CLIENT, CPE, BGW, SERVER = (
    host(n) for n in ("mtm-client", "mtm-cpe1", "mtm-bgw1", "mtm-server")
)
SERVER4, SERVER6 = "172.16.0.2", "fd00:172::2"
CLIENT4, CLIENT6 = "192.168.10.2", "fd00:10::2"
AGENT_BIN = "/opt/mptcp-tunnel/venv/bin/mptcp-tunnel"


@pytest.mark.parametrize("h", [CPE, BGW], ids=["cpe", "bgw"])
def test_sysctls(h):
    assert h.sysctl("net.mptcp.enabled") == 1
    assert h.sysctl("net.ipv4.ip_forward") == 1
    assert h.sysctl("net.ipv6.conf.all.forwarding") == 1
    assert h.sysctl("net.mptcp.stale_loss_cnt") == 4
    assert h.sysctl("net.ipv4.tcp_slow_start_after_idle") == 0
    assert h.file("/etc/sysctl.d/60-mptcp-tunnel.conf").contains("^net.mptcp.enabled=1")
    # only net.* keys: anything else would change the container's host
    for line in h.file(
        "/etc/sysctl.d/60-mptcp-tunnel.conf"
    ).content_string.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.startswith("net."), line


def test_a_drifted_sysctl_is_set_back_alone():
    """The network role reads every running value once and runs the sysctl module only for the keys
    that differ: a value changed behind its back is set back, and nothing else is touched."""
    ok(BGW, "sysctl -w net.mptcp.add_addr_timeout=60")
    try:
        play = run_site(molecule_inventory(), "--limit", "mtm-bgw1", "--tags", "network")
        assert BGW.sysctl("net.mptcp.add_addr_timeout") == 120
    finally:
        BGW.run("sysctl -w net.mptcp.add_addr_timeout=120")  # as converge left it, whatever happened
    task = "TASK [mptcp_network : Set the MPTCP and forwarding sysctls in the running kernel]"
    section = play.stdout.split(task, 1)[1].split("TASK [", 1)[0]
    assert section.count("(item=") == 1, section
    assert "changed: [mtm-bgw1] => (item=net.mptcp.add_addr_timeout = 120)" in section, section


@pytest.mark.parametrize(
    ("h", "name", "purpose"),
    [(CPE, "cpe1", "sslclient"), (BGW, "mtm-bgw1", "sslserver")],
)
def test_tls_credentials(h, name, purpose):
    pki = "/etc/mptcp-tunnel/pki"
    key = h.file(f"{pki}/node.key")
    assert key.user == "root" and key.mode == 0o600
    assert h.file(f"{pki}/node.crt").mode == 0o600
    assert h.file(pki).mode == 0o700
    # signed by the operator CA, named after the host, and good for its side only
    ok(h, f"openssl verify -CAfile {pki}/ca.crt -purpose {purpose} {pki}/node.crt")
    other = "sslserver" if purpose == "sslclient" else "sslclient"
    assert (
        h.run(f"openssl verify -CAfile {pki}/ca.crt -purpose {other} {pki}/node.crt").rc
        != 0
    )
    text = ok(h, f"openssl x509 -in {pki}/node.crt -noout -ext subjectAltName")
    assert f"DNS:{name}" in text
    # the key was made on the host and matches its certificate
    assert ok(h, f"openssl pkey -in {pki}/node.key -pubout") == ok(
        h, f"openssl x509 -in {pki}/node.crt -noout -pubkey"
    )
    assert h.file(f"{pki}/crl.pem").exists == (purpose == "sslserver")


@pytest.mark.parametrize("h", [CPE, BGW], ids=["cpe", "bgw"])
def test_units_active_and_enabled(h):
    agent = h.service(AGENT_UNIT)
    assert agent.is_running and agent.is_enabled
    assert h.service(NETWORK_UNIT).is_enabled
    unit = h.file(f"/etc/systemd/system/{AGENT_UNIT}").content_string
    for line in (
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in unit


@pytest.mark.parametrize("h", [CPE, BGW], ids=["cpe", "bgw"])
def test_mptcp_limits(h):
    # iproute2 6.1 prints the limits as "add_addr_accepted 2 subflows 2" even with -j
    words = ok(h, "ip mptcp limits show").split()
    limits = dict(zip(words[::2], words[1::2], strict=True))
    assert limits == {"add_addr_accepted": "2", "subflows": "2"}


@pytest.mark.parametrize("h", [CPE, BGW], ids=["cpe", "bgw"])
def test_network_setup_has_nothing_left_to_do(h):
    out = ok(
        h,
        f"{AGENT_BIN} setup-network --config /etc/mptcp-tunnel/config.yaml --check --json",
    )
    report = json.loads(out)
    assert report["changed"] is False and report["changes"] == [], report


def test_cpe_endpoints_per_link():
    eps = {e["address"]: e for e in ipj(CPE, "mptcp endpoint show")}
    assert set(eps) == {"10.1.0.1", "10.2.0.1"}
    assert eps["10.1.0.1"]["dev"] == "wan_fixed" and eps["10.1.0.1"].get("subflow")
    assert eps["10.2.0.1"]["dev"] == "wan_cell" and eps["10.2.0.1"].get("subflow")
    # policy "aggregate": no backup flag
    assert not any(e.get("backup") for e in eps.values())


def test_cpe_policy_routing():
    rules = {(r.get("src"), str(r.get("table"))) for r in ipj(CPE, "rule show")}
    assert ("10.1.0.1", "101") in rules and ("10.2.0.1", "102") in rules
    for table, gw, dev in (
        ("101", "10.1.0.2", "wan_fixed"),
        ("102", "10.2.0.2", "wan_cell"),
    ):
        routes = ipj(CPE, f"route show table {table}")
        assert any(
            r["dst"] == "default" and r.get("gateway") == gw and r["dev"] == dev
            for r in routes
        ), routes


def test_tunnel_devices_and_routes():
    assert CPE.interface("mt0").exists
    assert BGW.interface("mt-cpe1").exists
    v4 = ipj(BGW, "route show 192.168.10.0/24")
    assert v4 and v4[0]["dev"] == "mt-cpe1"
    v6 = ipj(BGW, "-6 route show fd00:10::/64")
    assert v6 and v6[0]["dev"] == "mt-cpe1"


def test_ping_ipv4_and_ipv6():
    wait_ping(CLIENT, SERVER4)
    wait_ping(CLIENT, SERVER6)
    ok(CLIENT, f"ping -c 5 -i 0.2 -W 2 {SERVER4}")
    ok(CLIENT, f"ping -6 -c 5 -i 0.2 -W 2 {SERVER6}")


def test_server_sees_client_addresses():
    assert peer_address_seen(CLIENT, SERVER, SERVER4) == CLIENT4
    seen6 = peer_address_seen(CLIENT, SERVER, SERVER6)
    assert ipaddress.ip_address(seen6) == ipaddress.ip_address(CLIENT6)


def test_tcp_iperf3_uses_both_subflows():
    mbps, sent = tcp_upload(CLIENT, SERVER, SERVER4, CPE, floor_mbps=10.0)
    fixed, cell = sent["wan_fixed"], sent["wan_cell"]
    assert fixed > 1.0 and cell > 1.0, "both subflows must carry data"
    # more than the fixed link alone can carry (10 Mbit/s shaped, ~9.6 usable)
    assert mbps > 10.0
    m = metrics(CPE)
    assert metric(m, "mptcp_tunnel_subflows") >= 1
    assert metric(m, "mptcp_tunnel_session_up") == 1


def test_udp_iperf3():
    result = iperf3(CLIENT, SERVER, SERVER4, args="-u -b 4M -l 1200", seconds=4)
    summary = result["end"]["sum"]
    print(
        f"iperf3 UDP 4 Mbit/s: {summary['lost_percent']:.2f} % lost of {summary['packets']}"
    )
    assert summary["packets"] > 1000
    assert summary["lost_percent"] < 5.0


def test_tcp_iperf3_ipv6():
    result = iperf3(CLIENT, SERVER, SERVER6, seconds=3)
    assert result["end"]["sum_received"]["bits_per_second"] > 2e6


def test_boot_unit_restores_endpoints_and_rules_without_the_agent():
    """What mptcp-tunnel-network.service does at boot: endpoints, limits and rules come back."""
    ok(CPE, f"systemctl stop {AGENT_UNIT}")
    try:
        ok(CPE, "ip mptcp endpoint flush")
        ok(CPE, "ip mptcp limits set subflows 0 add_addr_accepted 0")
        ok(CPE, "ip rule del from 10.2.0.1 lookup 102")
        ok(CPE, f"systemctl restart {NETWORK_UNIT}")
        assert {e["address"] for e in ipj(CPE, "mptcp endpoint show")} == {
            "10.1.0.1",
            "10.2.0.1",
        }
        assert ok(CPE, "ip mptcp limits show").split() == [
            "add_addr_accepted",
            "2",
            "subflows",
            "2",
        ]
        rules = {(r.get("src"), str(r.get("table"))) for r in ipj(CPE, "rule show")}
        assert ("10.2.0.1", "102") in rules
    finally:
        ok(CPE, f"systemctl start {AGENT_UNIT}")
    wait_ping(CLIENT, SERVER4, within_s=45)


CPE_LINKS = [
    {
        "name": "fixed",
        "kind": "fixed",
        "interface": "wan_fixed",
        "address": "10.1.0.1",
        "gateway": "10.1.0.2",
        "table": 101,
        "rate_mbit": 10,
    },
    {
        "name": "cellular",
        "kind": "cellular",
        "interface": "wan_cell",
        "address": "10.2.0.1",
        "gateway": "10.2.0.2",
        "table": 102,
    },
]  # as in molecule.yml


def _reloaded_in_place(play, pid: str, reconnects: float) -> None:
    assert handler_changed(play.stdout, "mptcp_tunnel : Reload mptcp-tunnel")
    assert not handler_changed(play.stdout, "mptcp_tunnel : Restart mptcp-tunnel")
    assert CPE.check_output(f"systemctl show -P MainPID {AGENT_UNIT}") == pid
    assert metric(metrics(CPE), "mptcp_tunnel_reconnects_total") == reconnects


def _cellular_stands_by() -> None:
    eps = {e["address"]: e for e in ipj(CPE, "mptcp endpoint show")}
    assert eps["10.2.0.1"].get("backup") and not eps["10.1.0.1"].get("backup")


def _status_policy() -> str:
    return json.loads(CPE.check_output("mptcp-tunnel status --json"))["policy"]


def _cap_spent(link: str) -> list[dict]:
    """The status's caps once ``link``'s shows spent (counting starts at the reload; the link
    probes spend a 1-byte cap at once), or as they are after 10 s."""
    for _ in range(20):
        caps = json.loads(CPE.check_output("mptcp-tunnel status --json"))["caps"]
        if {c["link"]: c for c in caps}.get(link, {}).get("spent"):
            break
        time.sleep(0.5)
    return caps


# The roles a policy or cap change touches (the agent's config; the endpoints' flags), on cpe1 only.
ONE_CPE_AGENT_AND_NETWORK = ("--limit", "mtm-cpe1", "--tags", "agent,network")


def test_policy_and_cap_changes_are_reloads_without_dropping_the_connection(tmp_path):
    """site.yml with policy backup, then overflow with a cellular cap already spent (1 byte), then
    the original settings: each play reloads the agent (SIGHUP; same PID, same MPTCP connection, no
    reconnect). The cellular endpoint stands by (backup flag, MP_PRIO) under backup and with its cap
    spent; the status shows the policy and the cap; the original settings clear the flag. The two
    changes run only the roles a policy or a cap touches (`--tags agent,network`, as an operator
    would); the restore is the whole site.yml, which must be a reload too. Three plays: 167 s for the
    test (246 s before the network role's sysctl loops went), 375 s with four whole plays (overflow's
    own decisions are the lab's `test_tunnel_8_policy.py`)."""
    inventory = molecule_inventory_without(tmp_path)
    pid = CPE.check_output(f"systemctl show -P MainPID {AGENT_UNIT}")
    reconnects = metric(metrics(CPE), "mptcp_tunnel_reconnects_total")
    capped = [CPE_LINKS[0], {**CPE_LINKS[1], "cap": {"bytes": 1, "period": "daily"}}]
    try:
        play = run_site(
            inventory,
            *ONE_CPE_AGENT_AND_NETWORK,
            "-e",
            "mptcp_tunnel_cpe_policy=backup",
        )
        _reloaded_in_place(play, pid, reconnects)
        _cellular_stands_by()
        assert _status_policy() == "backup"
        wait_ping(CLIENT, SERVER4)
        # overflow, with the cap: spent at once, cellular stands by whatever the demand
        play = run_site(
            inventory,
            *ONE_CPE_AGENT_AND_NETWORK,
            "-e",
            json.dumps(
                {
                    "mptcp_tunnel_cpe_policy": "overflow",
                    "mptcp_tunnel_cpe_links": capped,
                }
            ),
        )
        _reloaded_in_place(play, pid, reconnects)
        caps = {c["link"]: c for c in _cap_spent("cellular")}
        assert caps["cellular"]["limit_bytes"] == 1 and caps["cellular"]["spent"], caps
        assert _status_policy() == "overflow"
        _cellular_stands_by()
        wait_ping(CLIENT, SERVER4)
    finally:
        play = run_site(inventory, "--limit", "mtm-cpe1")
    _reloaded_in_place(play, pid, reconnects)
    eps = {e["address"]: e for e in ipj(CPE, "mptcp endpoint show")}
    assert not eps["10.2.0.1"].get("backup")
    assert _status_policy() == "aggregate"


def test_survives_bgw_agent_restart():
    before = metric(metrics(CPE), "mptcp_tunnel_reconnects_total")
    ok(BGW, f"systemctl restart {AGENT_UNIT}")
    assert BGW.service(AGENT_UNIT).is_running
    waited = wait_ping(CLIENT, SERVER4, within_s=45)
    print(f"tunnel back {waited:.1f} s after the BGW agent restarted")
    ok(CLIENT, f"ping -c 3 -i 0.2 -W 2 {SERVER4}")
    assert peer_address_seen(CLIENT, SERVER, SERVER4) == CLIENT4
    assert metric(metrics(CPE), "mptcp_tunnel_reconnects_total") > before


def test_firewall_table_loaded_at_boot():
    assert BGW.service("mptcp-tunnel-firewall.service").is_enabled
    rules = ok(BGW, "nft list table inet mptcp_tunnel")
    assert "iifgroup" in rules and "update @admit4" in rules


def test_customers_cannot_reach_the_bgw_itself():
    # ICMP is allowed (PMTU discovery needs it); the BGW's services are not: its tunnel port answers the
    # operator's side but not a customer's LAN through the tunnel
    wait_ping(CLIENT, "172.16.0.1")
    probe = "python3 -c \"import socket; socket.create_connection(('172.16.0.1', 7440), timeout=3)\""
    assert SERVER.run(probe).rc == 0, "the operator's side must reach the BGW"
    res = CLIENT.run(probe)
    assert res.rc != 0 and "timed out" in res.stderr, res.stderr


def test_admission_limit_per_source():
    def dropped() -> int:
        out = ok(BGW, "nft -j list chain inet mptcp_tunnel input")
        return sum(
            e["counter"]["packets"]
            for r in json.loads(out)["nftables"]
            if "rule" in r and "admit" in json.dumps(r["rule"]["expr"])
            for e in r["rule"]["expr"]
            if "counter" in e
        )

    before = dropped()
    # 600 SYNs at once from one source: the burst (200) passes, most of the rest is dropped
    ok(
        SERVER,
        'python3 -c "import socket\nsocks = [socket.socket() for _ in range(600)]\n'
        "for s in socks: s.setblocking(False); s.connect_ex(('172.16.0.1', 7440))\n"
        'import time; time.sleep(1)"',
    )
    assert dropped() - before >= 300


def test_rotate_certs_costs_the_cpe_one_reconnect_and_the_bgw_none():
    # last: the CPE restarts with its new certificate (a fresh connection for any test after it)
    pki = "/etc/mptcp-tunnel/pki"

    def serial(h):
        return (
            ok(h, f"openssl x509 -in {pki}/node.crt -noout -serial")
            .strip()
            .split("=")[1]
        )

    wait_ping(CLIENT, SERVER4)
    old_cpe, old_bgw = serial(CPE), serial(BGW)
    cpe_pid = CPE.check_output(f"systemctl show -p MainPID --value {AGENT_UNIT}")
    bgw_pid = BGW.check_output(f"systemctl show -p MainPID --value {AGENT_UNIT}")
    # a Counter is exposed as <name>_total
    ended = metric(metrics(BGW), "mptcp_tunnel_sessions_ended_total", cpe="cpe1")
    run_site(molecule_inventory(), play="playbooks/rotate-certs.yml")
    assert serial(CPE) != old_cpe and serial(BGW) != old_bgw
    # the CPE's replaced certificate is revoked on the BGW; its new one is not
    crl = ok(BGW, f"openssl crl -in {pki}/crl.pem -noout -text")
    assert old_cpe in crl.replace(":", "") and serial(CPE) not in crl.replace(":", "")
    wait_ping(CLIENT, SERVER4)
    m = metrics(BGW)
    assert metric(m, "mptcp_tunnel_session_up", cpe="cpe1") == 1
    # the CPE agent restarted (its one reconnect), the BGW agent only reloaded (same process)
    assert (
        CPE.check_output(f"systemctl show -p MainPID --value {AGENT_UNIT}") != cpe_pid
    )
    assert (
        BGW.check_output(f"systemctl show -p MainPID --value {AGENT_UNIT}") == bgw_pid
    )
    ended_now = metric(m, "mptcp_tunnel_sessions_ended_total", cpe="cpe1") - ended
    assert ended_now == 1, (
        f"the rotation cost cpe1 {ended_now:.0f} reconnects (one expected)"
    )
