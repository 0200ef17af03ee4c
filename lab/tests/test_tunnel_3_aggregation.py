"""One TCP flow uses both links: per-link byte counters, subflow count, aggregation >= 0.9."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from mtlab import Lab, address
from mtlab.measure import iperf3

RATIO = 0.9
# Outer data segments' average payload during the tunnel's upload: with writes cut at segment
# boundaries (segfill.py) 1 370-1 410 bytes in the lab (raw MPTCP: 1 413), without 1 130.
SEGMENT_PAYLOAD = 1300
HTTP_PORT = 8080
SUBFLOWS = 'mptcp_tunnel_subflows{cpe="cpe1"}'
SERVER = address("server", "eth0")


def _measure(lab: Lab) -> dict[str, float]:
    fixed = iperf3(lab, "cpe", "bgw", "10.1.0.2", bind="10.1.0.1", seconds=10, omit=3).mbps
    cell = iperf3(lab, "cpe", "bgw", "10.2.0.2", bind="10.2.0.1", seconds=10, omit=3).mbps
    before = {n: sum(lab.link_bytes(n).values()) for n in ("fixed", "cellular")}
    sent, segs = _subflows_sent(lab)
    tunnel = iperf3(lab, "client", "server", SERVER, seconds=10, omit=3).mbps
    delta = {n: sum(lab.link_bytes(n).values()) - before[n] for n in before}
    sent_after, segs_after = _subflows_sent(lab)
    return {
        "segment_payload": (sent_after - sent) / max(1, segs_after - segs),
        "fixed": fixed,
        "cellular": cell,
        "tunnel": tunnel,
        "fixed_bytes": delta["fixed"],
        "cellular_bytes": delta["cellular"],
    }


def _subflows_sent(lab: Lab) -> tuple[int, int]:
    """Bytes and data segments the CPE's subflows have sent."""
    ss = lab.exec("cpe", ["ss", "-tiH", "state", "established", "dport", "=", ":7440"]).stdout
    counts = {
        k: sum(int(m) for m in re.findall(rf"\b{k}:(\d+)", ss))
        for k in ("bytes_sent", "data_segs_out")
    }
    return counts["bytes_sent"], counts["data_segs_out"]


def test_both_subflows_carry_one_flow_and_aggregate(tunnel: Lab) -> None:
    deadline = time.monotonic() + 15
    while (subflows := tunnel.metrics("bgw").get(SUBFLOWS)) != 2 and time.monotonic() < deadline:
        # an idle session's count is read every 30 s; a busy one's within seconds
        tunnel.exec("client", ["ping", "-q", "-c", "3", "-i", "0.2", SERVER], check=False)
    assert subflows == 2, f"BGW reports {subflows} subflows for cpe1 (MPTCP_INFO)"
    runs = [_measure(tunnel)]
    ratio = runs[-1]["tunnel"] / (runs[-1]["fixed"] + runs[-1]["cellular"])
    if ratio < RATIO:  # one retry: the machine is shared
        runs.append(_measure(tunnel))
    best = max(runs, key=lambda r: r["tunnel"] / (r["fixed"] + r["cellular"]))
    ratio = best["tunnel"] / (best["fixed"] + best["cellular"])
    total = best["fixed_bytes"] + best["cellular_bytes"]
    print(f"aggregation: {best}, ratio {ratio:.3f}")
    assert best["cellular_bytes"] > 0.2 * total, f"cellular carried too little: {best}"
    assert best["fixed_bytes"] > 0.4 * total, f"fixed carried too little: {best}"
    assert ratio >= RATIO, f"tunnel {best['tunnel']:.2f} / sum of links: {ratio:.3f} < {RATIO}"
    assert best["segment_payload"] >= SEGMENT_PAYLOAD, f"outer segments carry little: {best}"
    # the lab's agents run their subflows on cubic (mtlab.lab.SUBFLOW_CC), not this host's BBR
    ss = tunnel.exec("cpe", ["ss", "-tiH", "state", "established", "dport", "=", ":7440"]).stdout
    assert ss.count(" cubic ") >= 2 and " bbr " not in ss, ss


def test_http_download_20mb_sha256(tunnel: Lab) -> None:
    docroot = tunnel.state_dir / "www"
    docroot.mkdir(exist_ok=True)
    blob = os.urandom(21 * 1024 * 1024)
    (docroot / "random.bin").write_bytes(blob)
    out = tunnel.state_dir / "download.bin"
    tunnel.serve(
        "server",
        tunnel.python("http.server", "--bind", "::", "--directory", str(docroot), str(HTTP_PORT)),
        name="http",
        ready="Serving HTTP",
    )
    try:
        for family, host in (
            (4, address("server", "eth0")),
            (6, f"[{address('server', 'eth0', 6)}]"),
        ):
            out.unlink(missing_ok=True)
            tunnel.exec(
                "client",
                [
                    "curl",
                    "-sSf",
                    "--max-time",
                    "90",
                    "-o",
                    str(out),
                    f"http://{host}:{HTTP_PORT}/random.bin",
                ],
                timeout=100,
            )
            got = hashlib.sha256(Path(out).read_bytes()).hexdigest()
            assert got == hashlib.sha256(blob).hexdigest(), f"IPv{family} download corrupted"
    finally:
        tunnel.stop("http")
