"""A/B of the shaper's gate rule, alternating agent sessions: the subflows' unsent data counted
as a sum (`4790c3f`'s code, from a worktree put first on PYTHONPATH) or as the least of them (the
working tree with least_rule.patch applied). Per session: a download, then an upload (iperf3 -C
cubic -t 16 -O 4), a ping every 50 ms from the 6th second, and one `ss` snapshot on the CPE 10 s
into the upload.

Usage: python ab_rule.py SUM_SRC SESSIONS_PER_RULE  (SUM_SRC: the old tree's files/mptcp_tunnel/src)
"""

import json
import os
import re
import sys
import threading
import time

from mtlab import Lab
from mtlab.topology import address

SUM_SRC, PER_RULE = sys.argv[1], int(sys.argv[2])
TUNNEL = {"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}
BASE_PATH = os.environ.get("PYTHONPATH", "")
lab = Lab()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def subflows(text):
    out = []
    for line in text.splitlines():
        acked = re.search(r"bytes_acked:(\d+)", line)
        if not acked or int(acked.group(1)) < 100_000:
            continue
        cwnd = re.search(r"\bcwnd:(\d+)", line)
        notsent = re.search(r"notsent:(\d+)", line)
        rtt = re.search(r"\brtt:([\d.]+)", line)
        out.append(
            f"cwnd {cwnd.group(1) if cwnd else '-'} notsent {notsent.group(1) if notsent else 0} "
            f"rtt {rtt.group(1) if rtt else '-'}"
        )
    return "; ".join(out)


try:
    lab.up(agents=False)
    lab.agent_bin()
    srv = address("server", "eth0")
    for session in range(2 * PER_RULE):
        rule = ("sum", "least")[session % 2]
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in ((SUM_SRC if rule == "sum" else ""), BASE_PATH) if p
        )
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
                + ("" if rev else f" | CPE subflows: {subflows(got['ss'])}"),
                flush=True,
            )
            lab.stop("xs")
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
