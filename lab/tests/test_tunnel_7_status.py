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
    rc, out, err = _status(tunnel, "bgw", "--json")
    assert rc == 0, err
    bgw = json.loads(out)
    assert bgw["role"] == "bgw" and bgw["cpes"][0]["id"] == "cpe1" and bgw["cpes"][0]["up"]


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
