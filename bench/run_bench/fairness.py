"""``fairness``: two CPEs on one BGW; one pushes as hard as it can, does the other notice?

Own namespaces (prefix ``mt-fa<tag>-``, not the netns lab), real agents, real iperf3 and ping::

    vcli ── vcpe ══ 10 Mbit/s, 25 ms each way ══╗
                                               bgw ── srv (iperf3 servers, ping target)
    hcli ── hcpe ══ unshaped veth ═════════════╝

The victim's access link is shaped like the lab's fixed link (tbf both ways, delay by netem or
the NFQUEUE delayer in the receiving namespace); the hog's is a bare veth, so its 4 parallel
downloads are limited only by the agents (the BGW's CPU). Per repetition: victim download alone
(``solo``) and with the hog running (``with_hog``), each followed by pings client -> server
(``-U``, through the delayer). Targets (issue 7): with the hog the victim keeps >= 0.9 of its
solo throughput and its ping p99 moves <= 10 %.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtlab import LabError, procs, shaping, topology
from mtlab.fleetlab import agent_bin

from run_bench.loadgen import cpu_percent
from run_bench.results import Progress, ScenarioResult, mean_std, percentile, warn

SERVER = "172.16.50.2"
PORTS = {"victim": 5301, "hog": 5302}
# site: (CPE's access address, BGW's address on that link, CPE's LAN address, client address)
SITES = {
    "victim": ("10.51.0.1", "10.51.0.2", "192.168.51.1", "192.168.51.2"),
    "hog": ("10.52.0.1", "10.52.0.2", "192.168.52.1", "192.168.52.2"),
}
_TIME = re.compile(r"time=([0-9.]+) ms")


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {(res.stderr or res.stdout).strip()[-300:]}")
    return res


class TwoCpes:
    """The namespaces, links, agents and helper processes; ``down()`` removes all of it."""

    def __init__(self, victim_mbit: float, delay_ms: float) -> None:
        self.prefix = f"mt-fa{secrets.token_hex(2)}-"
        self.names = {r: self.prefix + r for r in ("srv", "bgw", "vcpe", "vcli", "hcpe", "hcli")}
        self.victim_mbit = victim_mbit
        self.delay_ms = delay_ms
        self.state = Path(tempfile.mkdtemp(prefix=f"mtfair-{self.prefix}"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def ns(self, role: str) -> str:
        return self.names[role]

    def ip(self, role: str, *argv: str) -> None:
        _run(["ip", "-n", self.ns(role), *argv])

    def sysctl(self, role: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        _run(procs.ns_argv(self.ns(role), ["sh", "-c", f"echo {value} > {path}"]))

    def veth(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        self.ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        for role, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            self.ip(role, "addr", "add", addr, "dev", ifname)
            self.ip(role, "link", "set", ifname, "up")

    def up(self) -> None:
        try:
            for ns in self.names.values():
                _run(["ip", "netns", "add", ns])
            for role in self.names:
                self.ip(role, "link", "set", "lo", "up")
            self.veth("bgw", "lan0", "172.16.50.1/24", "srv", "eth0", SERVER + "/24")
            self.ip("srv", "route", "add", "default", "via", "172.16.50.1")
            for site, (wan, bgw_side, lan, cli) in SITES.items():
                cpe, client = site[0] + "cpe", site[0] + "cli"
                self.veth(cpe, "wan0", wan + "/30", "bgw", f"{site[0]}w0", bgw_side + "/30")
                self.veth(cpe, "lan0", lan + "/24", client, "eth0", cli + "/24")
                self.ip(client, "route", "add", "default", "via", lan)
                self.sysctl(cpe, "net.ipv4.ip_forward", "1")
                self.sysctl(cpe, "net.ipv4.tcp_slow_start_after_idle", "0")
            self.sysctl("bgw", "net.ipv4.ip_forward", "1")
            self.sysctl("bgw", "net.ipv4.tcp_slow_start_after_idle", "0")
            self._shape_victim()
        except BaseException:
            self.down()
            raise

    def _shape_victim(self) -> None:
        ends = (("vcpe", "wan0", 1), ("bgw", "vw0", 2))
        netem = shaping.has_netem(self.ns("vcpe"), "wan0")
        for role, ifname, queue in ends:
            shaping.set_rate(self.ns(role), ifname, self.victim_mbit, 50.0)
            if netem:
                shaping.set_netem_delay(self.ns(role), ifname, self.delay_ms)
                continue
            name = f"delay-{role}"
            argv = [sys.executable, "-m", "mtlab.delayer", "--queue", str(queue)]
            self.start(role, [*argv, "--delay-ms", str(self.delay_ms)], name)
            self.wait_log(name, "delayer: queue", 10)
            shaping.nfqueue_rule(self.ns(role), ifname, queue)

    # ------------------------------------------------------------------ processes
    def start(self, role: str, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*sys.path, env.get("PYTHONPATH", "")) if p)
        proc = procs.spawn(self.ns(role), argv, name, self.state, env=env)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        try:
            return (self.state / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, name: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{name} did not say {text!r}: {self.log(name)[-400:]}")
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            procs.terminate(proc.pid, timeout=10)
            proc.poll()

    def start_agents(self) -> None:
        cpes = []
        for site, (wan, bgw_side, lan, _cli) in SITES.items():
            secret = f"fairness-secret-{site}"
            cpes.append(
                {"id": site, "secret": secret, "prefixes": [lan.rsplit(".", 1)[0] + ".0/24"]}
            )
            cfg = {
                "role": "cpe",
                "metrics_listen": "",
                "tunnel": {"tun_name": "mt0", "encryption": "none"},
                "mptcp": {"subflows": 2, "add_addr_accepted": 2},
                "cpe": {
                    "id": site,
                    "secret": secret,
                    "bgw_address": bgw_side,
                    "routes": [SERVER.rsplit(".", 1)[0] + ".0/24"],
                    "links": [
                        {
                            "name": "fixed",
                            "kind": "fixed",
                            "interface": "wan0",
                            "address": wan,
                            "table": 101,
                        }
                    ],
                },
            }
            (self.state / f"cpe-{site}.yaml").write_text(json.dumps(cfg))
        bgw = {
            "role": "bgw",
            "metrics_listen": "",
            "tunnel": {"encryption": "none"},
            "bgw": {"listen_address": "0.0.0.0", "cpes": cpes},
        }
        (self.state / "bgw.yaml").write_text(json.dumps(bgw))
        self.start(
            "bgw", [agent_bin(), "run", "--config", str(self.state / "bgw.yaml")], "agent-bgw"
        )
        self.wait_log("agent-bgw", "listening", 60)
        for site in SITES:
            cfg = str(self.state / f"cpe-{site}.yaml")
            self.start(site[0] + "cpe", [agent_bin(), "run", "--config", cfg], f"agent-{site}")
        for site in SITES:
            self.wait_ping(site[0] + "cli", 30)

    def wait_ping(self, client: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run(
                procs.ns_argv(self.ns(client), ["ping", "-n", "-c1", "-W1", SERVER]),
                capture_output=True,
                check=False,
            )
            if res.returncode == 0:
                return
        raise LabError(f"no ping from {client} through the tunnel: {self.log('agent-bgw')[-400:]}")

    def down(self) -> None:
        pids = [p.pid for p in self.procs.values()]
        for ns in self.names.values():
            inode = topology.netns_inode(ns)
            if inode is not None:
                pids += procs.pids_in_netns(inode)
        for pid in set(pids):
            if pid != os.getpid():
                procs.terminate(pid, timeout=5)
        self.procs.clear()
        for ns in self.names.values():
            if topology.exists(ns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if os.environ.get("MT_FAIRNESS_KEEP_STATE") != "1":
            shutil.rmtree(self.state, ignore_errors=True)

    # ------------------------------------------------------------------ measurements
    def iperf_server(self, site: str) -> None:
        name = f"iperf3-{site}"
        self.start("srv", ["iperf3", "-s", "-p", str(PORTS[site]), "--forceflush"], name)
        self.wait_log(name, "Server listening", 10)

    def download(self, site: str, seconds: int, parallel: int = 1, cc: str = "") -> dict[str, Any]:
        argv = ["iperf3", "-c", SERVER, "-p", str(PORTS[site]), "-R", "-J"]
        argv += ["-t", str(seconds), "-O", "2", "-P", str(parallel)] + (["-C", cc] if cc else [])
        res = subprocess.run(
            procs.ns_argv(self.ns(site[0] + "cli"), argv),
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        try:
            data = json.loads(res.stdout)
        except ValueError as exc:
            raise LabError(f"iperf3 {site}: no JSON ({res.stderr[-200:]})") from exc
        if "error" in data:
            raise LabError(f"iperf3 {site}: {data['error']}")
        recv = data["end"]["sum_received"]
        return {
            "mbps": round(recv["bits_per_second"] / 1e6, 3),
            "retransmits": data["end"]["sum_sent"].get("retransmits"),
        }

    def hog_start(self, cc: str = "") -> None:
        argv = ["iperf3", "-c", SERVER, "-p", str(PORTS["hog"]), "-R", "-t", "3600", "-P", "4"]
        argv += ["-i", "1", "--forceflush"] + (["-C", cc] if cc else [])
        self.start("hcli", argv, "hog")
        time.sleep(3)  # let it fill the pipes

    def hog_mbps(self) -> float | None:
        rates = re.findall(r"\[SUM\].*?([0-9.]+) ([MG])bits/sec", self.log("hog"))
        vals = [float(v) * (1000 if unit == "G" else 1) for v, unit in rates[-5:]]
        return round(sum(vals) / len(vals), 1) if vals else None

    def pings(self, count: int, interval: float = 0.05) -> list[float]:
        res = subprocess.run(
            procs.ns_argv(
                self.ns("vcli"),
                ["ping", "-U", "-n", "-c", str(count), "-i", str(interval), "-W", "2", SERVER],
            ),
            capture_output=True,
            text=True,
            timeout=count * (interval + 2) + 10,
            check=False,
        )
        return [float(m) for m in _TIME.findall(res.stdout)]

    def bgw_pid(self) -> int:
        return self.procs["agent-bgw"].pid


def fairness(s: Any, progress: Progress, save: Callable[[ScenarioResult], None]) -> ScenarioResult:
    res = ScenarioResult("fairness", asdict(s))
    res.links = {
        "victim": {
            "rate_mbit": s.fairness_victim_mbit,
            "rtt_ms": 2 * s.fairness_delay_ms,
            "loss_pct": 0.0,
        },
        "hog": {"rate_mbit": None, "rtt_ms": None, "loss_pct": 0.0},
    }
    lab = TwoCpes(s.fairness_victim_mbit, s.fairness_delay_ms)
    runs: dict[str, list[float]] = {"solo": [], "with_hog": []}
    rtts: dict[str, list[float]] = {"solo": [], "with_hog": []}
    extra: dict[str, list[Any]] = {"hog_mbps": [], "bgw_cpu_pct": []}
    try:
        lab.up()
        lab.start_agents()
        for site in SITES:
            lab.iperf_server(site)
        for rep in range(s.reps):
            for cond in ("solo", "with_hog"):
                try:
                    if cond == "with_hog":
                        lab.hog_start(s.inner_cc)
                    r = lab.download("victim", s.fairness_seconds, cc=s.inner_cc)
                    p = lab.pings(s.fairness_pings)
                    if cond == "with_hog":
                        extra["hog_mbps"].append(lab.hog_mbps())
                        extra["bgw_cpu_pct"].append(cpu_percent(lab.bgw_pid(), 2.0))
                finally:
                    lab.stop("hog")
                runs[cond].append(r["mbps"])
                rtts[cond] += p
                progress.step(
                    f"fairness rep {rep + 1}/{s.reps} {cond}: victim {r['mbps']:.2f} Mbit/s,"
                    f" ping p99 {percentile(p, 99)} ms"
                    + (f", hog {extra['hog_mbps'][-1]} Mbit/s" if cond == "with_hog" else "")
                )
        for cond in ("solo", "with_hog"):
            res.add_point(
                "mptcp-tunnel",
                runs[cond],
                condition=cond,
                rtts_ms_count=len(rtts[cond]),
                p50_ms=percentile(rtts[cond], 50),
                p99_ms=percentile(rtts[cond], 99),
                **(
                    {"hog_mbps": extra["hog_mbps"], "bgw_cpu_pct": extra["bgw_cpu_pct"]}
                    if cond == "with_hog"
                    else {}
                ),
            )
        solo, hog = (mean_std(runs[c])[0] for c in ("solo", "with_hog"))
        p99s, p99h = percentile(rtts["solo"], 99), percentile(rtts["with_hog"], 99)
        if solo and hog is not None:
            ratio = round(hog / solo, 4)
            res.points[-1]["ratio_to_solo"] = ratio
            res.notes.append(f"victim throughput with hog / solo = {ratio} (target >= 0.9)")
        if p99s and p99h is not None:
            change = round(100 * (p99h - p99s) / p99s, 1)
            res.points[-1]["p99_change_pct"] = change
            res.notes.append(
                f"victim ping p99 {p99s} -> {p99h} ms with the hog: {change:+} % (target <= +10 %)"
            )
        save(res)
    except LabError as exc:
        warn(f"fairness: {exc}")
        res.notes.append(f"failed: {exc}")
        with contextlib.suppress(Exception):
            res.notes.append("BGW log tail: " + " | ".join(lab.log("agent-bgw").splitlines()[-5:]))
        raise
    finally:
        lab.down()
    return res


def main() -> int:
    """``python -m run_bench.fairness [--quick]``: the scenario alone, JSON on stdout."""
    from run_bench.scenarios import Settings

    s = Settings.make(quick="--quick" in sys.argv, reps=None)
    res = fairness(s, Progress(s.steps("fairness")), lambda r: None)
    print(json.dumps({"points": res.points, "notes": res.notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
