"""``lockout``: a legitimate CPE's connect time while 1 000 source addresses attack admission.

Two namespaces of its own (``<MT_LAB_PREFIX>lk-bgw``/``-att``, one veth): the real BGW agent (TLS,
its own throw-away PKI, LimitNOFILE like the unit) and, on the other side, ``mtlab.attack`` holding
as many connections as it can from ``addresses`` source addresses (silent, CLAIM trickled one
byte every 2 s, and CLAIM + a stalled TLS record), reopening each one as soon as it is closed. A
separate address then connects as cpe1 once a second: MPTCP connect + CLAIM + TLS 1.3 + OFFER,
timed from ``connect()`` to ACCEPT. Reported: the connect times before and under attack, the
attacker's open connections and the BGW's refusal counters.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from run_bench.results import Progress, ScenarioResult, percentile

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"  # mtlab.attack runs from there
BGW_ADDR = "10.98.255.254"
LEGIT_ADDR = "10.98.0.10"
ATTACK_BASE = "10.98.1.0"

LEGIT = """
import json, socket, sys, time
from mptcp_tunnel import exchange, handshake as hs
from mptcp_tunnel.config import load_config
from mptcp_tunnel.tls import client_context
cfg = load_config(sys.argv[1]); ctx = client_context(cfg.tls)
for _ in range(int(sys.argv[2])):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.settimeout(15)
    try:
        s.bind(("LEGIT_ADDR", 0)); s.connect(("BGW_ADDR", 7440))
        exchange.client_tls(s, cfg.cpe, ctx, hs.Feature.NONE)
        took = time.monotonic() - t0
    except Exception as exc:
        took = None; print(json.dumps({"error": str(exc)}), flush=True)
    s.close()
    print(json.dumps({"connect_s": took}), flush=True)
    time.sleep(1.0)
""".replace("LEGIT_ADDR", LEGIT_ADDR).replace("BGW_ADDR", BGW_ADDR)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


# As the systemd unit does (LimitNOFILE): a BGW's fd limit is not the shell's 1024 (as high as this
# host allows, up to the unit's 262 144).
_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
_NOFILE = 262144 if _HARD == resource.RLIM_INFINITY else min(262144, _HARD)
NOFILE = ["prlimit", f"--nofile={_NOFILE}:{_NOFILE}", "--"]


class LockoutLab:
    def __init__(self, workdir: Path) -> None:
        prefix = os.environ.get("MT_LAB_PREFIX", "mt-")
        self.bgw_ns, self.att_ns = f"{prefix}lk-bgw", f"{prefix}lk-att"
        self.dir = workdir
        self.procs: list[subprocess.Popen[Any]] = []

    def up(self, addresses: int) -> None:
        self.down()
        for ns in (self.bgw_ns, self.att_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "-n",
            self.att_ns,
            "link",
            "add",
            "lka",
            "type",
            "veth",
            "peer",
            "name",
            "lkb",
            "netns",
            self.bgw_ns,
        )
        sh("ip", "-n", self.bgw_ns, "addr", "add", f"{BGW_ADDR}/16", "dev", "lkb")
        sh("ip", "-n", self.att_ns, "addr", "add", f"{LEGIT_ADDR}/16", "dev", "lka")
        batch = self.dir / "addrs.batch"
        first = [int(x) for x in ATTACK_BASE.split(".")]
        base = (first[0] << 24) | (first[1] << 16) | (first[2] << 8) | first[3]
        lines = []
        for i in range(addresses):
            a = base + i
            lines.append(
                f"addr add {a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/16 dev lka"
            )
        batch.write_text("\n".join(lines) + "\n")
        sh("ip", "-n", self.att_ns, "-batch", str(batch))
        for ns, dev in ((self.bgw_ns, "lkb"), (self.att_ns, "lka")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # Room for the flood's accept queue and SYNs (a BGW would set these too).
        for ns in (self.bgw_ns, self.att_ns):
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.core.somaxconn=65535",
                "net.ipv4.tcp_max_syn_backlog=65535",
                "net.ipv4.ip_local_port_range=1024 65000",
            )

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for ns in (self.bgw_ns, self.att_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def start_bgw(self, pki: Any) -> Path:
        cfg = {
            "role": "bgw",
            "metrics_listen": "127.0.0.1:9477",
            "tunnel": {"encryption": "tls", "workers": 2, "keepalive_s": 10},
            "tls": pki.tls_section("bgw1", crl=True),
            "bgw": {
                "name": "bgw1",
                "listen_address": BGW_ADDR,
                "cpes": [{"id": "cpe1", "prefixes": ["192.168.10.0/24"]}],
            },
        }
        path = self.dir / "bgw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = (self.dir / "bgw.log").open("ab")
        proc = subprocess.Popen(
            [
                *NOFILE,
                "ip",
                "netns",
                "exec",
                self.bgw_ns,
                sys.executable,
                "-m",
                "mptcp_tunnel",
                "run",
                "--config",
                str(path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while "BGW listening" not in (self.dir / "bgw.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "lockout: BGW did not start: " + (self.dir / "bgw.log").read_text()[-500:]
                )
            time.sleep(0.1)
        return path

    def cpe_config(self, pki: Any) -> Path:
        cfg = {
            "role": "cpe",
            "tls": pki.tls_section("cpe1"),
            "cpe": {
                "id": "cpe1",
                "bgw_name": "bgw1",
                "bgw_address": BGW_ADDR,
                "routes": ["0.0.0.0/0"],
                "links": [
                    {"name": "fixed", "interface": "lka", "address": LEGIT_ADDR, "table": 101}
                ],
            },
        }
        path = self.dir / "cpe.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def legit(self, cpe_cfg: Path, attempts: int) -> list[float | None]:
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.att_ns,
                sys.executable,
                "-c",
                LEGIT,
                str(cpe_cfg),
                str(attempts),
            ],
            capture_output=True,
            text=True,
            timeout=attempts * 20 + 30,
            check=False,
        )
        out = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        return [o["connect_s"] for o in out if "connect_s" in o]

    def metrics(self) -> dict[str, float]:
        code = "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9477/metrics').read().decode())"
        res = subprocess.run(
            ["ip", "netns", "exec", self.bgw_ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=False,
        )
        out = {}
        for line in res.stdout.splitlines():
            if line.startswith("mptcp_tunnel_handshake_failures_total{"):
                key, _, value = line.rpartition(" ")
                out[key.split('"')[1]] = float(value)
        return out


def run_lockout(addresses: int, seconds: float, attempts: int, workdir: Path) -> dict[str, Any]:
    """One measurement; returns the point (raises RuntimeError if the setup fails)."""
    from mtlab.pki import lab_pki

    lab = LockoutLab(workdir)
    try:
        lab.up(addresses)
        pki = lab_pki(workdir / "pki", ["cpe1"])
        lab.start_bgw(pki)
        cpe_cfg = lab.cpe_config(pki)
        baseline = lab.legit(cpe_cfg, 3)
        attack = subprocess.Popen(
            [
                *NOFILE,
                "ip",
                "netns",
                "exec",
                lab.att_ns,
                sys.executable,
                "-m",
                "mtlab.attack",
                "--target",
                f"{BGW_ADDR}:7440",
                "--base",
                ATTACK_BASE,
                "--count",
                str(addresses),
                "--per-source",
                "10",
                "--seconds",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(LAB_DIR), os.environ.get("PYTHONPATH", "")]),
            },
        )
        lab.procs.append(attack)
        time.sleep(min(8.0, seconds / 3))  # the flood reaches its hold
        under = lab.legit(cpe_cfg, attempts)
        out, _ = attack.communicate(timeout=seconds + 60)
        reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        alive = lab.procs[0].poll() is None
        failures = lab.metrics()
    finally:
        lab.down()
    times = [t for t in under if t is not None]
    return {
        "addresses": addresses,
        "attack_s": seconds,
        "attacker_open_max": max((r["open"] for r in reports), default=0),
        "attacker_opened": reports[-1]["opened"] if reports else 0,
        "baseline_connect_s": [round(t, 3) for t in baseline if t is not None],
        "connect_s": [round(t, 3) if t is not None else None for t in under],
        "failed_attempts": len(under) - len(times) + max(0, attempts - len(under)),
        "p50_connect_s": percentile(times, 50),
        "max_connect_s": round(max(times), 3) if times else None,
        "bgw_alive": alive,
        "refused_by_reason": failures,
    }


def lockout(settings: Any, progress: Progress, save: Any) -> ScenarioResult:
    addresses, seconds, attempts = (300, 20.0, 5) if settings.quick else (1000, 40.0, 15)
    res = ScenarioResult(
        "lockout", {"addresses": addresses, "per_source_tries": 10, "target_s": 3.0}
    )
    with tempfile.TemporaryDirectory() as tmp:
        point = run_lockout(addresses, seconds, attempts, Path(tmp))
    progress.step(f"lockout: max connect {point['max_connect_s']} s under attack")
    res.add_point("mptcp-tunnel-tls", [], **point)
    res.notes.append(
        f"legitimate CPE connect under attack from {addresses} addresses (attacker held up to "
        f"{point['attacker_open_max']} connections): p50 {point['p50_connect_s']} s, max "
        f"{point['max_connect_s']} s, failed {point['failed_attempts']} (target < 3 s)"
    )
    return res


if __name__ == "__main__":  # python -m run_bench.lockout [addresses] [seconds]
    with tempfile.TemporaryDirectory() as tmp_dir:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
        s = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
        print(json.dumps(run_lockout(n, s, 10, Path(tmp_dir)), indent=1))
