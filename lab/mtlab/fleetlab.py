"""Two namespaces for fleet-scale runs: a BGW in one, the load generator in the other.

::

    <prefix>bgw   fl0 10.99.0.1/24  ==== veth, no shaping ====  fl0 10.99.0.2/24   <prefix>gen

``prefix`` is ``mt-fl<tag>-`` with a random tag, so several runs (and the netns lab, whose
names are fixed) live side by side. The BGW is the real agent (``mptcp-tunnel run``), started
with a high RLIMIT_NOFILE (soft and hard, capped at what this process may grant). Everything
-- processes (by PID: the ones started here and any left in the two namespaces), the
namespaces with their veth -- is removed by ``down()``, which the context manager always calls::

    with FleetLab() as fl:
        fl.start_bgw(cfg_dict)          # writes <state>/bgw.yaml, log in <state>/bgw.log
        fl.wait_bgw_ready(120)
        fl.bgw_pids()                   # main process and its descendants
        fl.sighup(); fl.stop_bgw()      # -> (seconds to exit, return code)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import procs, topology
from .lab import REPO, LabError


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=60, check=False)
    if check and res.returncode != 0:
        raise LabError(f"ip {' '.join(argv)}: {res.stderr.strip()}")
    return res


def _sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "sh", "-c", f"echo '{value}' > {path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if res.returncode != 0:
        raise LabError(f"sysctl {key}={value} in {ns}: {res.stderr.strip()}")


def agent_bin() -> str:
    for cand in (Path(sys.executable).parent / "mptcp-tunnel", REPO / ".venv/bin/mptcp-tunnel"):
        if cand.exists():
            return str(cand)
    raise LabError("mptcp-tunnel not installed in the venv (run `make setup`)")


def nofile_cap(want: int) -> int:
    """``want``, capped at this process's hard RLIMIT_NOFILE (a child cannot get more)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


class FleetLab:
    def __init__(
        self,
        tag: str | None = None,
        bgw_addr: str = "10.99.0.1",
        gen_addr: str = "10.99.0.2",
        plen: int = 24,
        state_dir: Path | None = None,
    ) -> None:
        self.tag = tag or secrets.token_hex(2)
        self.prefix = f"mt-fl{self.tag}-"
        self.ns_bgw = self.prefix + "bgw"
        self.ns_gen = self.prefix + "gen"
        self.bgw_addr = bgw_addr
        self.gen_addr = gen_addr
        self.plen = plen
        self._own_state = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix=f"mtfleet-{self.tag}-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.bgw: subprocess.Popen[bytes] | None = None
        self.bgw_config_path = self.state_dir / "bgw.yaml"
        self.bgw_log = self.state_dir / "bgw.log"
        self.bgw_nofile: int | None = None
        self.bgw_started: float | None = None
        self.bgw_ready_s: float | None = None
        self._known_pids: set[int] = set()
        self._is_up = False

    # ------------------------------------------------------------------ namespaces
    def up(self) -> FleetLab:
        if os.geteuid() != 0:
            raise LabError("the fleet lab needs root (network namespaces)")
        try:
            for ns in (self.ns_bgw, self.ns_gen):
                _ip("netns", "add", ns)
            self._is_up = True
            for ns in (self.ns_bgw, self.ns_gen):
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "-n",
                self.ns_bgw,
                "link",
                "add",
                "fl0",
                "type",
                "veth",
                "peer",
                "name",
                "fl0",
                "netns",
                self.ns_gen,
            )
            for ns, addr in ((self.ns_bgw, self.bgw_addr), (self.ns_gen, self.gen_addr)):
                _ip("-n", ns, "addr", "add", f"{addr}/{self.plen}", "dev", "fl0")
                _ip("-n", ns, "link", "set", "fl0", "up")
            # the generator opens one connection per CPE (and all of them again in a storm)
            _sysctl(self.ns_gen, "net.ipv4.ip_local_port_range", "10000 65000")
            for key, value in (
                ("net.core.somaxconn", "65535"),
                ("net.ipv4.tcp_max_syn_backlog", "65535"),
                ("net.ipv4.ip_forward", "1"),
            ):
                _sysctl(self.ns_bgw, key, value)
            _ip(
                "-n",
                self.ns_bgw,
                "mptcp",
                "limits",
                "set",
                "subflows",
                "2",
                "add_addr_accepted",
                "2",
            )
        except BaseException:
            self.down()
            raise
        return self

    def __enter__(self) -> FleetLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def links(self, ns: str | None = None) -> list[str]:
        res = _ip("-n", ns or self.ns_bgw, "-j", "link", "show")
        return [link["ifname"] for link in json.loads(res.stdout or "[]")]

    def has_link(self, ifname: str, ns: str | None = None) -> bool:
        return (
            _ip("-n", ns or self.ns_bgw, "link", "show", "dev", ifname, check=False).returncode == 0
        )

    # ------------------------------------------------------------------ the BGW
    def start_bgw(
        self, config: dict[str, Any] | Path, nofile: int = 65536
    ) -> subprocess.Popen[bytes]:
        """Start the real BGW agent in the BGW namespace, RLIMIT_NOFILE ``nofile`` (soft = hard).

        ``prlimit`` sets the limit and execs ``ip netns exec``, which execs the agent: the
        Popen's PID is the agent's.
        """
        if self.bgw is not None and self.bgw.poll() is None:
            raise LabError("a BGW is already running")
        if isinstance(config, dict):
            self.write_bgw_config(config)
        else:
            self.bgw_config_path = Path(config)
        limit = nofile_cap(nofile)
        self.bgw_nofile = limit

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.bgw_log, "ab") as log:
            self.bgw = subprocess.Popen(
                [
                    "prlimit",
                    f"--nofile={limit}:{limit}",
                    *procs.ns_argv(
                        self.ns_bgw, [agent_bin(), "run", "--config", str(self.bgw_config_path)]
                    ),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.bgw_started = time.monotonic()
        self._known_pids.add(self.bgw.pid)
        return self.bgw

    def write_bgw_config(self, config: dict[str, Any]) -> Path:
        """(Re)write the BGW's config file (JSON is YAML); a running BGW reads it on ``sighup``."""
        tmp = self.bgw_config_path.with_name(self.bgw_config_path.name + ".tmp")
        tmp.write_text("# written by mtlab.fleetlab\n" + json.dumps(config) + "\n")
        tmp.replace(self.bgw_config_path)
        return self.bgw_config_path

    def log_text(self) -> str:
        try:
            return self.bgw_log.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.bgw_log.stat().st_size
        except OSError:
            return 0

    def log_from(self, offset: int) -> str:
        """The BGW log from byte ``offset`` on (cheap to poll on a long log)."""
        try:
            with open(self.bgw_log, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float, offset: int = 0) -> float:
        """Wait until ``text`` is in the BGW log after byte ``offset``; seconds waited.

        Reads only what is new on each turn (a 10 000-CPE log is megabytes).
        """
        t0 = time.monotonic()
        pos, carry = offset, ""
        while True:
            with contextlib.suppress(OSError), open(self.bgw_log, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
                carry += chunk.decode(errors="replace")
            if text in carry:
                return time.monotonic() - t0
            carry = carry[-len(text) :]
            if self.bgw is None or self.bgw.poll() is not None:
                raise LabError(f"BGW exited (rc {self.bgw and self.bgw.returncode}): {self.tail()}")
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{text!r} not in the BGW log after {timeout:g} s: {self.tail()}")
            time.sleep(0.05)

    def wait_bgw_ready(self, timeout: float = 120.0, text: str = "listening") -> float:
        """Wait for the BGW's "listening" log line; seconds since ``start_bgw``."""
        self.wait_log(text, timeout)
        assert self.bgw_started is not None
        self.bgw_ready_s = round(time.monotonic() - self.bgw_started, 3)
        self._known_pids.update(self.bgw_pids())
        return self.bgw_ready_s

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def bgw_alive(self) -> bool:
        return self.bgw is not None and self.bgw.poll() is None

    def bgw_pids(self) -> list[int]:
        """The BGW's main process and all its descendants (workers)."""
        if self.bgw is None or self.bgw.poll() is not None:
            return []
        pids = _tree(self.bgw.pid)
        self._known_pids.update(pids)
        return pids

    def sighup(self) -> None:
        if self.bgw is None or self.bgw.poll() is not None:
            raise LabError("no BGW running")
        self.bgw.send_signal(signal.SIGHUP)

    def stop_bgw(self, timeout: float = 30.0) -> tuple[float | None, int | None]:
        """SIGTERM; returns (seconds until the main process exited, its return code).

        After ``timeout`` the process tree is killed and the seconds are None.
        """
        if self.bgw is None:
            return None, None
        tree = self.bgw_pids()
        t0 = time.monotonic()
        if self.bgw.poll() is None:
            self.bgw.send_signal(signal.SIGTERM)
        try:
            rc = self.bgw.wait(timeout)
            secs: float | None = round(time.monotonic() - t0, 3)
        except subprocess.TimeoutExpired:
            secs = None
            self.bgw.kill()
            rc = self.bgw.wait()
        for pid in tree:  # workers that outlived their parent
            if procs.alive(pid):
                procs.terminate(pid, timeout=2, sig=signal.SIGKILL)
        return secs, rc

    # ------------------------------------------------------------------ teardown
    def down(self) -> None:
        """Kill what runs in the two namespaces (by PID), delete them; idempotent."""
        pids = set(self._known_pids)
        if self.bgw is not None:
            pids.update(_tree(self.bgw.pid))
        for ns in (self.ns_bgw, self.ns_gen):
            inode = topology.netns_inode(ns)
            if inode is not None:
                pids.update(procs.pids_in_netns(inode))
        pids.discard(os.getpid())
        for pid in pids:
            if procs.alive(pid) and _ours(pid, self):
                procs.terminate(pid, timeout=5)
        if self.bgw is not None:
            with contextlib.suppress(Exception):
                self.bgw.wait(5)
        for ns in (self.ns_bgw, self.ns_gen):
            if topology.exists(ns):
                _ip("netns", "del", ns, check=False)
        self._is_up = False
        if self._own_state and os.environ.get("MT_FLEET_KEEP_STATE") != "1":
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = [f"netns {ns}" for ns in (self.ns_bgw, self.ns_gen) if topology.exists(ns)]
        left += [f"pid {p}" for p in sorted(self._known_pids) if procs.alive(p)]
        return left


def _ours(pid: int, fl: FleetLab) -> bool:
    """A process to stop: one we started (or its child) or one inside our namespaces."""
    if pid in fl._known_pids:
        return True
    for ns in (fl.ns_bgw, fl.ns_gen):
        inode = topology.netns_inode(ns)
        try:
            if inode is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                return True
        except OSError:
            return False
    return False


def _tree(root: int) -> list[int]:
    return procs.process_tree([root])
