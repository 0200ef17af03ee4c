"""How late a process wakes on this machine with nothing else running: 30 s of 2 ms sleeps.

    python3 oversleep.py [fifo]

With ``fifo`` the process runs SCHED_FIFO (root), so no ordinary task can delay it: what is left
is the platform (the hypervisor not running the vCPU: the ``steal`` column of /proc/stat).
"""

from __future__ import annotations

import os
import sys
import time


def steal_jiffies() -> int:
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8])


def main() -> None:
    fifo = sys.argv[1:] == ["fifo"]
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    before = steal_jiffies()
    late: list[float] = []
    end = time.monotonic() + 30
    while time.monotonic() < end:
        t = time.monotonic()
        time.sleep(0.002)
        late.append(time.monotonic() - t - 0.002)
    stolen = steal_jiffies() - before
    late.sort()
    n = len(late)
    p50, p99, p999, worst = (late[int(q * (n - 1))] * 1000 for q in (0.5, 0.99, 0.999, 1.0))
    print(
        f"{'fifo' if fifo else 'cfs'}: {n} sleeps, late p50 {p50:.2f} p99 {p99:.2f} "
        f"p99.9 {p999:.2f} max {worst:.2f} ms, {sum(1 for x in late if x > 0.005)} over 5 ms, "
        f"steal {stolen} jiffies"
    )


if __name__ == "__main__":
    main()
