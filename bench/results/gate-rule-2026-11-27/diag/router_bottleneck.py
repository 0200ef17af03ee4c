"""The shaper's upload (13.5 Mbit/s, cubic subflows, current code) with each access link's rate
limit in a router namespace between the CPE and the BGW, where TCP Small Queues cannot see it (the
router's ip_rcv drops the packet's socket reference before its tbf). The CPE's and the BGW's link
ends keep their addresses; the router (proxy ARP, host routes) forwards between them and shapes both
directions with the lab's tbf (rate, 50 ms queue). Delay: the lab's NFQUEUE delayers, unchanged.
Per session as in ss_raw.py.

Usage: python router_bottleneck.py SESSIONS
"""

import json
import os
import re
import subprocess
import sys
import threading
import time

from mtlab import Lab, shaping
from mtlab.topology import address

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


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


try:
    lab.up(agents=False)
    lab.agent_bin()
    srv = address("server", "eth0")
    cpe, bgw = lab.ns("cpe"), lab.ns("bgw")
    routers = []
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
    for session in range(SESSIONS):
        rule = "sum"
        if session == 0:
            print(f"tunnel settings: {TUNNEL}", flush=True)
        lab.start_agents(wait=True, timeout=40)
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg["tunnel"].update(TUNNEL)
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        time.sleep(3)
        idle = lab.exec("client", ["ping", "-n", "-q", "-i", "0.05", "-c", "40", srv], check=False)
        idle_ms = float(re.search(r"= [\d.]+/([\d.]+)/", idle.stdout).group(1))
        for rev in (True, False):
            lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
            time.sleep(1)
            argv = ["iperf3", "-c", srv, "-C", "cubic", "-t", "16", "-O", "4", "-J"]
            argv += ["-R"] if rev else []
            got = {}

            def pinger(got=got):
                time.sleep(6)
                out = lab.exec(
                    "client",
                    ["ping", "-n", "-i", "0.05", "-c", "240", srv],
                    check=False,
                ).stdout
                got["rtt"] = [float(x) for x in re.findall(r"time=([\d.]+)", out)]

            def snap(got=got):
                time.sleep(10)
                got["ss"] = lab.exec(
                    "cpe",
                    ["ss", "-tmiH", "state", "established", "dport", "=", ":7440"],
                    check=False,
                ).stdout

            threads = [threading.Thread(target=pinger)]
            threads += [] if rev else [threading.Thread(target=snap)]
            for th in threads:
                th.start()
            out = lab.exec("client", argv, check=False).stdout
            for th in threads:
                th.join()
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
            r = got["rtt"]
            print(
                f"{rule:5s} session {session} {'down' if rev else 'up  '}: {bps:6.2f} Mbit/s = "
                f"{bps / 14.34:.3f} of 14.34; ping p50 {pct(r, 50):.1f} p99 {pct(r, 99):.1f} ms = "
                f"{pct(r, 99) / idle_ms:.2f} x idle {idle_ms:.1f}"
                + ("" if rev else "\n" + got["ss"]),
                flush=True,
            )
            lab.stop("xs")
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
    for r in routers if "routers" in dir() else []:
        subprocess.run(["ip", "netns", "del", r], check=False)
