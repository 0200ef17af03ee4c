"""A/B of the tunnel's queue settings in a running netns lab: throughput and ping under bulk flows.

Usage (root, after `make lab-up`):
    PYTHONPATH=lab:bench .venv/bin/python -m run_bench.queue_ab [--cc bbr] [--flows 1,8] \
        queue_bytes=0 queue_bytes=131072 aqm=fq_codel,queue_bytes=32768
Each argument is one variant: ``tunnel.`` settings, comma-separated (a bare number is a
``queue_bytes``). For each, both agents are restarted with it, then the latency scenario's
measurement (`ping_during_bulk`) runs with the flows server -> client (down), then client -> server
(up).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mtlab.lab import Lab

from run_bench.results import percentile
from run_bench.scenarios import Settings, ping_during_bulk

PINGS, INTERVAL_S = 60, 0.2


def variant(spec: str) -> dict[str, Any]:
    """``aqm=fq_codel,queue_bytes=32768`` -> {"aqm": "fq_codel", "queue_bytes": 32768}."""
    if spec.isdigit():
        return {"queue_bytes": int(spec)}
    out: dict[str, Any] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value")
        out[key] = int(value) if value.isdigit() else value
    return out


def main(variants: list[dict[str, Any]], cc: str, flows: list[int]) -> None:
    lab = Lab()
    if not lab.is_up():
        sys.exit("queue_ab: no lab running (make lab-up)")
    for tunnel in variants:
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg.setdefault("tunnel", {}).update(tunnel)
            lab.stop_agent(role)
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        name = ",".join(f"{k}={v}" for k, v in tunnel.items())
        for n in flows:
            for download in (True, False):
                way = "down" if download else "up"
                rtts, box = ping_during_bulk(lab, way, PINGS, INTERVAL_S, cc, download, n)
                rtt = f"ping p50/p99 {percentile(rtts, 50)}/{percentile(rtts, 99)} ms"
                print(f"{name} {n} flows {way:4}: {box.get('mbps')} Mbit/s, {rtt}", flush=True)
    for role in ("bgw", "cpe"):  # leave the lab as lab-up made it
        lab.stop_agent(role)
        lab.start_agent(role)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="queue_ab", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", type=variant, default=[{"queue_bytes": 0}, {}])
    parser.add_argument("--cc", default=Settings().inner_cc, help="end hosts' TCP (%(default)s)")
    parser.add_argument("--flows", default="1", help="bulk flow counts, comma-separated")
    args = parser.parse_args()
    main(args.variants, args.cc, [int(n) for n in args.flows.split(",")])
