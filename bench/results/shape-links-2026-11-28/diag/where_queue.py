"""Where the queue sits with the link-aware shaper on cellular alone (fixed link blackholed): bulk
flows client -> server (or back), and once a second the cellular link's tbf backlog in each
direction, the agents' flow-queue drops and a ping's RTT.
Usage: where_queue.py FLOWS up|down CC [SHARE] [both] ("both": both links carry traffic, no
blackhole, and the fixed link's backlog is shown too)."""

import json
import re
import subprocess
import sys
import threading
import time

from mtlab import Lab
from mtlab.measure import iperf3, ping_rtts
from mtlab.topology import address

from run_bench.contenders import Agents


def qdisc(ns: str, ifname: str) -> tuple[str, int, int]:
    """The tbf's backlog, and the bytes and packets it has sent."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sent = re.search(r"tbf.*?Sent (\d+) bytes (\d+) pkt", out, re.S)
    assert sent is not None, out
    return " ".join(re.findall(r"backlog (\S+ \S+)", out)), int(sent[1]), int(sent[2])


def shaper(lab: Lab) -> object:
    """The CPE's shaper as ``mptcp-tunnel status --json`` shows it."""
    sock = str(lab.state_dir / "cpe.sock")
    res = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("cpe"),
            lab.agent_bin(),
            "status",
            "--json",
            "--socket",
            sock,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(res.stdout).get("shaper") if res.returncode == 0 else res.stderr.strip()


def tunnel_tx(lab: Lab) -> float:
    """The CPE's tunnel bytes sent so far (inner packets, its metrics)."""
    return sum(
        v
        for k, v in lab.metrics("cpe").items()
        if k.startswith("mptcp_tunnel_bytes_total") and 'direction="tx"' in k
    )


def backlog(ns: str, ifname: str) -> str:
    return qdisc(ns, ifname)[0]


def main() -> None:
    flows, direction, cc = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    share = float(sys.argv[4]) if len(sys.argv) > 4 else 0.97
    both = sys.argv[5:6] == ["both"]
    lab = Lab()
    lab.up(agents=False)
    agents = Agents(lab, line_share=share)
    agents.ensure("mptcp-links")
    if not both:
        lab.cut("fixed")
        time.sleep(3)
    server = address("server", "eth0")
    box: dict[str, float] = {}

    def bulk() -> None:
        r = iperf3(
            lab,
            "client",
            "server",
            server,
            seconds=14,
            omit=2,
            reverse=direction == "down",
            extra=["-C", cc, "-P", str(flows)],
        )
        box["mbps"] = r.mbps

    t = threading.Thread(target=bulk)
    t.start()
    time.sleep(4)
    up_stage, down_stage = lab.rate_stages("cellular")
    fixed_up, fixed_down = lab.rate_stages("fixed")
    try:
        _, b0, p0 = qdisc(*up_stage)
        c0 = sum(
            v
            for k, v in lab.metrics("cpe").items()
            if k.startswith("mptcp_tunnel_bytes_total") and 'direction="tx"' in k
        )
        t0 = time.monotonic()
        for _ in range(8):
            rtt = ping_rtts(lab, "client", server, count=5, interval=0.05)
            m = {role: lab.metrics(role) for role in ("cpe", "bgw")}
            drops = {r: sum(v for k, v in mm.items() if "queue_drops" in k) for r, mm in m.items()}
            print(
                f"ping {rtt} | tbf up {backlog(*up_stage)} | tbf down {backlog(*down_stage)}"
                + (f" | fixed up {backlog(*fixed_up)} down {backlog(*fixed_down)}" if both else "")
                + f" | agent drops {drops} | shaper {shaper(lab)}",
                flush=True,
            )
            time.sleep(0.7)
        _, b1, p1 = qdisc(*up_stage)
        c1 = sum(
            v
            for k, v in lab.metrics("cpe").items()
            if k.startswith("mptcp_tunnel_bytes_total") and 'direction="tx"' in k
        )
        dt = time.monotonic() - t0
        print(
            f"cellular tbf up: {8 * (b1 - b0) / dt / 1e6:.3f} Mbit/s in {(p1 - p0) / dt:.0f} pkt/s"
            f" ({(b1 - b0) / max(1, p1 - p0):.0f} B/pkt);"
            f" CPE tunnel tx {8 * (c1 - c0) / dt / 1e6:.3f} Mbit/s",
            flush=True,
        )
        ss = subprocess.run(
            ["ip", "netns", "exec", lab.ns("cpe"), "ss", "-tinM"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        print(
            "\n".join(line for line in ss.splitlines() if "mss" in line or "ESTAB" in line)[:3000],
            flush=True,
        )
    finally:
        t.join()
        print(
            f"bulk {box.get('mbps')} Mbit/s ({flows} {direction} {cc}, share {share})", flush=True
        )
        lab.restore("fixed")
        agents.stop()


main()
