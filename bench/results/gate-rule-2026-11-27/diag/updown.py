"""One agent session of the diagnosis scripts here: the agents restarted with ``tunnel``
settings, an idle ping, then a cubic download and a cubic upload (iperf3 -C cubic -t 16 -O 4),
each with a ping every 50 ms from its 6th second, and one `ss` snapshot of the CPE's subflows 10 s
into the upload. Prints one line per direction (throughput against the lab's 14.34 Mbit/s link
sum, ping p50/p99)."""

import json
import re
import threading
import time

from mtlab import Lab
from mtlab.topology import address

LINK_SUM = 14.34


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summary(ss_text: str) -> str:
    """Window, unsent bytes and RTT of each subflow that carried data."""
    out = []
    for line in ss_text.splitlines():
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


def session(lab: Lab, tunnel: dict, label: str, raw_ss: bool = False) -> None:
    srv = address("server", "eth0")
    lab.start_agents(wait=True, timeout=40)
    for role in ("cpe", "bgw"):
        lab.stop_agent(role)
    for role in ("bgw", "cpe"):
        cfg = lab.agent_config(role)
        cfg["tunnel"].update(tunnel)
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
        got: dict = {}

        def pinger(got: dict = got) -> None:
            time.sleep(6)
            out = lab.exec(
                "client", ["ping", "-n", "-i", "0.05", "-c", "240", srv], check=False
            ).stdout
            got["rtt"] = [float(x) for x in re.findall(r"time=([\d.]+)", out)]

        def snap(got: dict = got) -> None:
            time.sleep(10)
            got["ss"] = lab.exec(
                "cpe", ["ss", "-tmiH", "state", "established", "dport", "=", ":7440"], check=False
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
        line = (
            f"{label} {'down' if rev else 'up  '}: {bps:6.2f} Mbit/s = "
            f"{bps / LINK_SUM:.3f} of {LINK_SUM}; ping p50 {pct(r, 50):.1f} p99 {pct(r, 99):.1f} "
            f"ms = {pct(r, 99) / idle_ms:.2f} x idle {idle_ms:.1f}"
        )
        if not rev:
            line += "\n" + got["ss"] if raw_ss else f" | CPE subflows: {summary(got['ss'])}"
        print(line, flush=True)
        lab.stop("xs")
    for role in ("cpe", "bgw"):
        lab.stop_agent(role)
