"""One cubic flow through `mptcp-tunnel-fq-links`, per agent session: each second the link routers'
tbf (drops, backlog) in the flow's direction and the agents' queue drops + CoDel signals; then
iperf3's per-second goodput and the sender's retransmits, and the sending agent's TCP counters.
Usage: single_download.py [down|up] [SESSIONS]"""

import re
import subprocess
import sys
import threading
import time
from typing import Any

from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

from run_bench.contenders import Agents

# the queue's own drops and CoDel's signals (not their ``_created`` timestamps)
COUNTERS = ("mptcp_tunnel_queue_drops_total", "mptcp_tunnel_aqm_signals_total")


def tc(ns: str, dev: str) -> tuple[int, str]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    dropped = re.search(r"dropped (\d+)", out)
    backlog = re.search(r"backlog (\S+)", out)
    return int(dropped[1]) if dropped else -1, backlog[1] if backlog else "?"


def session(lab: Lab, direction: str, number: int) -> None:
    agents = Agents(lab)
    agents.ensure("mptcp-links")
    server = address("server", "eth0")
    box: dict[str, Any] = {}

    def bulk() -> None:
        box["r"] = iperf3(
            lab,
            "client",
            "server",
            server,
            seconds=16,
            omit=4,
            reverse=direction == "down",
            extra=["-C", "cubic"],
        )

    t = threading.Thread(target=bulk)
    t.start()
    stage = 1 if direction == "down" else 0
    stages = {n: lab.rate_stages(n)[stage] for n in ("fixed", "cellular")}
    for i in range(20):
        m = {role: lab.metrics(role) for role in ("cpe", "bgw")}
        drops = {r: sum(v for k, v in mm.items() if k.startswith(COUNTERS)) for r, mm in m.items()}
        print(i, {n: tc(*st) for n, st in stages.items()}, drops, flush=True)
        time.sleep(1)
    t.join()
    r = box["r"]
    per_second = [round(iv["sum"]["bits_per_second"] / 1e6, 2) for iv in r.raw["intervals"]]
    retrans = r.raw["end"].get("sum_sent", {}).get("retransmits")
    print("session", number, "mbps", r.mbps, "series", per_second, "retrans", retrans, flush=True)
    sender = lab.ns("bgw" if direction == "down" else "cpe")
    counters = ["TcpRetransSegs", "TcpExtTCPLostRetransmit", "MPTcpExtDSSNoMatchTCP"]
    nstat = subprocess.run(
        ["ip", "netns", "exec", sender, "nstat", "-az", *counters],
        capture_output=True,
        text=True,
        check=False,
    )
    print(nstat.stdout, flush=True)
    agents.stop()


def main() -> None:
    direction = sys.argv[1] if len(sys.argv) > 1 else "down"
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    lab = Lab()
    lab.up(agents=False)
    try:
        for number in range(sessions):
            session(lab, direction, number)
    finally:
        lab.down()


main()
