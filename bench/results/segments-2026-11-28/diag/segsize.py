"""Payload per outer data segment, each way, while one cubic flow crosses the tunnel (or raw MPTCP).

    cd bench/results/segments-2026-11-28/diag
    PYTHONPATH=/work/main/lab:/work/main/bench MT_LAB_PREFIX=mb- flock /tmp/mt-lab.lock \
        python segsize.py MODE      # MODE: mptcp (default agent), mptcp-links (fq-links), raw

Reads the CPE namespace's TCP counters (``ss -tni``: bytes and data segments of every established
socket, i.e. the subflows) 6 s into a 14 s iperf3 run and 6 s later, and the CPE agent's metrics
(bytes per sendmsg, bytes per TUN read). ``raw``: mptcpize'd iperf3 from the CPE to the BGW over the
same links (the default agents only provide the MPTCP endpoints and limits).
"""

import functools
import re
import sys
import threading
import time

from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

from run_bench.contenders import Agents

KEYS = ("bytes_sent", "bytes_received", "data_segs_out", "data_segs_in", "segs_out", "segs_in")


def counters(lab: Lab) -> dict[str, int]:
    out = lab.exec("cpe", ["ss", "-tniH", "state", "established"]).stdout
    return {k: sum(int(m.group(1)) for m in re.finditer(rf"\b{k}:(\d+)", out)) for k in KEYS}


def measure(lab: Lab, label: str, run) -> None:
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", run()))
    t.start()
    time.sleep(6)
    a, ma = counters(lab), lab.metrics("cpe")
    time.sleep(6)
    b, mb = counters(lab), lab.metrics("cpe")
    t.join()
    d = {k: b[k] - a[k] for k in KEYS}
    out = d["bytes_sent"] / max(1, d["data_segs_out"])
    into = d["bytes_received"] / max(1, d["data_segs_in"])
    dm = {k: mb[k] - ma.get(k, 0) for k in mb if "batches" in k or "bytes_total" in k}
    batches = sum(v for k, v in dm.items() if "batches" in k)
    tx = sum(v for k, v in dm.items() if "mptcp_tunnel_bytes_total" in k and 'direction="tx"' in k)
    print(
        f"{label}: {res['r'].mbps:.2f} Mbit/s;"
        f" payload per data segment out {out:.0f}, in {into:.0f};"
        f" CPE bytes per write {tx / batches if batches else 0:.0f}; {d}",
        flush=True,
    )


def main(mode: str) -> None:
    lab = Lab()
    lab.up(agents=False)
    agents = Agents(lab)
    agents.ensure("mptcp" if mode == "raw" else mode)
    try:
        if mode == "raw":
            measure(lab, "raw up", lambda: iperf3(
                lab, "cpe", "bgw", "10.1.0.2", bind="10.1.0.1", seconds=14, omit=2,
                wrap=["mptcpize", "run"], extra=["-C", "cubic"]))
            return
        server = address("server", "eth0")
        for rev in (False, True):
            measure(lab, f"{mode} {'down' if rev else 'up'}", functools.partial(
                iperf3, lab, "client", "server", server, seconds=14, omit=2, reverse=rev,
                extra=["-C", "cubic"]))
    finally:
        agents.stop()
        lab.down()


main(sys.argv[1] if len(sys.argv) > 1 else "mptcp-links")
