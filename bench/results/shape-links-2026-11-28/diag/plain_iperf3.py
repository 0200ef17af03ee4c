"""A plain iperf3 check of the latency benchmark's bulk figures for mptcp-tunnel-fq-links: the same
agents, one cubic flow each way, 16 s with 4 s omitted and no pings, on both links and on cellular
alone (fixed link blackholed), against fixed-only and cellular-only goodput measured alike."""

import time

from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

from run_bench.contenders import Agents


def main() -> None:
    lab = Lab()
    lab.up(agents=False)
    server = address("server", "eth0")
    fixed = iperf3(lab, "cpe", "bgw", "10.1.0.2", bind="10.1.0.1", seconds=16, omit=4).mbps
    cell = iperf3(lab, "cpe", "bgw", "10.2.0.2", bind="10.2.0.1", seconds=16, omit=4).mbps
    print(f"fixed-only {fixed:.2f}  cellular-only {cell:.2f}  sum {fixed + cell:.2f}", flush=True)
    agents = Agents(lab)
    agents.ensure("mptcp-links")
    try:
        for cut in (False, True):
            if cut:
                lab.cut("fixed")
                time.sleep(3)
            ref = cell if cut else fixed + cell
            for rev in (True, False):
                r = iperf3(
                    lab,
                    "client",
                    "server",
                    server,
                    seconds=16,
                    omit=4,
                    reverse=rev,
                    extra=["-C", "cubic"],
                )
                print(
                    f"{'cellular alone' if cut else 'both links':14s} {'down' if rev else 'up  '}"
                    f" 1 flow cubic: {r.mbps:.2f} Mbit/s = {r.mbps / ref:.3f} of {ref:.2f}",
                    flush=True,
                )
    finally:
        lab.restore("fixed")
        agents.stop()


main()
