"""The agent as a real process between two network namespaces (needs root).

Peer misbehaviour, fallback to plain TCP, missing MPTCP, reload and stop -- without shaping, so each
test takes seconds. The full four-namespace lab with real traffic lives in lab/tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pki import Pki, lab_pki

EXAMPLES = Path(__file__).parent.parent / "examples"

if os.geteuid() != 0:
    pytest.fail("test_agent_process needs root (network namespaces)", pytrace=False)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class Pair:
    cpe: str
    bgw: str
    tmp: Path
    pki: Pki

    def python(self, ns: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def config(self, role: str, **changes: Any) -> Path:
        doc = yaml.safe_load((EXAMPLES / f"{role}.yaml").read_text())
        # The pair's own PKI; ``tls__cert_file=...`` and friends override it.
        stem = str(changes.get("cpe__id", "cpe1")) if role == "cpe" else "bgw1"
        doc["tls"] = self.pki.tls_section(stem, crl=role == "bgw")
        for dotted, value in changes.items():
            node = doc
            *parents, last = dotted.split("__")
            for key in parents:
                node = node[key]
            node[last] = value
        path = self.tmp / f"{role}-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def start(self, role: str, config: Path) -> Agent:
        log = self.tmp / f"{role}.log"
        out = log.open("ab")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                getattr(self, role),
                sys.executable,
                "-m",
                "mptcp_tunnel",
                "run",
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return Agent(proc, log, getattr(self, role), self)

    def metrics(self, ns: str) -> dict[str, float]:
        code = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())"
        )
        res = self.python(ns, code)
        assert res.returncode == 0, res.stderr
        out = {}
        for line in res.stdout.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def links(self, ns: str) -> list[str]:
        res = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True)
        return [link["ifname"] for link in json.loads(res.stdout)]


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path
    ns: str
    pair: Pair

    def wait_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{text!r} not in the agent log:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    p = Pair(f"mtu-c{tag}", f"mtu-b{tag}", tmp_path, lab_pki(tmp_path / "pki", ["cpe1", "cpe2", "cpe3"]))
    agents: list[Agent] = []
    for ns in (p.cpe, p.bgw):
        sh("ip", "netns", "add", ns)
    try:
        for ns in (p.cpe, p.bgw):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for cpe_if, bgw_if, net in (("wan_fixed", "fixed0", "10.1.0"), ("wan_cell", "cell0", "10.2.0")):
            sh(
                "ip",
                "-n",
                p.cpe,
                "link",
                "add",
                cpe_if,
                "type",
                "veth",
                "peer",
                "name",
                bgw_if,
                "netns",
                p.bgw,
            )
            sh("ip", "-n", p.cpe, "addr", "add", f"{net}.1/30", "dev", cpe_if)
            sh("ip", "-n", p.bgw, "addr", "add", f"{net}.2/30", "dev", bgw_if)
            sh("ip", "-n", p.cpe, "link", "set", cpe_if, "up")
            sh("ip", "-n", p.bgw, "link", "set", bgw_if, "up")
        original_start = p.start

        def tracked_start(role: str, config: Path) -> Agent:
            agent = original_start(role, config)
            agents.append(agent)
            return agent

        p.start = tracked_start  # type: ignore[method-assign]
        yield p
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
        for ns in (p.cpe, p.bgw):
            subprocess.run(["ip", "netns", "del", ns], check=False)


CLIENT = """
import socket
from mptcp_tunnel import handshake as hs, exchange
from mptcp_tunnel.config import load_config
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.settimeout(10)
s.connect(("10.1.0.2", 7440))
{body}
"""


def client(pair: Pair, body: str) -> subprocess.CompletedProcess[str]:
    return pair.python(pair.cpe, CLIENT.format(body=body))


def test_bgw_survives_garbage_bad_auth_and_malformed_frames(pair: Pair) -> None:
    """encryption none: the HMAC handshake and a plaintext stream."""
    bgw = pair.start("bgw", pair.config("bgw", tunnel__encryption="none"))
    bgw.wait_log("BGW listening")

    # 1. plain TCP (no MPTCP at all): closed at once, before it costs anything.
    plain = pair.python(
        pair.cpe,
        "import socket; s = socket.create_connection(('10.1.0.2', 7440)); "
        "s.settimeout(10); print('closed:', s.recv(100) == b'')",
    )
    assert plain.returncode == 0 and "closed: True" in plain.stdout
    # 2. MPTCP, then garbage instead of a HELLO.
    assert client(pair, "s.recv(100); s.sendall(b'\\x99' * 64); s.recv(100)").returncode == 0
    # 3. a HELLO signed with the wrong secret.
    wrong = client(
        pair,
        """
cpe = load_config({cfg!r}).cpe
try:
    exchange.client_handshake(s, cpe, hs.Feature.NONE)
except exchange.Rejected as exc:
    print("rejected:", exc)
""".format(cfg=str(pair.config("cpe", cpe__secret="not-the-right-secret", tunnel__encryption="none"))),
    )
    assert "rejected: authentication failed" in wrong.stdout, wrong.stderr
    # 4. a valid session that then sends a frame with a bad version nibble.
    bad_frame = client(
        pair,
        """
cpe = load_config({cfg!r}).cpe
exchange.client_handshake(s, cpe, hs.Feature.NONE)
s.sendall(b"\\x99" * 40)
print("closed by bgw:", s.recv(100) == b"")
""".format(cfg=str(pair.config("cpe", tunnel__encryption="none"))),
    )
    assert "closed by bgw: True" in bad_frame.stdout, bad_frame.stderr

    assert bgw.proc.poll() is None, "the BGW died from peer input"
    m = pair.metrics(pair.bgw)
    assert m['mptcp_tunnel_handshake_failures_total{reason="fallback"}'] == 1
    assert m['mptcp_tunnel_handshake_failures_total{reason="bad_magic"}'] == 1
    assert m['mptcp_tunnel_handshake_failures_total{reason="auth_failed"}'] == 1
    assert m['mptcp_tunnel_frame_errors_total{reason="bad_version"}'] == 1
    assert "Traceback" not in bgw.log.read_text()

    # The real CPE still gets a working session afterwards.
    cpe = pair.start("cpe", pair.config("cpe", tunnel__encryption="none"))
    bgw.wait_log("CPE cpe1: session up")
    cpe.wait_log("session up via the fixed link")
    assert cpe.stop() == 0
    assert bgw.stop() == 0


def test_cpe_refuses_to_run_over_plain_tcp(pair: Pair) -> None:
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.bgw,
            sys.executable,
            "-c",
            "import socket,time; s = socket.create_server(('10.1.0.2', 7440)); s.accept(); time.sleep(30)",
        ]
    )
    try:
        time.sleep(1)
        cpe = pair.start("cpe", pair.config("cpe"))
        assert cpe.proc.wait(timeout=30) == 4
        assert "refusing to run as plain TCP" in cpe.log.read_text()
    finally:
        server.kill()
        server.wait()


def test_cpe_exits_3_when_the_kernel_refuses_mptcp(pair: Pair) -> None:
    sh("ip", "netns", "exec", pair.cpe, "sysctl", "-qw", "net.mptcp.enabled=0")
    cpe = pair.start("cpe", pair.config("cpe"))
    assert cpe.proc.wait(timeout=30) == 3
    assert "net.mptcp.enabled=1" in cpe.log.read_text()


def test_bgw_reload_adds_and_removes_cpes_and_keeps_running_on_a_bad_file(pair: Pair) -> None:
    config = pair.config("bgw")
    bgw = pair.start("bgw", config)
    bgw.wait_log("BGW listening")
    cpe = pair.start("cpe", pair.config("cpe"))
    bgw.wait_log("CPE cpe1: session up")
    assert "mt-cpe1" in pair.links(pair.bgw)

    doc = yaml.safe_load(config.read_text())
    doc["bgw"]["cpes"].append({"id": "cpe2", "secret": "second-secret", "prefixes": ["192.168.12.0/24"]})
    config.write_text(yaml.safe_dump(doc))
    bgw.proc.send_signal(signal.SIGHUP)
    bgw.wait_log("config reloaded: 2 CPE(s)")
    assert "mt-cpe2" in pair.links(pair.bgw)
    routes = subprocess.run(["ip", "-n", pair.bgw, "route"], capture_output=True, text=True).stdout
    assert "192.168.12.0/24 dev mt-cpe2" in routes

    config.write_text("role: bgw\nbgw: [broken\n")
    bgw.proc.send_signal(signal.SIGHUP)
    bgw.wait_log("reload refused, keeping the running config")
    moved = dict(doc, tunnel=dict(doc["tunnel"], port=7441))
    config.write_text(yaml.safe_dump(moved))
    bgw.proc.send_signal(signal.SIGHUP)
    bgw.wait_log("reload refused: changing tunnel.port needs a restart")

    doc["bgw"]["cpes"] = doc["bgw"]["cpes"][1:]  # cpe1 leaves the fleet
    config.write_text(yaml.safe_dump(doc))
    bgw.proc.send_signal(signal.SIGHUP)
    bgw.wait_log("config reloaded: 1 CPE(s)")
    assert "mt-cpe1" not in pair.links(pair.bgw)
    assert bgw.proc.poll() is None
    cpe.wait_log("session ended")  # its session was closed and it is refused from now on
    assert cpe.stop() == 0
    assert bgw.stop() == 0
    assert "mt-cpe2" not in pair.links(pair.bgw)  # SIGTERM removed the TUN devices


def test_endpoint_flag_change_by_reload_keeps_the_connection(pair: Pair) -> None:
    bgw = pair.start("bgw", pair.config("bgw"))
    bgw.wait_log("BGW listening")
    config = pair.config("cpe")
    cpe = pair.start("cpe", config)
    cpe.wait_log("session up")
    config.write_text(config.read_text().replace("policy: aggregate", "policy: backup"))
    cpe.proc.send_signal(signal.SIGHUP)
    cpe.wait_log("config reloaded")
    assert "set mptcp endpoint 10.2.0.1 flags subflow,backup" in cpe.log.read_text()
    time.sleep(2)
    assert cpe.log.read_text().count("session up") == 1  # no reconnect
    assert pair.metrics(pair.cpe)['mptcp_tunnel_session_up{cpe="cpe1"}'] == 1
    assert cpe.stop() == 0 and bgw.stop() == 0


def test_a_spent_cap_sets_the_backup_flag_and_survives_a_restart(pair: Pair) -> None:
    """A 3 kB daily cap on cellular: the subflow join and the probes spend it in seconds."""
    spent = 'mptcp_tunnel_cap_spent{link="cellular"}'
    bgw = pair.start("bgw", pair.config("bgw"))
    bgw.wait_log("BGW listening")
    links = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())["cpe"]["links"]
    links[1]["cap"] = {"bytes": "3kB", "period": "daily"}
    state = pair.tmp / "state"
    sock = str(pair.tmp / "cpe.sock")
    config = pair.config("cpe", cpe__links=links, cpe__state_dir=str(state), control_socket=sock)
    cpe = pair.start("cpe", config)
    cpe.wait_log("session up")
    cpe.wait_log("cellular cap spent: ", timeout=30)
    cpe.wait_log("set mptcp endpoint 10.2.0.1 flags subflow,backup")
    m = pair.metrics(pair.cpe)
    assert m[spent] == 1 and m['mptcp_tunnel_cap_limit_bytes{link="cellular"}'] == 3000
    assert m['mptcp_tunnel_cap_used_bytes{link="cellular"}'] >= 3000
    status = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.cpe,
            sys.executable,
            "-m",
            "mptcp_tunnel",
            "status",
            "--socket",
            sock,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    snap = json.loads(status.stdout)
    assert snap["caps"][0]["link"] == "cellular" and snap["caps"][0]["spent"] is True
    assert [lk["backup"] for lk in snap["links"]] == [False, True]
    assert cpe.stop() == 0
    saved = json.loads((state / "cap-usage.json").read_text())
    assert saved["links"]["cellular"]["spent"] is True
    # A restart: spent from the start, the cellular endpoint never loses its backup flag.
    again = pair.start("cpe", config)  # the same log file: wait for its second session
    wait_for(lambda: again.log.read_text().count("session up") == 2, 20, "the second session")
    text = again.log.read_text().split("cpe: stopped", 1)[1]
    assert "spent, the link carries traffic only while the others are down" in text
    endpoints = subprocess.run(
        ["ip", "-n", pair.cpe, "mptcp", "endpoint", "show"], capture_output=True, text=True, check=True
    ).stdout
    cell = next(line for line in endpoints.splitlines() if line.startswith("10.2.0.1 "))
    assert "backup" in cell.split(), endpoints  # kept (or set) by the new agent: no flip back
    assert "set mptcp endpoint 10.2.0.1 flags subflow\n" not in text
    assert pair.metrics(pair.cpe)[spent] == 1
    assert again.stop() == 0 and bgw.stop() == 0


def subflow_sources(pair: Pair) -> list[str]:
    res = subprocess.run(
        ["ip", "netns", "exec", pair.cpe, "ss", "-tnH", "state", "established", "dst", "10.1.0.2:7440"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(line.split()[2].split("%")[0].rsplit(":", 1)[0] for line in res.stdout.splitlines())


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_a_lost_subflow_and_a_flushed_link_route_come_back(pair: Pair) -> None:
    bgw = pair.start("bgw", pair.config("bgw"))
    bgw.wait_log("BGW listening")
    cpe = pair.start("cpe", pair.config("cpe"))
    cpe.wait_log("session up")
    wait_for(lambda: subflow_sources(pair) == ["10.1.0.1", "10.2.0.1"], 10, "two subflows")

    # The kernel never retries a subflow that died: the agent must ask for a new one.
    sh("ip", "netns", "exec", pair.cpe, "ss", "-K", "-tn", "src", "10.2.0.1", "dst", "10.1.0.2")
    killed = time.monotonic()
    assert subflow_sources(pair) == ["10.1.0.1"]
    wait_for(lambda: subflow_sources(pair) == ["10.1.0.1", "10.2.0.1"], 30, "the cellular subflow")
    # Found at the ticks (1 s), not at the reconciles (5 s): two ticks without it, then one join.
    back_after = time.monotonic() - killed
    assert back_after < 5, back_after
    assert "no subflow on the cellular link" in cpe.log.read_text()

    # A link going down flushes the default route of its policy table; it must be put back.
    sh("ip", "-n", pair.cpe, "link", "set", "wan_cell", "down")
    sh("ip", "-n", pair.cpe, "link", "set", "wan_cell", "up")

    def table_102() -> str:
        return subprocess.run(
            ["ip", "-n", pair.cpe, "route", "show", "table", "102"], capture_output=True, text=True
        ).stdout

    wait_for(lambda: "default via 10.2.0.2 dev wan_cell" in table_102(), 15, "table 102's default route")
    assert cpe.log.read_text().count("session up") == 1  # all of it without a reconnect
    assert cpe.stop() == 0 and bgw.stop() == 0


def test_silent_connections_do_not_lock_a_cpe_out_and_time_out(pair: Pair) -> None:
    bgw = pair.start("bgw", pair.config("bgw"))
    bgw.wait_log("BGW listening")
    # 80 connections from one source (the cellular address) that never say a word, held for longer
    # than the handshake deadline: 8 are pending (the per-source limit), the rest closed at once.
    flood = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.cpe,
            sys.executable,
            "-c",
            """
import socket, time
held = []
for _ in range(80):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.bind(("10.2.0.1", 0))
    s.connect(("10.1.0.2", 7440))
    held.append(s)
print("holding", flush=True)
time.sleep(13)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "holding"
        cpe = pair.start("cpe", pair.config("cpe"))
        cpe.wait_log("session up", timeout=5)  # the handshake is not queued behind the silent ones
        assert flood.wait(timeout=30) == 0
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    timeouts = 'mptcp_tunnel_handshake_failures_total{reason="timeout"}'
    wait_for(
        lambda: pair.metrics(pair.bgw).get(timeouts, 0) >= 8,
        timeout=5,
        what="every pending silent connection timed out (one deadline per handshake)",
    )
    m = pair.metrics(pair.bgw)
    assert m[timeouts] == 8
    assert m['mptcp_tunnel_handshake_failures_total{reason="too_many_from_source"}'] == 72
    assert bgw.proc.poll() is None
    assert cpe.stop() == 0 and bgw.stop() == 0
