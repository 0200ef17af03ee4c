"""A/B of the shaper's gate rule, alternating agent sessions: the subflows' unsent data counted
as a sum (`4790c3f`'s code, from a worktree put first on PYTHONPATH) or as the least of them (the
working tree with least_rule.patch applied). Each session: updown.py.

Usage: python ab_rule.py SUM_SRC SESSIONS_PER_RULE  (SUM_SRC: the old tree's files/mptcp_tunnel/src)
"""

import os
import sys

from mtlab import Lab
from updown import session

SUM_SRC, PER_RULE = sys.argv[1], int(sys.argv[2])
TUNNEL = {"aqm": "fq_codel", "congestion_control": "cubic", "shape_mbit": 13.5}
BASE_PATH = os.environ.get("PYTHONPATH", "")
lab = Lab()
try:
    lab.up(agents=False)
    lab.agent_bin()
    for n in range(2 * PER_RULE):
        rule = ("sum", "least")[n % 2]
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in ((SUM_SRC if rule == "sum" else ""), BASE_PATH) if p
        )
        session(lab, TUNNEL, f"{rule:5s} session {n}")
finally:
    lab.down()
