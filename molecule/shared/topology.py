#!/usr/bin/env python3
"""Wire podman containers together like the netns lab: veth pairs created directly inside the
containers' network namespaces (nothing is left on the host, and removing a container removes its
links), addresses, routes, and tbf rate limits on both ends of the shaped links.

    topology.py up FILE      # idempotent
    topology.py check FILE   # exit 1 if a container of FILE is not running

FILE (YAML):
    links:
      - a: {host: mtm-cpe1, dev: wan_fixed, addrs: [10.1.0.1/30]}
        b: {host: mtm-bgw1, dev: fixed0, addrs: [10.1.0.2/30]}
        rate_mbit: 10            # optional: tbf on both ends
    routes:
      mtm-client: [{dst: default, via: 192.168.10.1}, {dst: default, via: "fd00:10::1"}]
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


class TopologyError(Exception):
    pass


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def container_pid(name: str) -> int:
    proc = _run(["podman", "inspect", "-f", "{{.State.Pid}}", name], check=False)
    pid = proc.stdout.strip()
    if proc.returncode != 0 or not pid.isdigit() or pid == "0":
        raise TopologyError(f"container {name} is not running")
    return int(pid)


def _ns(pid: int, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["nsenter", "-t", str(pid), "-n", *cmd], check=check)


def _has_link(pid: int, dev: str) -> bool:
    return _ns(pid, "ip", "link", "show", "dev", dev, check=False).returncode == 0


def _add_addr(pid: int, dev: str, addr: str) -> None:
    iface = ipaddress.ip_interface(addr)
    fam = "-6" if iface.version == 6 else "-4"
    extra = ["nodad"] if iface.version == 6 else []
    proc = _ns(pid, "ip", fam, "addr", "add", addr, "dev", dev, *extra, check=False)
    if proc.returncode != 0 and "File exists" not in proc.stderr:
        raise TopologyError(f"{dev}: adding {addr}: {proc.stderr.strip()}")


def _end(end: dict[str, Any]) -> tuple[str, str, list[str]]:
    host, dev = str(end["host"]), str(end["dev"])
    if len(dev) > 15:
        raise TopologyError(f"interface name {dev} is longer than 15 characters")
    return host, dev, [str(a) for a in end.get("addrs", [])]


def up(topo: dict[str, Any]) -> None:
    pids: dict[str, int] = {}

    def pid_of(host: str) -> int:
        if host not in pids:
            pids[host] = container_pid(host)
        return pids[host]

    for link in topo.get("links", []):
        ha, da, aa = _end(link["a"])
        hb, db, ab = _end(link["b"])
        pa, pb = pid_of(ha), pid_of(hb)
        if not _has_link(pa, da):
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    "name",
                    da,
                    "netns",
                    str(pa),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    db,
                    "netns",
                    str(pb),
                ]
            )
        for pid, dev, addrs in ((pa, da, aa), (pb, db, ab)):
            for addr in addrs:
                _add_addr(pid, dev, addr)
            _ns(pid, "ip", "link", "set", "dev", dev, "up")
            rate = link.get("rate_mbit")
            if rate:
                _ns(
                    pid,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{rate}mbit",
                    "burst",
                    "16kb",
                    "latency",
                    "50ms",
                )
    for host, routes in (topo.get("routes") or {}).items():
        pid = pid_of(host)
        for route in routes:
            via = str(route["via"])
            fam = "-6" if ipaddress.ip_address(via).version == 6 else "-4"
            _ns(pid, "ip", fam, "route", "replace", str(route["dst"]), "via", via)


def check(topo: dict[str, Any]) -> None:
    hosts = {str(link[s]["host"]) for link in topo.get("links", []) for s in ("a", "b")}
    for host in sorted(hosts):
        container_pid(host)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "check"])
    ap.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    try:
        topo = yaml.safe_load(args.file.read_text())
        {"up": up, "check": check}[args.command](topo or {})
    except (OSError, yaml.YAMLError, TopologyError, KeyError, ValueError) as exc:
        print(f"topology: {args.file}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
