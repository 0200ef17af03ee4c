"""Helpers for the Molecule testinfra checks: containers via testinfra's fast podman:// backend."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

AGENT_UNIT = "mptcp-tunnel.service"
NETWORK_UNIT = "mptcp-tunnel-network.service"


def host(name: str) -> Any:
    return testinfra.get_host(f"podman://{name}")


def ok(h: Any, cmd: str, timeout: int = 60) -> str:
    """Run cmd (bounded by `timeout`), fail the test with its output when it fails."""
    res = h.run(f"timeout {timeout} {cmd}")
    assert res.rc == 0, f"{cmd!r} on {h.backend.name} exited {res.rc}: {res.stdout}{res.stderr}"
    return str(res.stdout)


def ipj(h: Any, args: str) -> Any:
    return json.loads(ok(h, f"ip -j {args}") or "[]")


def wait_ping(h: Any, dst: str, within_s: float = 30.0) -> float:
    """Ping dst until it answers; returns seconds waited; fails after `within_s`."""
    start = time.monotonic()
    six = "-6 " if ":" in dst else ""
    while True:
        if h.run(f"ping {six}-c 1 -W 1 {dst}").rc == 0:
            return time.monotonic() - start
        if time.monotonic() - start > within_s:
            raise AssertionError(f"{dst} unreachable from {h.backend.name} for {within_s:.0f} s")
        time.sleep(0.5)


def metrics(h: Any, port: int = 9477) -> dict[str, float]:
    """The agent's Prometheus metrics as {'name{labels}': value}."""
    text = ok(
        h,
        'python3 -c "import urllib.request,sys;'
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\"",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(m: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(got.get(k) == v for k, v in labels.items()):
            total += value
    return total


def tx_bytes(h: Any, dev: str) -> int:
    return int(ok(h, f"cat /sys/class/net/{dev}/statistics/tx_bytes").strip())


def start_unit(h: Any, unit: str, cmd: str) -> None:
    """Run cmd as a transient systemd unit (stopped with stop_unit, also after a failed test)."""
    h.run(f"systemctl stop {unit}; systemctl reset-failed {unit}")
    ok(h, f"systemd-run --unit={unit} --quiet {cmd}")


def stop_unit(h: Any, unit: str) -> None:
    h.run(f"systemctl stop {unit}; systemctl reset-failed {unit}")


def iperf3(client: Any, server: Any, dst: str, args: str = "", seconds: int = 5) -> dict[str, Any]:
    """iperf3 client -> server (a transient iperf3 -s unit on `server`); returns iperf3's JSON."""
    start_unit(server, "mt-iperf3", "iperf3 -s -p 5201")
    try:
        for _ in range(20):
            if server.run("ss -Htln 'sport = :5201' | grep -q .").rc == 0:
                break
            time.sleep(0.25)
        out = ok(client, f"iperf3 -c {dst} -p 5201 -t {seconds} -J {args}", timeout=seconds + 30)
        return dict(json.loads(out))
    finally:
        stop_unit(server, "mt-iperf3")


def tcp_upload(
    client: Any, server: Any, dst: str, cpe: Any, floor_mbps: float, seconds: int = 8
) -> tuple[float, dict[str, float]]:
    """One TCP flow client -> server: (Mbit/s, MB the CPE sent on each access link meanwhile).

    A run at or below ``floor_mbps`` is retried once: a busy 2-core CI machine can starve one.
    """
    for attempt in (1, 2):
        sent0 = {dev: tx_bytes(cpe, dev) for dev in ("wan_fixed", "wan_cell")}
        # -O 3: slow start and the queues filling (a burst, then a dip) are not counted
        result = iperf3(client, server, dst, args="-O 3", seconds=seconds)
        mbps = float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
        sent = {dev: (tx_bytes(cpe, dev) - b) / 1e6 for dev, b in sent0.items()}
        print(f"attempt {attempt}: TCP {mbps:.1f} Mbit/s; the CPE sent (MB) {sent}")
        if mbps > floor_mbps:
            break
    return mbps, sent


def peer_address_seen(client: Any, server: Any, dst: str, port: int = 5301) -> str:
    """Connect client -> server; the server answers with the source address it saw."""
    listen = "TCP6-LISTEN" if ":" in dst else "TCP4-LISTEN"
    start_unit(
        server,
        "mt-echo-peer",
        f"socat {listen}:{port},reuseaddr,fork SYSTEM:'echo \\$SOCAT_PEERADDR'",
    )
    try:
        target = f"[{dst}]" if ":" in dst else dst
        for _ in range(20):
            res = client.run(f"timeout 10 socat -T 5 - TCP:{target}:{port} </dev/null")
            if res.rc == 0 and res.stdout.strip():
                return str(res.stdout).strip().strip("[]")
            time.sleep(0.5)
        raise AssertionError(f"no answer from {dst}:{port}: {res.stderr}")
    finally:
        stop_unit(server, "mt-echo-peer")


REPO = Path(__file__).resolve().parents[2]


def run_site(
    inventory: Path, *args: str, timeout: int = 600, expect_rc: int = 0, play: str = "site.yml"
) -> subprocess.CompletedProcess[str]:
    """Run the real site.yml (or another play of the repo) against `inventory`, as operators do."""
    env = dict(
        os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_CONFIG=str(REPO / "ansible.cfg")
    )
    playbook = str(Path(sys.executable).with_name("ansible-playbook"))
    cmd = [playbook, "-i", str(inventory), play, *args]
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == expect_rc, (
        f"{' '.join(cmd)} exited {proc.returncode}, not {expect_rc}:\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    )
    return proc


def handler_changed(play_output: str, handler: str) -> bool:
    """Whether `handler` ran and reported a change in ansible-playbook's output."""
    marker = f"RUNNING HANDLER [{handler}]"
    for chunk in play_output.split(marker)[1:]:
        section = chunk.split("TASK [")[0].split("RUNNING HANDLER [")[0]
        if "changed:" in section:
            return True
    return False


def molecule_inventory() -> Path:
    """This scenario's Molecule inventory (the one converge used)."""
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not eph:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    return Path(eph) / "inventory"


def molecule_inventory_without(tmp: Path, *hosts: str) -> Path:
    """A copy of this scenario's Molecule inventory with `hosts` removed from every group."""
    src = molecule_inventory()
    dst = tmp / "inventory"
    shutil.copytree(src, dst, symlinks=True)
    inv_file = dst / "ansible_inventory.yml"
    inv = yaml.safe_load(inv_file.read_text())
    for group in inv.values():
        for h in hosts:
            (group.get("hosts") or {}).pop(h, None)
    inv_file.write_text(yaml.safe_dump(inv))
    for h in hosts:
        (dst / "host_vars" / h).unlink(missing_ok=True)
    return dst
