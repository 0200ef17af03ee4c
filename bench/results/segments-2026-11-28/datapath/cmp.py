"""Rates and CPU seconds per GB of every ``datapath_ceiling.json``-style file in a directory.

python cmp.py full-ab        # or backlog-ab
"""

import json
import sys
from pathlib import Path


def main(directory: str) -> None:
    for path in sorted(Path(directory).glob("*.json")):
        for point in json.loads(path.read_text())["points"]:
            runs = [round(r) for r in point["runs_mbps"]]
            cpu = [(c.get("cpe"), c.get("bgw")) for c in point.get("cpu_s_per_gb", [])]
            extra = f" cpu s/GB (cpe, bgw) {cpu}" if cpu else ""
            print(f"{path.stem:8} {point['contender']:26} Mbit/s {runs}{extra}")


if __name__ == "__main__":
    main(sys.argv[1])
