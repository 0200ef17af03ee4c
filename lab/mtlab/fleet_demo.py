"""``make demo`` on the Ansible-deployed lab fleet.

``molecule/lab-demo.sh up`` starts podman containers (systemd inside) wired and shaped like the
netns lab and deploys them with ``ansible-playbook -i inventory/lab site.yml``. Their network
namespaces are then given ``ip netns`` names, so the very same measurement as the netns demo runs
against them. The names are only bind mounts: removing them leaves the containers alone, and this
module never calls ``Lab.up``/``Lab.down`` (which would stop every process in those namespaces).
"""

from __future__ import annotations

import shutil
import subprocess

from .demo import measure_demo
from .lab import REPO, Lab, LabError

PREFIX = "mtd-"
CONTAINERS = {"client": "mtl-client1", "cpe": "mtl-cpe1", "bgw": "mtl-bgw1", "server": "mtl-server"}
LAB_DEMO = REPO / "molecule" / "lab-demo.sh"


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, check=False, text=True, stderr=subprocess.PIPE, timeout=1800)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no error output"])[-1]
        raise LabError(f"{' '.join(argv[:3])} failed: {last}")


def _attach() -> None:
    for role, container in CONTAINERS.items():
        pid = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.Pid}}", container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        _run(["ip", "netns", "attach", PREFIX + role, pid])


def _detach() -> None:
    for role in CONTAINERS:
        subprocess.run(["ip", "netns", "delete", PREFIX + role], capture_output=True, check=False)


def run_fleet_demo(seconds: int = 10, output: str | None = None) -> int:
    lab = Lab(prefix=PREFIX)  # namespace names only: the fleet's lifecycle is lab-demo.sh's

    def bring_up() -> None:
        _detach()  # names left by a crashed run
        _run(["bash", str(LAB_DEMO), "up"])
        _attach()
        lab.state_dir.mkdir(parents=True, exist_ok=True)  # iperf3/ping logs of the measurement

    def tear_down() -> None:
        _detach()
        subprocess.run(["bash", str(LAB_DEMO), "down"], check=False, capture_output=True)
        shutil.rmtree(lab.state_dir, ignore_errors=True)

    what = (
        "the lab fleet (podman containers deployed by ansible-playbook -i inventory/lab site.yml)"
    )
    return measure_demo(lab, what, bring_up, tear_down, seconds=seconds, output=output)
