"""The shaper (13.5 Mbit/s) with BBR subflows (XC_CC, default bbr), current code; each session:
updown.py. Usage: python xc_bbr.py SESSIONS (the run in xc_bbr.log: 4)."""

import os
import sys

from mtlab import Lab
from updown import session

TUNNEL = {
    "aqm": "fq_codel",
    "congestion_control": os.environ.get("XC_CC", "bbr"),
    "shape_mbit": 13.5,
}
lab = Lab()
try:
    lab.up(agents=False)
    lab.agent_bin()
    for n in range(int(sys.argv[1])):
        session(lab, TUNNEL, f"sum   session {n}")
finally:
    lab.down()
