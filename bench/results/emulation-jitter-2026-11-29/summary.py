"""Summarise the instrumented delayers' per-second records (cfs/ and fifo/ here).

Each line of a ``q<queue>-<pid>.tsv``: wall time, packets released in that second, then the
receive lateness (kernel stamp to the delayer's callback) p50/p99/max and the release lateness
(deadline to accept) p50/p99/max, in ms. The lower pid of each queue is the CPE-side delayer.
"""

from __future__ import annotations

import sys
from pathlib import Path

BUSY = 10  # packets: a second counts only when the link carried at least this many


def main(dirs: list[str]) -> None:
    for d in dirs:
        seconds = over5 = over10 = 0
        worst = 0.0
        typical: list[float] = []
        for f in sorted(Path(d).glob("q*.tsv")):
            lines = f.read_text().splitlines()
            rows = [tuple(float(x) for x in line.split("\t")) for line in lines]
            busy = [r for r in rows if r[1] >= BUSY]
            seconds += len(busy)
            over5 += sum(1 for r in busy if max(r[4], r[7]) > 5)
            over10 += sum(1 for r in busy if max(r[4], r[7]) > 10)
            worst = max([worst, *(max(r[4], r[7]) for r in busy)])
            typical += [r[6] for r in busy]
        typical.sort()
        print(
            f"{d}: {seconds} busy delayer-seconds; release p99 (median second) "
            f"{typical[len(typical) // 2]:.2f} ms; a packet > 5 ms late in {over5} "
            f"({100 * over5 / seconds:.0f} %), "
            f"> 10 ms in {over10} ({100 * over10 / seconds:.0f} %); "
            f"worst {worst:.1f} ms"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["cfs", "fifo"])
