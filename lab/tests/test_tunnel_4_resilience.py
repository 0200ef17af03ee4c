"""Failures: fixed link cut mid-transfer, BGW restart, hostile input to the BGW port.

These disturb the tunnel, so they run last; each leaves the tunnel working again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from mtlab import Lab, address

HTTP_PORT = 8081


def _frame_errors(lab: Lab) -> float:
    return sum(
        v for k, v in lab.metrics("bgw").items() if k.startswith("mptcp_tunnel_frame_errors_total")
    )


def test_fixed_cut_mid_transfer_completes_over_cellular(tunnel: Lab, default_links: Lab) -> None:
    lab = tunnel
    lab.wait_tunnel(30)
    docroot = lab.state_dir / "www-cut"
    docroot.mkdir(exist_ok=True)
    blob = os.urandom(12 * 1024 * 1024)
    (docroot / "random.bin").write_bytes(blob)
    out = lab.state_dir / "download-cut.bin"
    out.unlink(missing_ok=True)
    lab.serve(
        "server",
        lab.python("http.server", "--bind", "0.0.0.0", "--directory", str(docroot), str(HTTP_PORT)),
        name="http-cut",
        ready="Serving HTTP",
    )
    try:
        curl = lab.popen(
            "client",
            [
                "curl",
                "-sSf",
                "--max-time",
                "150",
                "-o",
                str(out),
                f"http://{address('server', 'eth0')}:{HTTP_PORT}/random.bin",
            ],
            name="curl-cut",
        )
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size >= 3 * 1024 * 1024):
            assert curl.poll() is None, f"curl ended early: {lab.log('curl-cut')}"
            assert time.monotonic() < deadline, "download did not start"
            time.sleep(0.1)
        cell_before = sum(lab.link_bytes("cellular").values())
        fixed_before = sum(lab.link_bytes("fixed").values())
        at_cut = out.stat().st_size
        lab.cut("fixed")
        t_cut = time.monotonic()
        rc = curl.wait(timeout=160)
        took = time.monotonic() - t_cut
        fixed_after = sum(lab.link_bytes("fixed").values())
        cell_moved = sum(lab.link_bytes("cellular").values()) - cell_before
        assert rc == 0, f"curl exited {rc}: {lab.log('curl-cut')}"
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(blob).digest()
        remaining = len(blob) - at_cut
        print(f"cut at {at_cut} B, rest {remaining} B in {took:.1f} s over cellular")
        assert cell_moved >= remaining, f"cellular moved {cell_moved} B, remaining was {remaining}"
        # a cut link sends, but nothing arrives: the BGW/CPE ingress drop counts it, rx stays
        assert fixed_after >= fixed_before
    finally:
        lab.stop("curl-cut")
        lab.stop("http-cut")
        lab.restore("fixed")
    lab.wait_tunnel(30)


def test_bgw_restart_cpe_reconnects_by_itself(tunnel: Lab) -> None:
    cpe_pid = tunnel.pid("agent-cpe")
    reconnects = tunnel.metrics("cpe").get("mptcp_tunnel_reconnects_total", 0.0)
    tunnel.restart_agent("bgw")
    took = tunnel.wait_tunnel(60)
    print(f"tunnel back {took:.1f} s after the BGW restart")
    assert tunnel.pid("agent-cpe") == cpe_pid and tunnel.agent_alive("cpe"), "CPE was restarted"
    assert tunnel.metrics("cpe").get("mptcp_tunnel_reconnects_total", 0.0) > reconnects
    assert tunnel.ping("client", address("server", "eth0", 6), count=3)


def test_garbage_and_malformed_frame_do_not_kill_the_bgw(tunnel: Lab) -> None:
    tunnel.wait_tunnel(30)
    bgw_pid = tunnel.pid("agent-bgw")
    errors = _frame_errors(tunnel)
    cfg = tunnel.agent_config("cpe")
    res = tunnel.exec(
        "cpe",
        tunnel.python(
            "mtlab.abuse",
            "--host",
            "10.1.0.2",
            "--port",
            str(cfg["tunnel"]["port"]),
            "--config",
            str(tunnel.write_agent_config("cpe-abuse", cfg)),
        ),
        timeout=60,
    )
    closed = json.loads(res.stdout)
    assert all(closed.values()), f"BGW kept a hostile connection open: {closed}"
    assert tunnel.agent_alive("bgw") and tunnel.pid("agent-bgw") == bgw_pid, "BGW died"
    assert _frame_errors(tunnel) > errors, "frame-error counter did not increase"
    took = tunnel.wait_tunnel(60)  # the real CPE's next session works
    print(f"tunnel back {took:.1f} s after the malformed frame")
    assert tunnel.ping("client", address("server", "eth0"), count=3)
