"""Bad download sessions: the BGW side -- subflows' skmem, the msk, the agent."""

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
    for session in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        lab.start_agents(wait=True, timeout=40)
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg["tunnel"]["aqm"] = "fq_codel"
            cfg["tunnel"]["congestion_control"] = "cubic"
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        time.sleep(2)
        lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
        time.sleep(1)
        argv = ["iperf3", "-c", srv, "-C", "cubic", "-t", "12", "-O", "4", "-J", "-R"]
        if session % 2:
            lab.exec("client", ["iperf3", "-c", srv, "-C", "cubic", "-t", "3"], check=False)
            lab.stop("xs")
            lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
            time.sleep(1)
        samples = []
        stop = threading.Event()

        def sampler(stop=stop, samples=samples):
            t0 = time.time()
            while not stop.is_set():
                sf = grab("bgw", ["ss", "-tmiH", "state", "established", "sport", "=", ":7440"])
                msk = grab("bgw", ["ss", "-MmiH"])
                samples.append((round(time.time() - t0, 2), sf, msk))
                time.sleep(0.5)

        th = threading.Thread(target=sampler)
        th.start()
        out = lab.exec("client", argv, check=False).stdout
        stop.set()
        th.join()
        bps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"=== session {session} down: {bps:.2f} Mbit/s = {bps / 14.34:.3f}", flush=True)
        for t, sf, msk in samples[4:24:3]:
            parts = []
            lines = sf.splitlines()
            for i in range(0, len(lines)):
                line = lines[i]
                if "skmem" not in line:
                    continue
                d = {}
                for k in (
                    "skmem",
                    "cwnd",
                    "notsent",
                    "unacked",
                    "pacing_rate",
                    "delivery_rate",
                    "snd_wnd",
                    "rtt",
                ):
                    m = re.search(rf"\b{k}[: ]([^ ]+)", line)
                    d[k] = m.group(1) if m else "-"
                parts.append(" ".join(f"{k}={v}" for k, v in d.items()))
            print(f" t={t}")
            for p in parts:
                print("   sf " + p)
            print("   msk " + " ".join(msk.split())[:700], flush=True)
        lab.stop("xs")
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
