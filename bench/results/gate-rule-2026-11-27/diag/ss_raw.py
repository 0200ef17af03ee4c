"""The shaper's upload (13.5 Mbit/s, cubic subflows, current code; each session: updown.py),
printing the CPE's raw `ss -tmi` lines for the subflows 10 s into each upload: what limits each
subflow (busy, rwnd_limited, sndbuf_limited, pacing rate, delivery rate, unacked, notsent).

Usage: python ss_raw.py SESSIONS
"""

import sys

from mtlab import Lab
from updown import session

TUNNEL = {"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}
lab = Lab()
try:
    lab.up(agents=False)
    lab.agent_bin()
    for n in range(int(sys.argv[1])):
        session(lab, TUNNEL, f"sum   session {n}", raw_ss=True)
finally:
    lab.down()
