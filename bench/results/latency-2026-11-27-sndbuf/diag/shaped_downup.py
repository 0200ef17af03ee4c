import json
import re
import sys
import threading
import time

from mtlab import Lab
from mtlab.topology import address

lab = Lab()


def grab(ns, argv):
    return lab.exec(ns, argv, check=False).stdout


try:
    lab.up(agents=False)
    lab.agent_bin()
    srv = address("server", "eth0")
    for session in range(2):
        lab.start_agents(wait=True, timeout=40)
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg["tunnel"].update(
                aqm="fq_codel", congestion_control="cubic", shape_mbit=float(sys.argv[1])
            )
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        time.sleep(3)
        lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
        time.sleep(1)
        grab("client", ["iperf3", "-c", srv, "-C", "cubic", "-t", "16", "-R"])  # a download first
        lab.stop("xs")
        lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
        time.sleep(1)
        samples = []
        stop = threading.Event()

        def sampler(stop=stop, samples=samples):
            t0 = time.time()
            while not stop.is_set():
                samples.append(
                    (
                        round(time.time() - t0, 1),
                        grab("cpe", ["ss", "-tmiH", "state", "established", "dport", "=", ":7440"]),
                    )
                )
                time.sleep(2)

        th = threading.Thread(target=sampler)
        th.start()
        out = grab("client", ["iperf3", "-c", srv, "-C", "cubic", "-t", "12", "-J"])
        stop.set()
        th.join()
        bps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"=== session {session} up {bps:.2f}", flush=True)
        for t, s in samples:
            for line in s.splitlines():
                d = {}
                for k in (
                    "skmem",
                    "cwnd",
                    "notsent",
                    "unacked",
                    "pacing_rate",
                    "delivery_rate",
                    "rtt",
                    "bytes_acked",
                    "lost",
                    "retrans",
                ):
                    m = re.search(rf"\b{k}[: ]([^ ]+)", line)
                    d[k] = m.group(1) if m else "-"
                if d["bytes_acked"] != "-" and int(d["bytes_acked"]) > 100000:
                    print(f" t={t} " + " ".join(f"{k}={v}" for k, v in d.items()), flush=True)
        lab.stop("xs")
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
