"""Why do BBR subflows deliver in bursts on the cellular link alone? One upload on cellular alone
(fixed cut), per subflow congestion control: bins at the receiver, tbf drops in the cellular
router upstream, and the CPE's TCP retransmits (nstat) over the same transfer."""

import statistics
import sys
import time

from mtlab import Lab, shaping
from mtlab.failover import BIN_S, finish_flow, start_flow

COUNTERS = ["nstat", "-az", "TcpRetransSegs", "TcpExtTCPLostRetransmit", "TcpExtTCPSpuriousRTOs"]

lab = Lab()
lab.up(agents=False)
try:
    for cc in sys.argv[1:] or ["bbr", "cubic", "bbr", "cubic"]:
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg["tunnel"]["congestion_control"] = cc
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        lab.cut("fixed")
        time.sleep(2)
        stage = lab.rate_stages("cellular")[0]
        t0 = shaping.tbf_state(*stage)
        n0 = lab.exec("cpe", COUNTERS).stdout
        start_flow(lab, "up", 12, cc="cubic")
        bins = finish_flow(lab, 40)
        t1 = shaping.tbf_state(*stage)
        n1 = lab.exec("cpe", COUNTERS).stdout
        rates = [b * 8 / BIN_S / 1e6 for _, b in bins]
        w = rates[30:110]
        print(
            f"{cc} goodput {statistics.fmean(w):.2f} median {statistics.median(w):.2f}",
            f"empty {sum(1 for r in w if r == 0)} of {len(w)}",
            f"tbf drops {t1['drops'] - t0['drops']} pkts {t1['packets'] - t0['packets']}",
            flush=True,
        )
        print(" bins", [round(r, 1) for r in w[:40]], flush=True)
        print(" nstat before", " ".join(n0.split()), flush=True)
        print(" nstat after", " ".join(n1.split()), flush=True)
        lab.restore("fixed")
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
