"""A/B of `tunnel.queue_bytes` in a running netns lab: throughput and ping under one bulk flow.

Usage (root, after `make lab-up`):
    PYTHONPATH=lab:bench .venv/bin/python -m run_bench.queue_ab [--cc bbr] 0 131072 32768
For each queue size both agents are restarted with it, then the latency scenario's measurement
(`ping_during_bulk`) runs once with the flow server -> client (down) and once client -> server (up).
"""

from __future__ import annotations

import argparse
import sys

from mtlab.lab import Lab

from run_bench.results import percentile
from run_bench.scenarios import Settings, ping_during_bulk

PINGS, INTERVAL_S = 60, 0.2


def main(sizes: list[int], cc: str) -> None:
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
        for download in (True, False):
            way = "down" if download else "up"
            rtts, box = ping_during_bulk(lab, way, PINGS, INTERVAL_S, cc, download)
            rtt = f"ping p50/p99 {percentile(rtts, 50)}/{percentile(rtts, 99)} ms"
            print(f"queue_bytes={size:7d} {way:4}: {box.get('mbps')} Mbit/s, {rtt}", flush=True)
    for role in ("bgw", "cpe"):  # leave the lab as lab-up made it
        lab.stop_agent(role)
        lab.start_agent(role)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="queue_ab", description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[0, 131072], help="bytes")
    parser.add_argument("--cc", default=Settings().inner_cc, help="end hosts' TCP (%(default)s)")
    args = parser.parse_args()
    main(args.sizes, args.cc)
