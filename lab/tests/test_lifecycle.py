"""`up` after a crash needs no manual cleanup; `down` leaves nothing behind (own prefix)."""

from __future__ import annotations

import os
import shutil
import signal
import time

from mtlab import Lab, procs, topology


def test_up_after_crash_and_clean_down(lab: Lab) -> None:
    del lab  # only for the environment checks; this test runs a second lab beside it
    other = Lab(prefix="mtz-")
    other.up(agents=False)
    try:
        # simulate a crash: a delayer killed hard, the state directory lost, a stray process
        pid = other.pid("delay-cpe-wan_fixed")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        other.popen("server", ["sleep", "600"], name="stray")
        stray = other.pid("stray")
        assert stray is not None
        # `ip netns exec` enters the namespace after the fork: until then the stray is not in it
        # (a crashed lab's processes are; CI once swept the namespace before this one got there).
        inode = topology.netns_inode(other.ns("server"))
        deadline = time.monotonic() + 5
        while stray not in procs.pids_in_netns(inode or -1) and time.monotonic() < deadline:
            time.sleep(0.02)
        shutil.rmtree(other.state_dir)
        again = Lab(prefix="mtz-")
        again.up(agents=False)  # must tear the leftovers down by itself
        assert not procs.alive(stray), "stray process survived up()"
        assert again.ping("cpe", "10.1.0.2", count=1)
        assert all(topology.exists(n) for n in again.names.values())
    finally:
        Lab(prefix="mtz-").down()
    assert Lab(prefix="mtz-").leftovers() == []
