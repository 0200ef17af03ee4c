#!/usr/bin/env python3
"""QEMU VMs for the vm-* Molecule scenarios (software emulation; no root bridges, no loop devices).

    vm.py up STATE_DIR SPEC.json   start the VMs of SPEC on copy-on-write overlays, wait for ssh
    vm.py down STATE_DIR           stop them (by PID, checked against the overlay path), delete the
                                   overlays and the state files
    vm.py ssh-config STATE_DIR     print an ssh_config for the running VMs
    vm.py instances STATE_DIR      print Molecule's instance config (JSON) for the running VMs

SPEC: {"image": "/path/base.qcow2", "identity_file": "...",
       "vms": [{"name": "mtv-cpe1", "memory": 1024, "links": ["fixed", "cellular"]}, ...]}
Every VM gets eth0 = QEMU user-mode networking (ssh forwarded from 127.0.0.1:<port>; the Debian
mirror), then one NIC per link it is on, in the order of its "links" (eth1, eth2, ...; the image
boots with net.ifnames=0). Each link name must appear on exactly two VMs. A link is a pair of UDP
sockets on 127.0.0.1 (-netdev dgram): two VMs share an Ethernet segment without root, bridges or
TAP devices. MAC addresses are 52:54:00:<vm>:<link>:01.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BOOT_TIMEOUT_S = float(os.environ.get("MT_VM_BOOT_TIMEOUT", "300"))


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_base(identity: str, port: int) -> list[str]:
    opts = ["BatchMode=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
            "ConnectTimeout=5", "IdentitiesOnly=yes"]  # fmt: skip
    return ["ssh", "-q", *(a for o in opts for a in ("-o", o)), "-i", identity, "-p", str(port),
            "root@127.0.0.1"]  # fmt: skip


def pid_is_ours(pid: int, overlay: str) -> bool:
    try:
        return overlay.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def up(state_dir: Path, spec: dict) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"identity_file": spec["identity_file"], "vms": {}}
    (state_dir / "state.json").write_text(json.dumps(state))
    names = [vm["name"] for vm in spec["vms"]]
    # Each link end: the local UDP port it listens on; the peer's port is where it sends.
    ends: dict[str, list[tuple[str, int, int, str]]] = {n: [] for n in names}
    link_names = list(dict.fromkeys(ln for vm in spec["vms"] for ln in vm.get("links", [])))
    port_of: dict[tuple[str, str], int] = {}
    for ln in link_names:
        members = [vm["name"] for vm in spec["vms"] if ln in vm.get("links", [])]
        if len(members) != 2:
            sys.exit(f"vm.py: link {ln} must join exactly two VMs, not {members}")
        for m in members:
            port_of[(ln, m)] = free_port(socket.SOCK_DGRAM)
    for vm in spec["vms"]:
        for ln in vm.get("links", []):
            li = link_names.index(ln)
            peer = next(
                m["name"]
                for m in spec["vms"]
                if ln in m.get("links", []) and m["name"] != vm["name"]
            )
            mac = f"52:54:00:{names.index(vm['name']):02x}:{li + 1:02x}:01"
            ends[vm["name"]].append((ln, port_of[(ln, vm["name"])], port_of[(ln, peer)], mac))
    try:
        for vi, vm in enumerate(spec["vms"]):
            name = vm["name"]
            overlay = state_dir / f"{name}.qcow2"
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    spec["image"],
                    str(overlay),
                ],
                check=True,
            )
            port = free_port(socket.SOCK_STREAM)
            pidfile = state_dir / f"{name}.pid"
            argv = [
                "qemu-system-x86_64", "-name", name, "-accel", "tcg,tb-size=256",
                "-m", str(vm.get("memory", spec.get("memory", 1024))), "-smp", "1",
                "-display", "none", "-daemonize", "-pidfile", str(pidfile),
                "-serial", f"file:{state_dir / (name + '.console.log')}",
                "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:{vi:02x}:00:00",
            ]  # fmt: skip
            nics = []
            for ni, (lname, mine, peer, mac) in enumerate(ends[name], start=1):
                argv += [
                    "-netdev", (f"dgram,id=n{ni},local.type=inet,local.host=127.0.0.1,"
                                f"local.port={mine},remote.type=inet,remote.host=127.0.0.1,"
                                f"remote.port={peer}"),
                    "-device", f"virtio-net-pci,netdev=n{ni},mac={mac}",
                ]  # fmt: skip
                nics.append({"link": lname, "interface": f"eth{ni}", "mac": mac})
            subprocess.run(argv, check=True)
            pid = int(pidfile.read_text().strip())
            state["vms"][name] = {"pid": pid, "port": port, "overlay": str(overlay), "nics": nics}
            (state_dir / "state.json").write_text(json.dumps(state, indent=1))
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for name, vm in state["vms"].items():
            while True:
                if not pid_is_ours(vm["pid"], vm["overlay"]):
                    sys.exit(
                        f"vm.py: {name} (QEMU) exited while booting; "
                        f"see {state_dir}/{name}.console.log"
                    )
                ok = subprocess.run(
                    [*ssh_base(spec["identity_file"], vm["port"]), "true"],
                    capture_output=True,
                    check=False,
                )
                if ok.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"vm.py: {name} not reachable over ssh after {BOOT_TIMEOUT_S:.0f} s")
                time.sleep(2)
    except BaseException:
        down(state_dir)
        raise
    print(json.dumps(state))
    return 0


def down(state_dir: Path) -> int:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {"vms": {}}
    for name, vm in state["vms"].items():
        pid = vm["pid"]
        if not pid_is_ours(pid, vm["overlay"]):
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not pid_is_ours(pid, vm["overlay"]):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})", file=sys.stderr)
    if state_dir.is_dir():
        for f in state_dir.iterdir():
            if f.suffix in (".qcow2", ".pid") or f.name == "state.json":
                f.unlink()
    return 0


def ssh_config(state_dir: Path) -> int:
    state = json.loads((state_dir / "state.json").read_text())
    for name, vm in state["vms"].items():
        print(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {vm['port']}\n  User root\n"
            f"  IdentityFile {state['identity_file']}\n  IdentitiesOnly yes\n"
            f"  StrictHostKeyChecking no\n"
            f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ControlMaster auto\n"
            f"  ControlPath {state_dir}/cm-%r@%h:%p\n  ControlPersist 300\n"
            f"  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
        )
    return 0


def instances(state_dir: Path) -> int:
    state = json.loads((state_dir / "state.json").read_text())
    conf = [
        {
            "instance": name,
            "address": "127.0.0.1",
            "port": vm["port"],
            "user": "root",
            "identity_file": state["identity_file"],
        }
        for name, vm in state["vms"].items()
    ]
    print(json.dumps(conf, indent=1))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "up":
        return up(Path(argv[2]), json.loads(Path(argv[3]).read_text()))
    if len(argv) == 3 and argv[1] == "down":
        return down(Path(argv[2]))
    if len(argv) == 3 and argv[1] == "instances":
        return instances(Path(argv[2]))
    if len(argv) == 3 and argv[1] == "ssh-config":
        return ssh_config(Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
