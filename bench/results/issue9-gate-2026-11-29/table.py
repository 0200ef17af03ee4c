"""The A/B's table: ping p99 / idle p50 and the bulk Mbit/s per condition, one column per run.

python table.py base-1 base-2 base-3 g6k-1 g6k-2 g6k-3 (run from this directory)
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(runs: list[str]) -> None:
    data = {}
    for run in runs:
        points = json.loads((HERE / run / "latency.json").read_text())["points"]
        data[run] = {p["condition"]: p for p in points}
    print("| condition | " + " | ".join(runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for cond in data[runs[0]]:
        cells = []
        for run in runs:
            p, idle = data[run][cond], data[run]["idle"]["p50_ms"]
            if cond == "idle":
                cells.append(f"p50 {p['p50_ms']:.1f} / p99 {p['p99_ms']:.1f}")
            else:
                cells.append(f"{p['p99_ms'] / idle:.2f} × / {p['mean_mbps']:.2f}")
        print(f"| {cond} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
