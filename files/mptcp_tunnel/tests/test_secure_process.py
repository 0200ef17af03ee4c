"""Secure sessions with real agents, real MPTCP and real TLS between two namespaces (needs root).

Who may connect as what (wrong CA, expired, id mismatch, revoked), a relay in the middle, revocation
and broken files at reload, and the stream-health check (desync) with ``encryption: none``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pki import Pki
from test_agent_process import Pair, pair, wait_for

__all__ = ["pair"]  # the fixture, shared with test_agent_process

FAILURES = "mptcp_tunnel_handshake_failures_total"


def tls_client(p: Pair, config: Path, port: int = 7440) -> subprocess.CompletedProcess[str]:
    """One TLS handshake as the CPE of ``config``; prints ok or the error's class and text."""
    code = textwrap.dedent(
        f"""
        import socket
        from mptcp_tunnel import exchange, handshake as hs
        from mptcp_tunnel.config import load_config
        from mptcp_tunnel.tls import client_context
        cfg = load_config({str(config)!r})
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        s.settimeout(10)
        s.connect(("10.1.0.2", {port}))
        try:
            exchange.client_tls(s, cfg.cpe, client_context(cfg.tls), hs.Feature.NONE)
            print("ok")
        except Exception as exc:
            print("refused:", type(exc).__name__, exc)
        """
    )
    return p.python(p.cpe, code)


def bgw_with(p: Pair, cpes: list[str], **changes: Any) -> Path:
    path = p.config("bgw", **changes)
    doc = yaml.safe_load(path.read_text())
    prefix = {"cpe1": "192.168.10.0/24", "cpe2": "192.168.12.0/24", "cpe3": "192.168.13.0/24"}
    doc["bgw"]["cpes"] = [{"id": c, "prefixes": [prefix[c]]} for c in cpes]
    path.write_text(yaml.safe_dump(doc))
    return path


def test_only_the_right_certificate_for_the_claimed_cpe_gets_a_session(pair: Pair, tmp_path: Path) -> None:
    pki = pair.pki
    pki.issue("cpe1", "cpe", expired=True, stem="cpe1-expired")
    other = Pki(tmp_path / "other", name="other")
    other.issue("cpe1", "cpe")
    pki.revoke("cpe3")
    bgw = pair.start("bgw", bgw_with(pair, ["cpe1", "cpe2", "cpe3"]))
    bgw.wait_log("BGW listening")

    def as_cpe1(cert_dir: Path, stem: str) -> Path:
        return pair.config(
            "cpe",
            tls__cert_file=str(cert_dir / f"{stem}.crt"),
            tls__key_file=str(cert_dir / f"{stem}.key"),
        )

    cases = {
        "id_mismatch": as_cpe1(pki.dir, "cpe2"),  # cpe2's valid certificate, claiming cpe1
        "wrong_ca": as_cpe1(other.dir, "cpe1"),
        "expired": as_cpe1(pki.dir, "cpe1-expired"),
        "revoked": pair.config("cpe", cpe__id="cpe3"),
        "server_cert_as_cpe": as_cpe1(pki.dir, "bgw1"),  # EKU serverAuth cannot be a CPE
    }
    for name, config in cases.items():
        res = tls_client(pair, config)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("refused:"), f"{name}: {res.stdout}"
    # (A CPE refusing a "BGW" with a CPE certificate: test_tls, real OpenSSL without sockets.)
    m = pair.metrics(pair.bgw)
    assert m[f'{FAILURES}{{reason="id_mismatch"}}'] == 1
    refused = sum(v for k, v in m.items() if k.startswith(FAILURES))
    assert refused >= len(cases)
    assert m.get('mptcp_tunnel_session_up{cpe="cpe1"}', 0) == 0
    assert bgw.proc.poll() is None and "Traceback" not in bgw.log.read_text()
    # The real CPE still connects, with TLS.
    cpe = pair.start("cpe", pair.config("cpe"))
    bgw.wait_log("CPE cpe1: session up from 10.1.0.1 (worker")
    cpe.wait_log("session up via the fixed link (TLS 1.3")
    assert cpe.stop() == 0 and bgw.stop() == 0


RELAY = """
import json, select, socket, sys, time
inject = sys.argv[1] == "inject"
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("10.1.0.2", 7441)); ls.listen(4)
print("ready", flush=True)
cpe, _ = ls.accept()
bgw = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
bgw.connect(("10.2.0.2", 7440))
seen = {"up": b"", "down": b""}
start = time.monotonic(); injected = False; closed = ""
while time.monotonic() - start < 6 and not closed:
    r, _, _ = select.select([cpe, bgw], [], [], 0.2)
    for s in r:
        data = s.recv(65536)
        if not data:
            closed = "cpe" if s is cpe else "bgw"
            break
        seen["up" if s is cpe else "down"] += data
        try:
            (bgw if s is cpe else cpe).sendall(data)
        except OSError:  # that end already closed (the BGW ends a session it cannot authenticate)
            closed = "bgw" if s is cpe else "cpe"
            break
    if inject and not injected and time.monotonic() - start > 2:
        # A forged IPv4 packet from the CPE's LAN, spliced into the stream between records.
        pkt = bytes.fromhex("4500001c000040004011") + bytes(2) + bytes([192,168,10,7, 10,1,0,2]) + bytes(8)
        injected = True
        try:
            bgw.sendall(pkt)
        except OSError:
            closed = "bgw"
print(json.dumps({"closed": closed, "up": seen["up"].hex(), "down": seen["down"].hex()}), flush=True)
"""


def tls_records(stream: bytes) -> int:
    """How many TLS records ``stream`` holds; fails on anything that is not one (an incomplete last
    record is fine: the relay stopped there)."""
    pos = count = 0
    while len(stream) - pos >= 5:
        ctype, version, length = (
            stream[pos],
            stream[pos + 1 : pos + 3],
            int.from_bytes(stream[pos + 3 : pos + 5]),
        )
        where = stream[pos : pos + 16].hex()
        assert ctype in (0x14, 0x15, 0x16, 0x17) and version in (b"\x03\x01", b"\x03\x03"), where
        pos += 5 + length
        count += 1
    return count


@pytest.mark.parametrize("inject", [False, True], ids=["read", "inject"])
def test_a_relay_in_the_middle_can_neither_read_nor_inject(pair: Pair, inject: bool) -> None:
    bgw = pair.start("bgw", pair.config("bgw", tunnel__keepalive_s=1))
    bgw.wait_log("BGW listening")
    relay = subprocess.Popen(
        ["ip", "netns", "exec", pair.bgw, sys.executable, "-c", RELAY, "inject" if inject else "read"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        cpe = pair.start("cpe", pair.config("cpe", tunnel__port=7441, tunnel__keepalive_s=1))
        out, _ = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    result = json.loads(out.strip().splitlines()[-1])
    up, down = bytes.fromhex(result["up"]), bytes.fromhex(result["down"])
    claim = b"\x0fMTN\x01\x05\x00\x04cpe1"
    assert up.startswith(claim)  # the CLAIM is the one plaintext message (the id, nothing secret)
    # After it only TLS records pass: no OFFER/ACCEPT, no keepalive, nothing in the clear.
    assert tls_records(up[len(claim) :]) >= 2 and tls_records(down) >= 2
    if inject:
        bgw.wait_log("CPE cpe1: session ended: tls_error")
        m = pair.metrics(pair.bgw)
        assert m.get('mptcp_tunnel_packets_total{cpe="cpe1",direction="rx"}', 0) == 0  # nothing delivered
    else:
        assert result["closed"] == ""  # the session ran through the relay for 6 s, unreadable to it
        bgw.wait_log("CPE cpe1: session up")
    assert bgw.proc.poll() is None
    assert cpe.stop() == 0 and bgw.stop() == 0


def test_reload_revokes_a_cpe_and_broken_reloads_change_nothing(pair: Pair) -> None:
    config = pair.config("bgw")
    bgw = pair.start("bgw", config)
    bgw.wait_log("BGW listening")
    cpe = pair.start("cpe", pair.config("cpe", cpe__reconnect_max_s=1))
    bgw.wait_log("CPE cpe1: session up")
    good = config.read_text()

    def reload_with(text: str, expect: str) -> None:
        config.write_text(text)
        before = bgw.log.read_text().count(expect)
        bgw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bgw.log.read_text().count(expect) > before, 10, expect)

    # Mixed-type keys, a missing CA, a key that does not match the certificate: refused, nothing changes.
    reload_with(good + "1: x\nzz: y\n", "reload refused")
    reload_with(good.replace(str(pair.pki.ca_file), "/nonexistent/ca.crt"), "reload refused")
    reload_with(
        good.replace(str(pair.pki.dir / "bgw1.key"), str(pair.pki.dir / "cpe1.key")), "reload refused"
    )
    reload_with(good, "config reloaded")
    assert "session ended" not in bgw.log.read_text()
    assert cpe.log.read_text().count("session up") == 1
    # The CA revokes cpe1: the next reload ends its session, and it cannot come back.
    pair.pki.revoke("cpe1")
    reload_with(good, "config reloaded")
    bgw.wait_log("CPE cpe1: session ended: revoked")
    time.sleep(3)
    m = pair.metrics(pair.bgw)
    assert m['mptcp_tunnel_session_up{cpe="cpe1"}'] == 0
    assert (
        m.get(f'{FAILURES}{{reason="bad_certificate"}}', 0) + m.get(f'{FAILURES}{{reason="tls_failed"}}', 0)
        >= 1
    )
    assert bgw.proc.poll() is None and "Traceback" not in bgw.log.read_text()
    assert cpe.stop() == 0 and bgw.stop() == 0


DESYNC = """
import socket, time
from mptcp_tunnel import exchange, handshake as hs
from mptcp_tunnel.config import load_config
from mptcp_tunnel.framing import ControlType, encode_control
cpe = load_config({cfg!r}).cpe
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.settimeout(10)
s.connect(("10.1.0.2", 7440))
exchange.client_handshake(s, cpe, hs.Feature.NONE)
s.sendall(b"GET / HTTP/1.1\\r\\n")  # read as an IPv4 header announcing 21 536 bytes
start = time.monotonic()
s.settimeout(0.3)
try:
    while time.monotonic() - start < 15:
        s.sendall(encode_control(ControlType.KEEPALIVE))  # bytes keep arriving, no frame completes
        try:
            if s.recv(65536) == b"":
                raise ConnectionResetError
        except TimeoutError:
            pass
    print("still open")
except OSError:
    print(f"closed after {{time.monotonic() - start:.1f}} s")
"""


def test_a_desynchronised_stream_ends_the_session(pair: Pair) -> None:
    bgw = pair.start("bgw", pair.config("bgw", tunnel__encryption="none", tunnel__keepalive_s=1))
    bgw.wait_log("BGW listening")
    cfg = pair.config("cpe", tunnel__encryption="none")
    res = pair.python(pair.cpe, DESYNC.format(cfg=str(cfg)))
    assert res.stdout.startswith("closed after"), res.stdout + res.stderr
    bgw.wait_log("CPE cpe1: session ended: stream_stalled")
    assert pair.metrics(pair.bgw)["mptcp_tunnel_stream_stalls_total"] == 1
    assert bgw.stop() == 0


def test_unknown_feature_bits_are_ignored_and_reject_text_is_escaped(pair: Pair) -> None:
    """encryption none: a HELLO with an unknown feature bit is fine; a REJECT's text is logged escaped."""
    bgw = pair.start("bgw", pair.config("bgw", tunnel__encryption="none"))
    bgw.wait_log("BGW listening")
    cfg = pair.config("cpe", tunnel__encryption="none")
    res = pair.python(
        pair.cpe,
        textwrap.dedent(
            f"""
            import socket
            from mptcp_tunnel import exchange, handshake as hs
            from mptcp_tunnel.config import load_config
            cpe = load_config({str(cfg)!r}).cpe
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
            s.settimeout(10)
            s.connect(("10.1.0.2", 7440))
            print("features", int(exchange.client_handshake(s, cpe, hs.Feature(0x80000001))))
            print(repr(hs.decode_reject(b"bad\\nINFO forged line\\x1b[31m")))
            """
        ),
    )
    assert res.returncode == 0, res.stderr
    assert "features" in res.stdout
    assert "'bad\\\\nINFO forged line\\\\x1b[31m'" in res.stdout
    bgw.wait_log("CPE cpe1: session up")
    assert bgw.stop() == 0


if os.geteuid() != 0:
    pytest.fail("test_secure_process needs root (network namespaces)", pytrace=False)


def test_rotating_certificates_costs_no_reconnect_and_new_handshakes_use_them(pair: Pair) -> None:
    bgw = pair.start("bgw", pair.config("bgw"))
    bgw.wait_log("BGW listening")
    cpe = pair.start("cpe", pair.config("cpe"))
    cpe.wait_log("session up via")
    old = pair.pki.serials["bgw1"]
    pair.pki.issue("bgw1", "bgw")  # new keys and certificates, same paths (what the rotate play does)
    pair.pki.issue("cpe1", "cpe")
    for agent in (bgw, cpe):
        agent.proc.send_signal(signal.SIGHUP)
    bgw.wait_log("config reloaded")
    cpe.wait_log("config reloaded")
    time.sleep(1)
    assert "session ended" not in bgw.log.read_text() + cpe.log.read_text()  # no reconnect
    # A new handshake meets the BGW's new certificate, with the CPE's new one.
    code = textwrap.dedent(
        f"""
        import socket
        from mptcp_tunnel import exchange, handshake as hs
        from mptcp_tunnel.config import load_config
        from mptcp_tunnel.tls import client_context
        cfg = load_config({str(pair.config("cpe"))!r})
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        s.settimeout(10)
        s.connect(("10.1.0.2", 7440))
        _f, channel, _r = exchange.client_tls(s, cfg.cpe, client_context(cfg.tls), hs.Feature.NONE)
        print(channel.peer_serial())
        """
    )
    res = pair.python(pair.cpe, code)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) == pair.pki.serials["bgw1"] != old
    assert bgw.stop() == 0 and cpe.stop() == 0


def test_a_route_the_kernel_refuses_refuses_that_cpe_only(pair: Pair) -> None:
    """IPv6 off on the BGW: cpe1's IPv6 prefix cannot be routed; cpe1 is refused, cpe2 served."""
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.bgw,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        check=True,
    )
    path = pair.config("bgw")
    doc = yaml.safe_load(path.read_text())
    doc["bgw"]["cpes"] = [
        {"id": "cpe1", "prefixes": ["192.168.10.0/24", "fd00:10::/64"]},
        {"id": "cpe2", "prefixes": ["192.168.12.0/24"]},
    ]
    path.write_text(yaml.safe_dump(doc))
    bgw = pair.start("bgw", path)
    bgw.wait_log("BGW listening")
    assert "CPE cpe1 refused: the kernel refuses a route of its prefixes" in bgw.log.read_text()
    cpe = pair.start("cpe", pair.config("cpe", cpe__id="cpe2"))
    bgw.wait_log("CPE cpe2: session up")
    assert bgw.proc.poll() is None and "Traceback" not in bgw.log.read_text()
    assert cpe.stop() == 0 and bgw.stop() == 0
