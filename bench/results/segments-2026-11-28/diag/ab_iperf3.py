"""A/B of cutting writes at segment boundaries: plain iperf3, one cubic flow each way, 16 s after
4 s, default agent and fq-links, alternating agent sessions with and without it (MT_SEGFILL_OFF=1:
a switch added to segfill.py for these runs only, not in the committed code)."""

import os
import sys

from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

from run_bench.contenders import Agents

lab = Lab()
lab.up(agents=False)
server = address("server", "eth0")
fixed = iperf3(lab, "cpe", "bgw", "10.1.0.2", bind="10.1.0.1", seconds=12, omit=3).mbps
cell = iperf3(lab, "cpe", "bgw", "10.2.0.2", bind="10.2.0.1", seconds=12, omit=3).mbps
ref = fixed + cell
print(f"fixed-only {fixed:.2f} cellular-only {cell:.2f} sum {ref:.2f}", flush=True)
agents = Agents(lab)
modes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["mptcp", "mptcp-links"]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
try:
    for rep in range(reps):
        for mode in modes:
            for variant in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                agents.stop()
                if variant == "off":
                    os.environ["MT_SEGFILL_OFF"] = "1"
                else:
                    os.environ.pop("MT_SEGFILL_OFF", None)
                agents.ensure(mode)
                for rev in (True, False):
                    r = iperf3(lab, "client", "server", server, seconds=16, omit=4, reverse=rev,
                               extra=["-C", "cubic"])
                    print(f"rep {rep + 1} {mode:12s} fill {variant:3s} {'down' if rev else 'up  '}:"
                          f" {r.mbps:.2f} Mbit/s = {r.mbps / ref:.3f} of the link sum", flush=True)
finally:
    agents.stop()
    lab.down()
