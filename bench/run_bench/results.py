"""Result files (DESIGN.md contract), statistics and live progress on the terminal."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
SCENARIOS = (
    "fig8_aggregation",
    "fig9_cell_rtt",
    "fig9_varying",
    "fig10_fixed_loss",
    "many_flows",
    "datapath_ceiling",
    "latency",
    "fleet_scale",
    "fairness",
    "fuzz",
    "tls_handshakes",
    "lockout",
    "failover",
    "overflow",
    "cap",
)
# Scenarios that build their own namespaces (or need none) instead of using the netns lab.
STANDALONE = ("fleet_scale", "fairness", "fuzz", "tls_handshakes", "lockout")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 3), round(std, 3)


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: 1 = perfectly fair, 1/n = one flow takes all."""
    if not values or sum(values) == 0:
        return None
    return round(sum(values) ** 2 / (len(values) * sum(v * v for v in values)), 4)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


@dataclass
class ScenarioResult:
    scenario: str
    settings: dict[str, Any]
    started: str = field(default_factory=now_iso)
    links: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_point(
        self,
        contender: str,
        runs_mbps: list[float],
        x_name: str | None = None,
        x: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        mean, std = mean_std(runs_mbps)
        point: dict[str, Any] = {}
        if x_name is not None:
            point["x_name"] = x_name
            point["x"] = x
        point |= {
            "contender": contender,
            "runs_mbps": [round(v, 3) for v in runs_mbps],
            "mean_mbps": mean,
            "std_mbps": std,
        }
        point |= extra
        self.points.append(point)
        return point

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "scenario": self.scenario,
            "kernel": platform.release(),
            "started": self.started,
            "finished": now_iso(),
            "machine": machine(),
            "settings": self.settings,
            "links": self.links,
            "points": self.points,
            "validation": self.validation,
            "notes": self.notes,
        }
        path = out_dir / f"{self.scenario}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
        return path


def load(out_dir: Path, scenario: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((out_dir / f"{scenario}.json").read_text())
    except (OSError, ValueError):
        return None
    return data


class Progress:
    """One line per step with elapsed time and an estimate of what is left."""

    def __init__(self, total_steps: int) -> None:
        self.total = max(total_steps, 1)
        self.done = 0
        self.t0 = time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        print(
            f"[{self.done:3d}/{self.total} {_mmss(elapsed)} ~{_mmss(left)} left] {message}",
            flush=True,
        )

    def info(self, message: str) -> None:
        print(f"      {message}", flush=True)


def _mmss(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:d}:{s:02d}"


def warn(message: str) -> None:
    print(f"run_bench: {message}", file=sys.stderr, flush=True)
