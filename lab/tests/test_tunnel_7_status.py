"""Operations (issue 9): `mptcp-tunnel status` over the control socket and per-subflow metrics."""

from __future__ import annotations

import json
import os
import stat
import time

from mtlab import Lab, address
from mtlab.measure import iperf3


def _status(lab: Lab, role: str, *args: str) -> tuple[int, str, str]:
    sock = str(lab.state_dir / f"{role}.sock")
    res = lab.exec(role, [lab.agent_bin(), "status", "--socket", sock, *args], check=False)
    return res.returncode, res.stdout, res.stderr


def test_status_shows_links_and_subflows(tunnel: Lab) -> None:
    tunnel.wait_tunnel(30)
    iperf3(tunnel, "client", "server", address("server", "eth0"), seconds=3, omit=1)
    mode = os.stat(tunnel.state_dir / "cpe.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    deadline = time.monotonic() + 15
    while True:
        rc, out, err = _status(tunnel, "cpe", "--json")
        assert rc == 0, err
        snap = json.loads(out)
        established = [sf for sf in snap["subflows"] if sf["state"] == "established"]
        if len(established) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps(snap, indent=1))
    assert snap["role"] == "cpe" and snap["id"] == "cpe1" and snap["policy"] == "aggregate"
    assert snap["session"]["up"] and snap["session"]["bytes"]["tx"] > 1_000_000
    assert [(lk["name"], lk["up"], lk["subflows"]) for lk in snap["links"]] == [
        ("fixed", True, 1),
        ("cellular", True, 1),
    ]
    # the kernel may keep a closed initial subflow listed (state "close"): established ones count
    by_link = {sf["link"]: sf for sf in snap["subflows"] if sf["state"] == "established"}
    assert set(by_link) == {"fixed", "cellular"}
    for name, sf in by_link.items():
        assert sf["state"] == "established"
        assert 40 <= sf["rtt_ms"] <= 400, f"{name}: rtt {sf['rtt_ms']} ms"
        assert sf["cwnd"] > 0 and sf["bytes_sent"] > 100_000, sf
        assert sf["backup"] is False
        assert sf["remote"] == "10.1.0.2"
    rc, text, err = _status(tunnel, "cpe")
    assert rc == 0, err
    assert "policy aggregate" in text and "session up via" in text
    assert any(line.startswith("fixed ") and " up " in line for line in text.splitlines())
    assert any(line.startswith("cellular ") and "established" in line for line in text.splitlines())
    # the BGW: each session's subflows as its worker read them (every 5 s at most, while it is busy)
    deadline = time.monotonic() + 30
    while True:
        rc, out, err = _status(tunnel, "bgw", "--json")
        assert rc == 0, err
        bgw = json.loads(out)
        cpe1 = bgw["cpes"][0]
        rows = [r for r in cpe1.get("subflow_details", []) if r["state"] == "established"]
        # a reading from before the upload (the session's first traffic) is replaced within 5 s of
        # traffic: the pings below
        uploaded = all(r["bytes_received"] > 100_000 for r in rows)
        if (len(rows) == 2 and uploaded) or time.monotonic() > deadline:
            break
        ping = ["ping", "-c", "5", "-i", "0.2", address("server", "eth0")]
        tunnel.exec("client", ping, check=False)  # traffic: the session is read again
    print(json.dumps(bgw, indent=1))
    assert bgw["role"] == "bgw" and cpe1["id"] == "cpe1" and cpe1["up"]
    cpe_ends = {address("cpe", "wan_fixed"), address("cpe", "wan_cell")}
    assert {r["remote"] for r in rows} == cpe_ends, cpe1
    assert cpe1["subflows"] == 2, cpe1  # the count agrees with the rows, also on a new session
    for r in rows:
        assert 40 <= r["rtt_ms"] <= 400 and r["cwnd"] > 0, r
        assert r["bytes_received"] > 100_000, r  # the upload above arrived over both
    assert 0 <= cpe1["subflows_age_s"] <= 30
    rc, text, err = _status(tunnel, "bgw")
    assert rc == 0, err
    lines = [ln for ln in text.splitlines() if ln.startswith("cpe1 ") and "established" in ln]
    assert len(lines) == 2, text


def test_per_subflow_metrics(tunnel: Lab) -> None:
    tunnel.wait_tunnel(30)
    iperf3(tunnel, "server", "client", address("client", "eth0"), seconds=3, omit=1)
    time.sleep(1.5)  # one agent tick
    m = tunnel.metrics("cpe")
    for link in ("fixed", "cellular"):
        assert m[f'mptcp_tunnel_link_up{{link="{link}"}}'] == 1
        assert m[f'mptcp_tunnel_subflow_established{{link="{link}"}}'] == 1
        received = f'mptcp_tunnel_subflow_bytes_total{{direction="received",link="{link}"}}'
        assert m[received] > 100_000
        assert m[received.replace("received", "sent")] > 0
        assert 0.04 <= m[f'mptcp_tunnel_subflow_rtt_seconds{{link="{link}"}}'] <= 0.4
        assert m[f'mptcp_tunnel_subflow_cwnd{{link="{link}"}}'] > 0
        assert m[f'mptcp_tunnel_subflow_backup{{link="{link}"}}'] == 0


def test_status_errors_are_one_line(tunnel: Lab) -> None:
    argv = [tunnel.agent_bin(), "status", "--socket", "/nonexistent/x.sock"]
    res = tunnel.exec("cpe", argv, check=False)
    assert res.returncode == 1
    assert "no agent control socket at /nonexistent/x.sock" in res.stderr
    assert "Traceback" not in res.stderr
