"""Plain iperf3 (16 s after 4 s omitted, cubic) + a ping every 50 ms beside it, per setting."""

import json
import re
import threading
import time

from mtlab import Lab
from mtlab.topology import address

SETTINGS = {
    "fq_codel+cubic": {"aqm": "fq_codel", "congestion_control": "cubic"},
    "fq_codel+cubic, shape 13.5": {
        "aqm": "fq_codel",
        "congestion_control": "cubic",
        "shape_mbit": 13.5,
    },
}
lab = Lab()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


try:
    lab.up(agents=False)
    lab.agent_bin()
    srv = address("server", "eth0")
    for name, tun in SETTINGS.items():
        for session in range(3):
            lab.start_agents(wait=True, timeout=40)
            for role in ("cpe", "bgw"):
                lab.stop_agent(role)
            for role in ("bgw", "cpe"):
                cfg = lab.agent_config(role)
                cfg["tunnel"].update(tun)
                lab.start_agent(role, cfg)
            lab.wait_tunnel(30)
            time.sleep(3)
            idle = lab.exec(
                "client", ["ping", "-n", "-q", "-i", "0.05", "-c", "40", srv], check=False
            ).stdout
            idle_ms = float(re.search(r"= [\d.]+/([\d.]+)/", idle).group(1))
            for rev in (True, False):
                lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
                time.sleep(1)
                argv = ["iperf3", "-c", srv, "-C", "cubic", "-t", "16", "-O", "4", "-J"] + (
                    ["-R"] if rev else []
                )
                pings = {}

                def pinger(pings=pings):
                    time.sleep(6)
                    out = lab.exec(
                        "client", ["ping", "-n", "-i", "0.05", "-c", "240", srv], check=False
                    ).stdout
                    pings["rtt"] = [float(x) for x in re.findall(r"time=([\d.]+)", out)]

                th = threading.Thread(target=pinger)
                th.start()
                out = lab.exec("client", argv, check=False).stdout
                th.join()
                bps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
                r = pings["rtt"]
                print(
                    f"{name:28s} session {session} {'down' if rev else 'up  '}: "
                    f"{bps:6.2f} Mbit/s = {bps / 14.34:.3f} of 14.34; "
                    f"ping n={len(r)} p50 {pct(r, 50):.1f} p99 {pct(r, 99):.1f} ms "
                    f"= {pct(r, 99) / idle_ms:.2f} x idle {idle_ms:.1f}",
                    flush=True,
                )
                lab.stop("xs")
            for role in ("cpe", "bgw"):
                lab.stop_agent(role)
finally:
    lab.down()
