"""The shaper's upload (13.5 Mbit/s, cubic subflows, current code) with the upstream bottleneck
moved to where TCP Small Queues on the CPE cannot see it: the CPE's egress tbf on each access link
is removed and the same tbf (rate, 50 ms queue) runs on an ifb device fed by the BGW's ingress of
that link (tc u32 + mirred; this kernel has no matchall). Downloads keep the lab's usual shaping.
Per session as in ab_rule.py.

Usage: python remote_bottleneck.py SESSIONS
"""

import json
import re
import sys
import threading
import time

from mtlab import Lab, shaping
from mtlab.topology import address

SESSIONS = int(sys.argv[1])
TUNNEL = {"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}
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
    for link, cpe_if, bgw_if, rate in (
        ("f", "wan_fixed", "fixed0", 10),
        ("c", "wan_cell", "cell0", 5),
    ):
        shaping.run(lab.ns("cpe"), ["tc", "qdisc", "del", "dev", cpe_if, "root"])
        ns, ifb = lab.ns("bgw"), f"ifb_{link}"
        shaping.run(ns, ["ip", "link", "add", ifb, "type", "ifb"])
        shaping.run(ns, ["ip", "link", "set", ifb, "up"])
        shaping.run(ns, ["tc", "qdisc", "add", "dev", bgw_if, "handle", "ffff:", "ingress"])
        shaping.run(
            ns,
            ["tc", "filter", "add", "dev", bgw_if, "parent", "ffff:", "protocol", "all"]
            + ["u32", "match", "u32", "0", "0"]
            + ["action", "mirred", "egress", "redirect", "dev", ifb],
        )
        shaping.set_rate(ns, ifb, rate, 50.0)
    assert lab.delay_mode == "nfqueue", lab.delay_mode  # netem would have gone with the CPE's tbf
    print(lab.exec("bgw", ["tc", "qdisc", "show"], check=False).stdout, flush=True)
    for session in range(SESSIONS):
        rule = "remote"
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
