"""The ``Lab`` object: build, shape, run agents in and tear down the four-namespace lab."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import procs, shaping, topology, trace

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "lab"
EXAMPLES = REPO / "files" / "mptcp_tunnel" / "examples"
# The agents' subflows run what a stock Debian CPE or BGW runs, whatever this machine's default is
# (BBR here; a netns may not default to a congestion control outside the host's allowed list).
# Behind the link routers BBR subflows carried 0.87-0.88 of the link sum in the lab suite.
SUBFLOW_CC = "cubic"
STATE_ROOT = Path("/run/mtlab")
METRICS_PORT = 9477
QUEUE_NUM = {"fixed": 1, "cellular": 2}


class LabError(RuntimeError):
    """Something in the lab did not come up or behave as required (one-line message)."""


@dataclass
class LinkParams:
    rate_mbit: float
    delay_ms: float  # one way, each direction
    loss_pct: float = 0.0  # each direction, dropped at the receiver's ingress
    queue_ms: float = 50.0  # tbf queue length, in time at the link rate
    cut: bool = False
    trace: str | None = None  # rate trace being played (mtlab.trace spec), else the static rate


def default_link_routers() -> bool:
    """Link routers unless ``MT_LAB_LINK_ROUTERS=0``."""
    return os.environ.get("MT_LAB_LINK_ROUTERS", "1") != "0"


def default_links() -> dict[str, LinkParams]:
    return {
        "fixed": LinkParams(rate_mbit=10.0, delay_ms=25.0),
        "cellular": LinkParams(rate_mbit=5.0, delay_ms=25.0),
    }


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: os.environ.get("MT_LAB_PREFIX", "mt-"))
    links: dict[str, LinkParams] = field(default_factory=default_links)
    delay_mode: str = "nfqueue"  # or "netem" where the kernel has it (detected at up())
    # each access link's rate limit in a router namespace (topology.LINK_ROUTERS); off
    # (MT_LAB_LINK_ROUTERS=0) puts it on the ends' own interfaces, as the lab did until 27 Nov
    link_routers: bool = field(default_factory=default_link_routers)
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ names and state
    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix

    def ns(self, role: str) -> str:
        """Namespace name of ``role`` (client, cpe, bgw, server, or a link router); a full name
        passes through."""
        if role in topology.ALL_ROLES:
            return self.prefix + role
        if role.startswith(self.prefix) and role[len(self.prefix) :] in topology.ALL_ROLES:
            return role
        raise LabError(f"unknown lab host {role!r} (have: {', '.join(self.names)})")

    @property
    def names(self) -> dict[str, str]:
        """The lab's namespaces: the four hosts, and the link routers when they are on."""
        roles = topology.ALL_ROLES if self.link_routers else topology.ROLES
        return {role: self.ns(role) for role in roles}

    @property
    def _every_name(self) -> list[str]:
        """Every namespace this prefix may have left behind, link routers or not (``down``)."""
        return [self.ns(role) for role in topology.ALL_ROLES]

    def is_up(self) -> bool:
        return all(topology.exists(self.ns(role)) for role in topology.ROLES)

    def _save(self) -> None:
        data = {
            "delay_mode": self.delay_mode,
            "link_routers": self.link_routers,
            "links": {k: asdict(v) for k, v in self.links.items()},
        }
        (self.state_dir / "links.json").write_text(json.dumps(data, indent=2) + "\n")

    def _load(self) -> None:
        try:
            data = json.loads((self.state_dir / "links.json").read_text())
        except (OSError, ValueError):
            return
        self.delay_mode = data["delay_mode"]
        self.link_routers = bool(data.get("link_routers", False))
        self.links = {k: LinkParams(**v) for k, v in data["links"].items()}

    def __post_init__(self) -> None:
        if self.is_up():
            self._load()  # attach to a running lab (e.g. one started by `python -m mtlab up`)

    # ------------------------------------------------------------------ lifecycle
    def up(self, agents: bool = True) -> None:
        """Tear down leftovers, build the topology, shape both access links, start the agents."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, tc, nftables)")
        self.down()
        for p in self.links.values():
            p.trace = None  # down() stopped any trace player
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            topology.build(self.names, self.link_routers)
            self.delay_mode = (
                "netem" if shaping.has_netem(self.ns("cpe"), "wan_fixed") else "nfqueue"
            )
            for name in topology.ACCESS_LINKS:
                self._shape(name, initial=True)
            self._save()
            if agents:
                self.start_agents()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process in the lab's namespaces, remove the namespaces and the state."""
        pids: list[int] = []
        for ns in self._every_name:
            inode = topology.netns_inode(ns)
            if inode is not None:
                pids += procs.pids_in_netns(inode)
        for name in self._pidfile_names():
            pid = procs.read_pid(self.state_dir, name)
            if pid is not None and pid not in pids and procs.alive(pid):
                pids.append(pid)
        _stop_all(pids)
        self._children.clear()
        for ns in self._every_name:
            topology.remove(ns)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this lab still exists (namespaces, processes, state); empty when clean."""
        left = [f"netns {ns}" for ns in self._every_name if topology.exists(ns)]
        for ns in self._every_name:
            inode = topology.netns_inode(ns)
            if inode is not None:
                left += [f"pid {p} in {ns}" for p in procs.pids_in_netns(inode)]
        if self.state_dir.exists():
            left.append(f"state {self.state_dir}")
        return left

    def _pidfile_names(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        return [p.stem for p in self.state_dir.glob("*.pid")]

    # ------------------------------------------------------------------ running things
    def exec(
        self,
        ns: str,
        argv: list[str],
        timeout: float | None = 120,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``ns`` (role or netns name), wait, return its captured text output."""
        try:
            res = subprocess.run(
                procs.ns_argv(self.ns(ns), argv),
                check=False,
                env=self._env(),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{' '.join(argv)} in {ns}: no result within {timeout} s") from exc
        if check and res.returncode != 0:
            msg = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
            raise LabError(f"{' '.join(argv)} in {ns} exited {res.returncode}: {msg[0]}")
        return res

    def popen(self, ns: str, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        """Start a background process in ``ns``, tracked by ``name`` (pid file + log in state)."""
        self.stop(name)
        proc = procs.spawn(self.ns(ns), argv, name, self.state_dir, env=self._env())
        self._children[name] = proc
        return proc

    def serve(
        self, ns: str, argv: list[str], name: str, ready: str, timeout: float = 10.0
    ) -> subprocess.Popen[bytes]:
        """``popen`` a server and wait until its log contains ``ready``."""
        proc = self.popen(ns, argv, name)
        deadline = time.monotonic() + timeout
        while ready not in self.log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop(name)
                raise LabError(f"{name} in {ns} did not start: {self.log(name).strip()[-300:]}")
            time.sleep(0.05)
        return proc

    def stop(self, name: str, timeout: float = 5.0) -> None:
        """Stop a process started with ``popen`` (SIGTERM, then SIGKILL after ``timeout``)."""
        procs.stop(self.state_dir, name, timeout)
        child = self._children.pop(name, None)
        if child is not None:
            child.poll()

    def pid(self, name: str) -> int | None:
        """PID of a process started with ``popen`` (from its pid file)."""
        return procs.read_pid(self.state_dir, name)

    def alive(self, name: str) -> bool:
        pid = procs.read_pid(self.state_dir, name)
        if pid is None:
            return False
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        return procs.alive(pid)

    def log(self, name: str) -> str:
        try:
            return (self.state_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(LAB_DIR), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def python(module: str, *args: str) -> list[str]:
        """argv running ``python -m module args`` with this interpreter (mtlab importable)."""
        return [sys.executable, "-m", module, *args]

    # ------------------------------------------------------------------ link emulation
    def set_link(
        self,
        name: str,
        rate_mbit: float | None = None,
        delay_ms: float | None = None,
        loss_pct: float | None = None,
        queue_ms: float | None = None,
    ) -> LinkParams:
        """Change an access link (``fixed``/``cellular``) at runtime; unset values stay."""
        p = self._params(name)
        if p.trace is not None and (rate_mbit is not None or queue_ms is not None):
            raise LabError(
                f"{name}: a rate trace is playing ({p.trace}); stop it first (--trace none)"
            )
        for key, value in (
            ("rate_mbit", rate_mbit),
            ("delay_ms", delay_ms),
            ("loss_pct", loss_pct),
            ("queue_ms", queue_ms),
        ):
            if value is not None:
                if (
                    value < 0
                    or (key == "rate_mbit" and value <= 0)
                    or (key == "loss_pct" and value > 100)
                ):
                    raise LabError(f"{name}: {key}={value} out of range")
                setattr(p, key, float(value))
        if rate_mbit is None and delay_ms is None and queue_ms is None:
            self._apply_loss(name)  # loss alone: leave the rate and delay stages undisturbed
        else:
            self._shape(name)
        self._save()
        return p

    def cut(self, name: str) -> None:
        """Cut an access link: every packet in both directions is dropped (at each ingress)."""
        self._params(name).cut = True
        self._apply_loss(name)
        self._save()

    def restore(self, name: str) -> None:
        """Undo ``cut``: the link's configured loss applies again."""
        self._params(name).cut = False
        self._apply_loss(name)
        self._save()

    def _params(self, name: str) -> LinkParams:
        if name not in self.links:
            raise LabError(f"unknown link {name!r} (have: {', '.join(self.links)})")
        return self.links[name]

    def _ends(self, name: str) -> tuple[topology.End, topology.End]:
        w = topology.wire(name)
        return w.a, w.b

    def rate_stages(self, name: str) -> list[tuple[str, str]]:
        """Where the link's tbf runs, one per direction (cpe->bgw first): each end's egress, or the
        link router's two sides."""
        if self.link_routers:
            router = self.ns(topology.LINK_ROUTERS[name])
            return [(router, topology.ROUTER_BGW_IF), (router, topology.ROUTER_CPE_IF)]
        return [(self.ns(end.role), end.ifname) for end in self._ends(name)]

    def _apply_loss(self, name: str) -> None:
        p = self._params(name)
        for end in self._ends(name):
            shaping.set_ingress_drop(self.ns(end.role), end.ifname, p.loss_pct, p.cut)

    def _shape(self, name: str, initial: bool = False) -> None:
        p = self._params(name)
        for ns, ifname in self.rate_stages(name):
            if p.trace is None or initial:  # else the trace player owns the rate
                shaping.set_rate(ns, ifname, p.rate_mbit, p.queue_ms)
            if self.delay_mode == "netem":
                shaping.set_netem_delay(ns, ifname, p.delay_ms)
        for end in self._ends(name):
            ns = self.ns(end.role)
            if initial:
                shaping.nft_ensure_chain(ns, end.ifname)
            if self.delay_mode != "netem":
                self._delayer(ns, end, name, p.delay_ms, initial)
        self._apply_loss(name)

    def _delayer(
        self, ns: str, end: topology.End, link: str, delay_ms: float, initial: bool
    ) -> None:
        name = f"delay-{end.role}-{end.ifname}"
        control = self.state_dir / f"{name}.ms"
        control.write_text(f"{delay_ms}\n")
        if not initial:
            pid = procs.read_pid(self.state_dir, name)
            if pid is None or not procs.alive(pid):
                raise LabError(f"delayer {name} is not running (see {self.state_dir}/{name}.log)")
            seen = self.log(name).count("delayer: delay now")
            os.kill(pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while self.log(name).count("delayer: delay now") <= seen:  # applied when it says so
                if time.monotonic() > deadline:
                    raise LabError(f"delayer {name} did not take the new delay")
                time.sleep(0.01)
            return
        argv = [
            sys.executable,
            "-m",
            "mtlab.delayer",
            "--queue",
            str(QUEUE_NUM[link]),
            "--delay-ms",
            str(delay_ms),
            "--control",
            str(control),
        ]
        self.popen(ns, argv, name)
        deadline = time.monotonic() + 10
        while "delayer: queue" not in self.log(name):
            if not self.alive(name) or time.monotonic() > deadline:
                raise LabError(f"delayer {name} did not start: {self.log(name).strip()[-300:]}")
            time.sleep(0.05)
        shaping.nfqueue_rule(ns, end.ifname, QUEUE_NUM[link])

    # ------------------------------------------------------------------ rate traces
    def start_trace(self, name: str, spec: str) -> str:
        """Let the link's rate follow ``spec`` (``mtlab.trace``: ``walk:...``, ``file:PATH,...``;
        ``none`` stops a trace). A running trace is replaced: the new one starts from its
        beginning, so the same spec always plays the same rates from now on. Returns the spec
        in full (defaults filled in)."""
        p = self._params(name)
        try:
            parsed = trace.parse_spec(spec)
            if isinstance(parsed, trace.FileSpec):
                parsed = trace.FileSpec(
                    parsed.path.resolve(), parsed.interval_ms, parsed.mean, parsed.min
                )
                trace.file_steps(parsed)  # a bad file fails here, with its line
        except trace.TraceError as exc:
            raise LabError(str(exc)) from None
        if parsed is None:
            self.stop_trace(name)
            return "none"
        self.stop_trace(name)
        record = self._trace_file(name)
        record.write_text("")
        argv = self.python(
            "mtlab.traceplayer",
            "--spec",
            parsed.text(),
            "--queue-ms",
            str(p.queue_ms),
            "--record",
            str(record),
        )
        for ns, ifname in self.rate_stages(name):
            argv += ["--end", f"{ns}:{ifname}"]
        pname = f"trace-{name}"
        seen = self.log(pname).count("traceplayer: playing")
        self.popen("cpe", argv, pname)
        deadline = time.monotonic() + 10
        while self.log(pname).count("traceplayer: playing") <= seen:
            if not self.alive(pname) or time.monotonic() > deadline:
                log = self.log(pname).strip()[-300:]
                self.stop(pname)
                raise LabError(f"trace player for {name} did not start: {log}")
            time.sleep(0.02)
        p.trace = parsed.text()
        self._save()
        return p.trace

    def stop_trace(self, name: str) -> None:
        """Stop the link's trace player (if any) and put the static rate back on both ends."""
        p = self._params(name)
        self.stop(f"trace-{name}")
        for ns, ifname in self.rate_stages(name):
            shaping.set_rate(ns, ifname, p.rate_mbit, p.queue_ms)
        if p.trace is not None:
            p.trace = None
            self._save()

    def trace_record(self, name: str) -> list[tuple[float, float]]:
        """What rate was in force when, as the player applied it: ``[(monotonic s, Mbit/s)]``.
        A stop (``stop_trace``) appears as the link's static rate from that time."""
        out: list[tuple[float, float]] = []
        try:
            lines = self._trace_file(name).read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line being written
            if item.get("stop"):
                out.append((float(item["t"]), self._params(name).rate_mbit))
            else:
                out.append((float(item["t"]), float(item["rate_mbit"])))
        return out

    def _trace_file(self, name: str) -> Path:
        return self.state_dir / f"trace-{name}.jsonl"

    def link_bytes(self, name: str) -> dict[str, int]:
        """Bytes sent each way on an access link so far: ``{"up": cpe->bgw, "down": bgw->cpe}``."""
        a, b = self._ends(name)
        return {
            "up": topology.link_stats(self.ns(a.role), a.ifname)["tx_bytes"],
            "down": topology.link_stats(self.ns(b.role), b.ifname)["tx_bytes"],
        }

    # ------------------------------------------------------------------ agents
    def agent_bin(self) -> str:
        for cand in (Path(sys.executable).parent / "mptcp-tunnel", REPO / ".venv/bin/mptcp-tunnel"):
            if cand.exists():
                return str(cand)
        raise LabError("mptcp-tunnel not installed in the venv (run `make setup`)")

    def agent_config(self, role: str) -> dict[str, Any]:
        """The agent config the lab uses: the example file (same values as the lab plan), subflows
        on ``SUBFLOW_CC`` unless it names one, with TLS from the lab's own throw-away PKI (made once
        per lab in its state dir)."""
        with open(EXAMPLES / f"{role}.yaml") as fh:
            cfg: dict[str, Any] = yaml.safe_load(fh)
        tunnel = cfg.setdefault("tunnel", {})
        if not tunnel.get("congestion_control"):  # the example's "" = the host's default
            tunnel["congestion_control"] = SUBFLOW_CC
        if tunnel.get("encryption", "tls") == "tls":
            stem = cfg["cpe"]["id"] if role == "cpe" else cfg["bgw"].get("name", "bgw1")
            cfg["tls"] = self.pki().tls_section(stem, crl=role == "bgw")
        return cfg

    def pki(self) -> Any:
        from mtlab.pki import Pki, lab_pki

        directory = self.state_dir / "pki"
        if not (directory / "ca.crt").exists() or not (directory / "ca-crl.pem").exists():
            return lab_pki(directory, ["cpe1"])
        return Pki.existing(directory)

    def write_agent_config(self, role: str, cfg: dict[str, Any] | None = None) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{role}.yaml"
        cfg = dict(cfg if cfg is not None else self.agent_config(role))
        # Both agents share this filesystem: each gets its control socket in the lab's state.
        cfg.setdefault("control_socket", str(self.state_dir / f"{role}.sock"))
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start_agent(self, role: str, cfg: dict[str, Any] | None = None) -> None:
        if role not in topology.ROUTERS:
            raise LabError(f"agents run on cpe and bgw, not {role!r}")
        path = self.write_agent_config(role, cfg)
        self.popen(role, [self.agent_bin(), "run", "--config", str(path)], f"agent-{role}")

    def start_agents(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the BGW then the CPE agent; with ``wait``, until traffic crosses the tunnel."""
        self.start_agent("bgw")
        self.start_agent("cpe")
        if wait:
            self.wait_tunnel(timeout)

    def stop_agent(self, role: str, timeout: float = 10.0) -> None:
        self.stop(f"agent-{role}", timeout)

    def restart_agent(self, role: str) -> None:
        cfg_path = self.state_dir / f"{role}.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else None
        self.stop_agent(role)
        self.start_agent(role, cfg)

    def agent_alive(self, role: str) -> bool:
        return self.alive(f"agent-{role}")

    def metrics(self, role: str) -> dict[str, float]:
        """The agent's Prometheus samples as ``{'name{label="v",...}': value}``."""
        from prometheus_client.parser import text_string_to_metric_families

        res = self.exec(
            role,
            ["curl", "-sf", "--max-time", "3", f"http://127.0.0.1:{METRICS_PORT}/metrics"],
            timeout=10,
        )
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(res.stdout):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def wait_metric(self, key: str, value: float, timeout: float, role: str = "cpe") -> None:
        """Until the agent's sample ``key`` equals ``value`` (LabError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while self.metrics(role).get(key) != value:
            if time.monotonic() > deadline:
                raise LabError(f"{key} did not become {value} within {timeout} s")
            time.sleep(0.5)

    def ping(self, src: str, dst: str, count: int = 1, timeout: float = 2.0) -> bool:
        res = self.exec(
            src,
            ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), dst],
            check=False,
            timeout=count * timeout + 5,
        )
        return res.returncode == 0

    def wait_tunnel(self, timeout: float = 30.0) -> float:
        """Wait until client->server ping crosses the tunnel; returns the seconds it took."""
        start = time.monotonic()
        server = topology.address("server", "eth0")
        while time.monotonic() - start < timeout:
            for role in topology.ROUTERS:
                if not self.agent_alive(role):
                    raise LabError(
                        f"{role} agent exited: {self.log('agent-' + role).strip()[-400:]}"
                    )
            if self.ping("client", server, timeout=1):
                return time.monotonic() - start
        raise LabError(f"no traffic through the tunnel after {timeout} s")


def _stop_all(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(procs.alive(p) for p in pids):
        for p in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, os.WNOHANG)
        time.sleep(0.05)
    for pid in pids:
        if procs.alive(pid):
            procs.terminate(pid, timeout=2.0, sig=signal.SIGKILL)
