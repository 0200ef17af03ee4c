"""The shaper's upload (13.5 Mbit/s, cubic subflows, current code) with the upstream bottleneck
moved to where TCP Small Queues on the CPE cannot see it: the CPE's egress tbf on each access link
is removed and the same tbf (rate, 50 ms queue) runs on an ifb device fed by the BGW's ingress of
that link (tc u32 + mirred; this kernel has no matchall). Downloads keep the lab's usual shaping.
Each session: updown.py.

Usage: python remote_bottleneck.py SESSIONS
"""

import sys

from mtlab import Lab, shaping
from updown import session

SESSIONS = int(sys.argv[1])
TUNNEL = {"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}
lab = Lab()


try:
    lab.up(agents=False)
    lab.agent_bin()
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
    for n in range(SESSIONS):
        session(lab, TUNNEL, f"remote session {n}")
finally:
    lab.down()
