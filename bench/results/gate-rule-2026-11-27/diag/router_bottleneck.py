"""The shaper's upload (13.5 Mbit/s, cubic subflows, current code) with each access link's rate
limit in a router namespace between the CPE and the BGW, where TCP Small Queues cannot see it (the
router's ip_rcv drops the packet's socket reference before its tbf). The CPE's and the BGW's link
ends keep their addresses; the router (proxy ARP, host routes) forwards between them and shapes both
directions with the lab's tbf (rate, 50 ms queue). Delay: the lab's NFQUEUE delayers, unchanged.
Each session: updown.py, with the raw `ss` lines.

Usage: python router_bottleneck.py SESSIONS
"""

import json
import os
import subprocess
import sys
import time

from mtlab import Lab, shaping
from updown import session

SESSIONS = int(sys.argv[1])
LINKS = (
    ("r1", "wan_fixed", "10.1.0.1", "fixed0", "10.1.0.2", 10),
    ("r2", "wan_cell", "10.2.0.1", "cell0", "10.2.0.2", 5),
)
# the agents' tunnel settings (JSON in XC_TUNNEL; default: the shaper with cubic subflows)
TUNNEL = json.loads(
    os.environ.get(
        "XC_TUNNEL", '{"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}'
    )
)
lab = Lab()
routers: list[str] = []


try:
    lab.up(agents=False)
    lab.agent_bin()
    cpe, bgw = lab.ns("cpe"), lab.ns("bgw")
    for tag, cpe_if, cpe_ip, bgw_if, bgw_ip, rate in LINKS:
        r = f"{lab.prefix}{tag}"
        routers.append(r)
        subprocess.run(["ip", "netns", "add", r], check=True)
        shaping.run(cpe, ["ip", "link", "del", cpe_if])  # its BGW end goes with it
        shaping.run(
            cpe, ["ip", "link", "add", cpe_if, "type", "veth", "peer", "name", "rc", "netns", r]
        )
        shaping.run(
            bgw, ["ip", "link", "add", bgw_if, "type", "veth", "peer", "name", "rb", "netns", r]
        )
        for ns, dev, ip in ((cpe, cpe_if, cpe_ip), (bgw, bgw_if, bgw_ip)):
            shaping.run(ns, ["ip", "addr", "add", f"{ip}/30", "dev", dev, "nodad"])
            shaping.run(ns, ["ip", "link", "set", dev, "mtu", "1500", "up"])
        shaping.run(r, ["ip", "link", "set", "lo", "up"])
        for dev, addr in (("rc", "10.250.0.1/32"), ("rb", "10.250.0.2/32")):
            shaping.run(r, ["ip", "addr", "add", addr, "dev", dev])
            shaping.run(r, ["ip", "link", "set", dev, "mtu", "1500", "up"])
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            shaping.run(r, ["sysctl", "-qw", key])
        for dev in ("rc", "rb"):
            shaping.run(r, ["sysctl", "-qw", f"net.ipv4.conf.{dev}.proxy_arp=1"])
            shaping.run(r, ["sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0"])
        shaping.run(r, ["ip", "route", "add", f"{cpe_ip}/32", "dev", "rc"])
        shaping.run(r, ["ip", "route", "add", f"{bgw_ip}/32", "dev", "rb"])
        shaping.run(r, ["ip", "route", "add", "default", "via", bgw_ip, "dev", "rb", "onlink"])
        shaping.set_rate(r, "rb", rate, 50.0)  # upload
        shaping.set_rate(r, "rc", rate, 50.0)  # download
    for _tag, cpe_if, cpe_ip, _bgw_if, bgw_ip, _rate in LINKS:
        for direction, (ns, src, dst) in (
            ("up", (cpe, cpe_ip, bgw_ip)),
            ("down", (bgw, bgw_ip, cpe_ip)),
        ):
            ping = lab.exec(
                "cpe" if ns == cpe else "bgw",
                ["ping", "-n", "-q", "-c", "5", "-I", src, dst],
                check=False,
            )
            print(f"{cpe_if} ping {direction}: {ping.stdout.strip().splitlines()[-1]}", flush=True)
        lab.popen("bgw", ["iperf3", "-s", "-1", "-B", bgw_ip], name="ls")
        time.sleep(1)
        out = lab.exec(
            "cpe", ["iperf3", "-c", bgw_ip, "-B", cpe_ip, "-t", "5", "-J"], check=False
        ).stdout
        mbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"{cpe_if} raw upload {mbit:.2f} Mbit/s", flush=True)
        lab.stop("ls")
    for n in range(SESSIONS):
        if n == 0:
            print(f"tunnel settings: {TUNNEL}", flush=True)
        session(lab, TUNNEL, f"sum   session {n}", raw_ss=True)
finally:
    lab.down()
    for r in routers:
        subprocess.run(["ip", "netns", "del", r], check=False)
