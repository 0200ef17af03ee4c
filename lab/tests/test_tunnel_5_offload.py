"""Both datapaths: TUN offload (GSO super-packets, negotiated by default) and per-packet (the CPE
says no). Traffic of every kind, headers byte for byte (DSCP and ECN included), UDP GSO, and proof
that super-packets really cross when offload is on."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
import test_tunnel_1_traffic as traffic

from mtlab import Lab, LabError, address

HEADER_PORT = 9110
GSO_PORT = 9111


def _wait_session(lab: Lab, offload: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            m = lab.metrics("bgw")
            c = lab.metrics("cpe")
        except LabError:  # an agent (re)starting
            m, c = {}, {}
        got = m.get('mptcp_tunnel_session_offload{cpe="cpe1"}')
        subflows = max(
            (v for k, v in c.items() if k.startswith("mptcp_tunnel_subflows")), default=0
        )
        if m.get('mptcp_tunnel_session_up{cpe="cpe1"}') == 1 and got == offload and subflows >= 2:
            return
        time.sleep(0.3)
    raise AssertionError(f"no session with offload={offload} (last seen {got})")


@pytest.fixture(scope="module", params=["offload", "per-packet"])
def mode(request: pytest.FixtureRequest, tunnel: Lab) -> Iterator[str]:
    if request.param == "per-packet":  # the CPE declines: the BGW must fall back for this session
        cfg = tunnel.agent_config("cpe")
        cfg["tunnel"]["offload"] = "off"
        tunnel.stop_agent("cpe")
        tunnel.start_agent("cpe", cfg)
    _wait_session(tunnel, 1 if request.param == "offload" else 0)
    yield request.param
    if request.param == "per-packet":
        tunnel.stop_agent("cpe")
        tunnel.start_agent("cpe")
        _wait_session(tunnel, 1)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("reverse", [False, True], ids=["client-to-server", "server-to-client"])
def test_tcp_both_ways(mode: str, tunnel: Lab, family: int, reverse: bool) -> None:
    traffic.test_tcp_iperf3(tunnel, family, reverse)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_ping(mode: str, tunnel: Lab, family: int) -> None:
    traffic.test_ping(tunnel, family)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_udp(mode: str, tunnel: Lab, family: int) -> None:
    traffic.test_udp_iperf3(tunnel, family, reverse=True)


def _tun_io(lab: Lab, role: str, op: str) -> tuple[float, float]:
    m = lab.metrics(role)
    calls = sum(
        v for k, v in m.items() if k.startswith("mptcp_tunnel_tun_io_total") and f'op="{op}"' in k
    )
    size = sum(
        v
        for k, v in m.items()
        if k.startswith("mptcp_tunnel_tun_io_bytes_total") and f'op="{op}"' in k
    )
    return calls, size


def test_bulk_reaches_the_tun_as_super_packets_only_with_offload(mode: str, tunnel: Lab) -> None:
    calls0, bytes0 = _tun_io(tunnel, "bgw", "read")
    traffic.test_tcp_iperf3(tunnel, 4, True)  # download: the BGW reads it from its TUN
    calls1, bytes1 = _tun_io(tunnel, "bgw", "read")
    average = (bytes1 - bytes0) / max(1.0, calls1 - calls0)
    if mode == "offload":  # at 10 Mbit/s GRO finds only a few packets to merge, but finds them
        assert average > 1600, f"{average:.0f} bytes per TUN read: GRO/GSO did not coalesce"
    else:
        assert average <= 1500 + 10, f"{average:.0f} bytes per TUN read in per-packet mode"


@pytest.mark.parametrize("family,tos", [(4, 0xB9), (4, 0x02), (6, 0xB9), (6, 0x03)])
def test_headers_cross_byte_for_byte_with_dscp_and_ecn(
    mode: str, tunnel: Lab, family: int, tos: int
) -> None:
    server = address("server", "eth0", family)
    caps = {
        role: subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                tunnel.ns(role),
                *tunnel.python("mtlab.probes", "capture", "--port", str(HEADER_PORT)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=tunnel._env(),
        )
        for role in ("client", "server")
    }
    try:
        for proc in caps.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        tunnel.exec(
            "client",
            tunnel.python(
                "mtlab.probes",
                "udp-tos",
                "--host",
                server,
                "--port",
                str(HEADER_PORT),
                "--tos",
                hex(tos),
            ),
        )
        out = {role: proc.communicate(timeout=20)[0].splitlines() for role, proc in caps.items()}
    finally:
        for proc in caps.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert out["server"][-1] == "received 4", out["server"][-1]  # every checksum was right
    sent = [bytes.fromhex(h) for h in out["client"][:-1]]
    got = [bytes.fromhex(h) for h in out["server"][:-1]]
    assert len(sent) == len(got) == 4
    # The UDP checksum is left out: the client's capture sees it before the kernel fills it in
    # (checksum offload on veth); with TUN offload it stays partial up to the server, without it the
    # CPE's kernel completes it. The server's socket received every datagram either way.
    for a, b in zip(sent, got, strict=True):
        if family == 4:
            assert b[1] == tos, f"TOS {b[1]:#x} arrived, {tos:#x} sent"
            assert b[8] == a[8] - 2  # TTL: two routers
            # everything but TTL and the header checksum the routers recompute
            assert a[:8] + a[9:10] + a[12:26] + a[28:] == b[:8] + b[9:10] + b[12:26] + b[28:]
        else:
            tclass = ((b[0] & 0x0F) << 4) | (b[1] >> 4)
            assert tclass == tos, f"traffic class {tclass:#x} arrived, {tos:#x} sent"
            assert b[7] == a[7] - 2  # hop limit
            assert a[:7] + a[8:46] + a[48:] == b[:7] + b[8:46] + b[48:]


UDP_SEGMENT = 103


def test_udp_gso_datagrams_arrive_whole(mode: str, tunnel: Lab) -> None:
    """A sender using UDP GSO (one send, 8 datagrams): each arrives, intact and in one piece."""
    server = address("server", "eth0", 4)
    rx = tunnel.serve(
        "server",
        [
            "python3",
            "-c",
            "import socket,json\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0',{GSO_PORT}));s.settimeout(10)\n"
            "print('ready',flush=True)\n"
            "got=[]\n"
            "try:\n"
            "    while len(got)<8: got.append(s.recv(65535).hex())\n"
            "except TimeoutError: pass\n"
            "print(json.dumps(got),flush=True)\n",
        ],
        name="gso-rx",
        ready="ready",
    )
    try:
        payload = bytes(range(256)) * 37  # 9472 bytes = 8 segments of 1184
        tunnel.exec(
            "client",
            [
                "python3",
                "-c",
                "import socket\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"s.setsockopt(socket.SOL_UDP,{UDP_SEGMENT},1184)\n"
                f"s.sendto(bytes.fromhex({payload.hex()!r}),({server!r},{GSO_PORT}))\n",
            ],
        )
        rx.wait(timeout=15)
    finally:
        tunnel.stop("gso-rx")
    got = json.loads(tunnel.log("gso-rx").strip().splitlines()[-1])
    chunks = [bytes.fromhex(h) for h in got]
    assert [len(c) for c in chunks] == [1184] * 8
    assert b"".join(chunks) == payload
