"""A/B of `tunnel.queue_bytes` in a running netns lab: throughput and ping under one bulk flow.

Usage (root, after `make lab-up`):  PYTHONPATH=lab .venv/bin/python bench/queue_ab.py 0 131072 32768
For each queue size both agents are restarted with it, then one 22 s iperf3 flow runs
server -> client (down) and client -> server (up) while the client pings the server 60 times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from mtlab import topology
from mtlab.lab import Lab
from mtlab.measure import ping_rtts


def _under_load(lab: Lab, download: bool) -> tuple[float, float, float]:
    """(Mbit/s, ping p50 ms, ping p99 ms) during one bulk TCP flow through the tunnel."""
    server = topology.address("server", "eth0")
    srv = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("server"), "iperf3", "-s", "-1", "-p", "5202"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        flow = ["iperf3", "-c", server, "-p", "5202", "-t", "22", "-O", "4", "-J"]
        bulk = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("client"), *flow, *(["-R"] if download else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(6)  # past slow start and the omitted seconds
        rtts = sorted(ping_rtts(lab, "client", server, count=60, interval=0.2))
        out, _ = bulk.communicate(timeout=60)
    finally:
        srv.kill()
        srv.wait()
    mbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    return mbps, rtts[len(rtts) // 2], rtts[max(0, int(len(rtts) * 0.99) - 1)]


def main(sizes: list[int]) -> None:
    lab = Lab()
    if not lab.is_up():
        sys.exit("queue_ab: no lab running (make lab-up)")
    for size in sizes:
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg.setdefault("tunnel", {})["queue_bytes"] = size
            lab.stop_agent(role)
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        time.sleep(2)
        for download in (True, False):
            mbps, p50, p99 = _under_load(lab, download)
            way = "down" if download else "up"
            rtt = f"ping p50/p99 {p50:5.1f}/{p99:5.1f} ms"
            print(f"queue_bytes={size:7d} {way:4}: {mbps:5.2f} Mbit/s, {rtt}")
    for role in ("bgw", "cpe"):  # leave the lab as lab-up made it
        lab.stop_agent(role)
        lab.start_agent(role)


if __name__ == "__main__":
    try:
        main([int(a) for a in sys.argv[1:]] or [0, 131072])
    except ValueError:
        sys.exit("queue_ab: queue sizes are byte counts, e.g. 0 131072 32768")
